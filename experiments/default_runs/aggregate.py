"""Mean over training runs: one table from several ``eval.py`` results of one config.

    python experiments/default_runs/aggregate.py OUT.md RESULTS.json [RESULTS.json ...]

Each ``results.json`` is one training run (a different ``--config.seed``)
scored by ``eval.py``. A cell is the mean over runs ± the standard deviation
across runs (ddof=1), then, in brackets, the mean over runs of each run's
evaluation-seed standard deviation: the two spreads side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from prosg_jax.files import write_text


def distance(column: str) -> str:
    """``l128_kv8_voc256_d1024`` → ``1024``."""
    return column.rsplit("_d", 1)[-1]


def cell(results: list[dict], method: str, column: str, kind: str = "mqar") -> str:
    """One cell over training runs: mean ± run std (ddof=1; 0 for one run) [mean eval-seed std]."""
    runs = np.array([r[kind][method][column] for r in results])
    seeds = np.array([r[f"{kind}_std"][method][column] for r in results])
    spread = runs.std(ddof=1) if len(runs) > 1 else 0.0
    return f"{runs.mean():.1%} ± {spread:.1%} [{seeds.mean():.1%}]"


def table(results: list[dict], kind: str = "mqar") -> list[str]:
    """Markdown rows of MQAR results: method × distance, mean ± run std [mean eval-seed std]."""
    columns = results[0]["config"]["mqar"]  # results.json keeps its keys sorted
    lines = [
        "| method | " + " | ".join(f"D={distance(c)}" for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for method in results[0]["config"]["methods"]:
        cells = [cell(results, method, c, kind) for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out, paths = Path(argv[0]), [Path(p) for p in argv[1:]]
    results = [json.loads(p.read_text()) for p in paths]
    per_run = [
        f"- `{p}`: {r['config']['workdir']}, eval {r['eval_seconds']} s"
        for p, r in zip(paths, results, strict=True)
    ]
    text = "\n".join(
        [
            f"# Mean over {len(results)} training runs",
            "",
            "Exact match on the test split: mean over training runs ± std across runs "
            "[mean of each run's std over its evaluation seeds].",
            "",
            *table(results),
            "",
            "Runs:",
            *per_run,
            "",
        ]
    )
    write_text(out, text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
