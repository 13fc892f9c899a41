"""Multi-turn MQAR: does a session's merged memory keep turn 1 after T turns?

Each conversation feeds T turns of 8 key-value pairs (keys 1-127 distinct
across turns, values 128-255), then D distractor tokens (other keys bound to
random values, as in the README's example), then one query. Two query sets:
a key of turn 1, and a key of any turn. The answer is the greedy next token.

Rows (all through ``pj.Session``):
- ``none``: the control base (the default run's base trained for as many
  steps on the joint stage's data) reads everything; its state is the memory;
- ``repeat``: the control reads all turns twice, then the distractor;
- ``prosg``: each trained run remembers every turn (its single-turn SG module,
  not trained for sessions) and reads the distractor without remembering;
  ``--max_rank`` bounds the merged memory. ``--combine`` picks how the turns'
  deltas combine: ``sum`` (what ``pj.Session`` does), ``mean`` (the sum
  scaled by 1/T) or ``one_prompt`` (all turns fed as one turn, so the SG
  module reads the whole conversation at once).

Usage (from the repository root)::

    python experiments/multiturn/run.py --runs W0,W1,W2 --out results/multiturn

where ``W0..W2`` are the three training runs of ``experiments/default_runs``
(``pretrained/mqar_prosg`` is W0). Writes ``results.json`` (every cell, every
seed) and ``results.md`` (mean over training runs ± their std, and the mean
evaluation-seed std in brackets).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import prosg_jax as pj
from prosg_jax.files import write_text

PAIRS = 8  # key-value pairs per turn, as in the default run's prompts


def conversations(rng, rows: int, turns: int, distance: int):
    """``(turn ids [T][rows, 16], distractor [rows, D], queries {set: (keys, values)})``."""
    turn_ids = np.zeros((turns, rows, 2 * PAIRS), np.int32)
    distractor = np.zeros((rows, distance), np.int32)
    queries = {"turn 1": (np.zeros(rows, np.int32), np.zeros(rows, np.int32))}
    queries["any turn"] = (np.zeros(rows, np.int32), np.zeros(rows, np.int32))
    for b in range(rows):
        keys = rng.choice(np.arange(1, 128), turns * PAIRS, replace=False)
        values = rng.choice(np.arange(128, 256), turns * PAIRS, replace=False)
        for t in range(turns):
            part = slice(t * PAIRS, (t + 1) * PAIRS)
            turn_ids[t, b] = np.stack([keys[part], values[part]], 1).ravel()
        others = rng.choice(np.setdiff1d(np.arange(1, 128), keys), distance // 2)
        distractor[b] = np.stack([others, rng.integers(128, 256, distance // 2)], 1).ravel()
        for name, pool in (("turn 1", PAIRS), ("any turn", turns * PAIRS)):
            q = rng.integers(pool)
            queries[name][0][b], queries[name][1][b] = keys[q], values[q]
    return turn_ids, distractor, queries


def recall(
    run: pj.Run, data, *, remember: bool, repeat: bool, max_rank: int, combine: str = "sum"
) -> dict:
    """Exact match of each query set for one model on one set of conversations."""
    turn_ids, distractor, queries = data
    session = pj.Session.start(run, batch=distractor.shape[0], max_rank=max_rank)
    if combine == "one_prompt":
        turn_ids = np.concatenate(list(turn_ids), axis=1)[None]
    for _ in range(2 if repeat else 1):
        for turn in turn_ids:
            session = session.feed(turn, remember=remember)
    if combine == "mean":
        scale = 1 / len(turn_ids)
        session = session.replace(
            deltas={k: d._replace(scale=d.scale * scale) for k, d in session.deltas.items()}
        )
    if distractor.shape[1]:
        session = session.feed(distractor, remember=False)
    out = {}
    for name, (keys, values) in queries.items():
        asked = session.feed(keys[:, None], remember=False)
        out[name] = float(np.mean(np.asarray(asked.last_logits.argmax(-1)) == values))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="pretrained/mqar_prosg", help="comma-separated workdirs")
    parser.add_argument("--control", default="pretrained/mqar_control.safetensors")
    parser.add_argument("--turns", default="1,2,4,8")
    parser.add_argument("--distances", default="256,1024,4096")
    parser.add_argument("--seeds", default="0,1,2", help="evaluation seeds (fresh data each)")
    parser.add_argument("--rows", type=int, default=128, help="conversations per seed")
    parser.add_argument("--max_rank", type=int, default=64, help="rank budget of the memory")
    parser.add_argument("--combine", default="sum", choices=("sum", "mean", "one_prompt"))
    parser.add_argument("--out", default="results/multiturn")
    args = parser.parse_args()
    runs = [pj.load_run(w) for w in args.runs.split(",")]
    cfg, params = pj.load_rwkv(args.control)
    control = pj.Run(cfg, params, None, None, runs[0].tokenizer)
    turns = [int(t) for t in args.turns.split(",")]
    distances = [int(d) for d in args.distances.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = []
    t0 = time.perf_counter()
    for t in turns:
        for d in distances:
            for s in seeds:
                data = conversations(np.random.default_rng([s, t, d]), args.rows, t, d)
                rows = {
                    "none": [recall(control, data, remember=False, repeat=False, max_rank=64)],
                    "repeat": [recall(control, data, remember=False, repeat=True, max_rank=64)],
                    "prosg": [
                        recall(
                            r,
                            data,
                            remember=True,
                            repeat=False,
                            max_rank=args.max_rank,
                            combine=args.combine,
                        )
                        for r in runs
                    ],
                }
                for method, per_run in rows.items():
                    for i, res in enumerate(per_run):
                        cells.append(
                            {
                                "turns": t,
                                "distance": d,
                                "seed": s,
                                "method": method,
                                "run": i,
                                **res,
                            }
                        )
                print(
                    f"T={t} D={d} seed {s}: "
                    + "  ".join(
                        f"{m} {np.mean([r['turn 1'] for r in v]):.1%}" for m, v in rows.items()
                    )
                    + f"  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"runs": args.runs.split(","), "control": args.control, "rows": args.rows}
    meta |= {"max_rank": args.max_rank, "seeds": seeds, "combine": args.combine}
    meta |= {"turns": args.turns, "distances": args.distances}
    write_text(out / "results.json", json.dumps({"meta": meta, "cells": cells}, indent=1))
    write_text(out / "results.md", table(cells, turns, distances, meta))


def table(cells, turns, distances, meta) -> str:
    """Markdown: per query set, a row per (method, T), a column per D."""
    lines = [
        "# Multi-turn MQAR",
        "",
        f"Exact match, {meta['rows']} conversations per evaluation seed, seeds {meta['seeds']}; "
        f"memory rank budget {meta['max_rank']}, turns combined by {meta['combine']}. "
        "Cells: mean over training runs ± std across runs [mean evaluation-seed std]; "
        "`none` and `repeat` use one control model.",
        "",
        "Command: `python experiments/multiturn/run.py --runs "
        + ",".join(meta["runs"])
        + f" --max_rank {meta['max_rank']} --combine {meta['combine']}"
        + f" --turns {meta['turns']} --distances {meta['distances']}`",
    ]
    for query in ("turn 1", "any turn"):
        lines += ["", f"## Query on {query}'s pairs", ""]
        lines += ["| method | T | " + " | ".join(f"D={d}" for d in distances) + " |"]
        lines += ["|---|---|" + "---|" * len(distances)]
        for method in ("none", "repeat", "prosg"):
            for t in turns:
                row = [method, str(t)]
                for d in distances:
                    sel = [
                        c
                        for c in cells
                        if (c["method"], c["turns"], c["distance"]) == (method, t, d)
                    ]
                    by_run = {}
                    for c in sel:
                        by_run.setdefault(c["run"], []).append(c[query])
                    means = [np.mean(v) for v in by_run.values()]
                    seed_std = np.mean([np.std(v) for v in by_run.values()])
                    row.append(f"{np.mean(means):.1%} ± {np.std(means):.1%} [{seed_std:.1%}]")
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
