"""Evaluation called by ``eval.py``: recall vs distance, MQAR, perplexity; table and plot.

Scoring lives in :mod:`.scoring`, the tables and the plot in :mod:`.report`.

For every method in ``config.eval.methods`` (the run's ProSG config with its
``method`` replaced) and every distance ``D`` in ``config.eval.distances``:

* **Exact match.** Each answer of a ``prompt_retention`` *test* example is
  one generation: the prompt is read (and turned into deltas), the context
  after it — the distractor and the queries up to the answer's opening
  (earlier answers teacher-forced) — is read under the deltas, and the
  answer is generated greedily. It counts as recalled when the generated text
  starts with the expected formatted answer (e.g. ``(pumune)``, brackets
  included, so the answer format instruction is scored too). MQAR is scored
  the same way with the key-value context as the prompt and one generated
  token per query.
  ``eval.exact_match="teacher_forced"`` scores the same thing from one
  teacher-forced pass per example instead (an answer is generated exactly iff
  each of its tokens is the argmax given the true prefix), about (facts + 1)
  times cheaper; the two agree up to float rounding of near-ties. The pass
  derives the deltas once per batch and reads the continuation in blocks of
  :data:`READ_BLOCK` tokens with the state carried, so every distance shares
  one compiled reader: an eval compiles one prompt program per method and
  width, and two readers (with and without deltas).
* **Perplexity** of the answer tokens under teacher forcing, from the same
  pass (:func:`prosg_jax.prosg.continuation_logits`, the logits
  :func:`prosg_jax.prosg.continuation_loss` scores).

Rows. ``config.eval.methods`` lists rows ``method`` or ``method@model``. A
bare method runs on the workdir's trained run. ``@init`` runs it on
``config.init_from``, the base the run started from: the honest baseline for
a run whose stages trained the base too (the trained weights without their
deltas are a different model). ``@name`` runs it on the base checkpoint that
``config.eval.models`` (``"name=path,..."``) names, e.g. a control trained as
long on the same data. Only the trained run has an SG module, so ``prosg``
is never suffixed.

Seeds. The run is fixed, so a seed selects data: seed ``s`` scores test
examples ``[s*n, (s+1)*n)`` (``n = eval.num_examples``), disjoint across
seeds. Tables report the mean over seeds and the standard deviation across
them (``ddof=1``).

Outputs in the workdir: ``results.json``, ``results.md`` and
``recall_vs_distance.png``. ``results.json["eval_timing"]`` splits the wall
time into compilation, data, deriving deltas, reading (and decoding, with
``exact_match="generate"``) and counts the programs compiled.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from prosg_jax import experiment, provenance, tasks
from prosg_jax.checkpoint import load_rwkv
from prosg_jax.clock import PhaseClock
from prosg_jax.config import METHODS, method_config
from prosg_jax.config_check import check_config
from prosg_jax.errors import UserError
from prosg_jax.eval.report import INIT_MODEL, plot, results_table, retention_kind
from prosg_jax.eval.scoring import (
    eval_name,
    exact_match,
    load_eval_set,
    per_seed,
    std,
    teacher_forced,
)
from prosg_jax.run import Run, check_workdir, load_run, read_run_info, write_json
from prosg_jax.tasks import datasets

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT = "recall_vs_distance.png"

# --------------------------------------------------------------------------- run loading


# ProSG fields that define a trained run: eval refuses a config that differs from run.json.
RUN_PROSG_FIELDS = (
    "rank",
    "matrices",
    "layers",
    "sg_hidden",
    "key_dim",
    "pooling",
    "power_iters",
    "sketch_seed",
    "sg_lookahead",
    "segment_len",
)
# Evaluation-time choices, applied from the config and recorded in results.json: the
# true_grad ablation's settings (the rows choose the methods) and, in config.model,
# wkv_impl. The remaining ProSG fields (method, sg_match_*) only act in training.
EVAL_PROSG_FIELDS = ("true_grad_steps", "true_grad_lr")


def _show(value) -> str:
    """A ProSG field as it is written on the command line."""
    if value is None:
        return "''"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _apply_eval_choices(config: ml_collections.ConfigDict, run: Run, where: str) -> Run:
    """``run`` with the config's evaluation-time choices; run-defining fields must agree."""
    want = experiment.prosg_config(config)
    have = run.prosg_cfg
    diff = [
        f"--config.prosg.{f}={_show(getattr(want, f))} (the run has {_show(getattr(have, f))})"
        for f in RUN_PROSG_FIELDS
        if getattr(want, f) != getattr(have, f)
    ]
    if config.model.dtype != run.model_cfg.dtype:
        diff.append(
            f"--config.model.dtype={config.model.dtype} (the run has {run.model_cfg.dtype})"
        )
    if diff:
        raise UserError(
            f"{'; '.join(diff)}: these fields define the run in {where}; evaluate it with its "
            "own values (its run.json) or train another run"
        )
    choices = {f: getattr(want, f) for f in EVAL_PROSG_FIELDS}
    return dataclasses.replace(
        run,
        model_cfg=run.model_cfg.replace(wkv_impl=config.model.wkv_impl),
        prosg_cfg=have.replace(**choices),
    )


def _load_for_eval(config: ml_collections.ConfigDict, workdir: Path) -> Run:
    """The workdir's run, or ``config.init_from`` plus ``config.sg_from``."""
    want = experiment.model_config(config)
    if read_run_info(workdir) is not None:
        run = load_run(workdir)
        experiment.check_same_shape(want, run.model_cfg, str(workdir))
        return _apply_eval_choices(config, run, str(workdir))
    if not config.init_from:
        raise UserError(
            f"no trained run in {workdir}: run train.py with this --workdir, or set "
            "config.init_from (and config.sg_from)"
        )
    cfg, params = load_rwkv(config.init_from, dtype=jnp.dtype(config.model.dtype))
    experiment.check_same_shape(want, cfg, config.init_from)
    cfg = cfg.replace(wkv_impl=config.model.wkv_impl)
    sg_params = experiment.sg_from(config, cfg)
    from prosg_jax.data.tokenizers import get_tokenizer

    return Run(
        model_cfg=cfg,
        params=params,
        prosg_cfg=experiment.prosg_config(config),
        sg_params=sg_params,
        tokenizer=get_tokenizer(config.tokenizer),
    )


# --------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: ``method`` on the trained run (``model`` None) or on a named base."""

    label: str  # as written in config.eval.methods, e.g. "none@init"
    method: str
    model: str | None


def parse_rows(text: str, model_paths: dict[str, str]) -> tuple[Row, ...]:
    """``"none@init,prosg"`` → rows; ``model_paths`` maps each allowed suffix to its file.

    Raises:
      UserError: naming ``config.eval.methods`` for an unknown method or model,
        a repeated row, or ``prosg`` on a base (only the trained run has an SG module).
    """
    rows = []
    for label in experiment.split_list(text):
        method, _, model = label.partition("@")
        if method not in METHODS:
            raise UserError(f"config.eval.methods: {label!r} — choose methods from {METHODS}")
        if model and model not in model_paths:
            known = ", ".join(f"@{k}" for k in model_paths) or "none (set config.init_from)"
            raise UserError(
                f"config.eval.methods: {label!r} names no model; known suffixes: {known}"
            )
        if model and method == "prosg":
            raise UserError(
                f"config.eval.methods: {label!r} — only the trained run has an SG module; "
                "write 'prosg'"
            )
        rows.append(Row(label=label, method=method, model=model or None))
    labels = [r.label for r in rows]
    if not rows or len(set(labels)) != len(labels):
        raise UserError(
            f"config.eval.methods must list distinct rows, got {text!r} (choose from {METHODS})"
        )
    return tuple(rows)


def model_paths(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Row suffix → base checkpoint: ``init`` (``config.init_from``) and ``config.eval.models``."""
    paths = {INIT_MODEL: config.init_from} if config.init_from else {}
    for item in experiment.split_list(config.eval.get("models", "")):
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path or not name.isidentifier():
            raise UserError(f"config.eval.models: {item!r} is not name=path")
        if name in paths:
            raise UserError(f"config.eval.models: {name!r} is named twice (or is 'init')")
        if not Path(path).is_file():
            raise UserError(f"config.eval.models: {name}={path}: no such file")
        paths[name] = path
    return paths


def _check_init_from(init_from: str, info: dict | None, workdir: Path) -> None:
    """Rows ``@init`` must score the base the run really started from (when run.json says)."""
    recorded = (info or {}).get("init_from")  # absent from runs written before it was recorded
    if recorded is None:
        return
    if not recorded or Path(recorded).resolve() != Path(init_from).resolve():
        raise UserError(
            f"config.init_from={init_from!r}, but the run in {workdir} started from "
            f"{recorded or 'scratch'!r}: rows '@init' score the base the run started from, so "
            + (f"pass --config.init_from={recorded}" if recorded else "drop the '@init' rows")
        )


def _base_run(run: Run, path: str, dtype) -> Run:
    """``run`` with its base weights replaced by the checkpoint at ``path`` and no SG module."""
    cfg, params = load_rwkv(path, dtype=dtype)
    experiment.check_same_shape(run.model_cfg, cfg, path)
    cfg = cfg.replace(wkv_impl=run.model_cfg.wkv_impl)  # the evaluation's choice
    return dataclasses.replace(run, model_cfg=cfg, params=params, sg_params=None)


# --------------------------------------------------------------------------- entry point


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Evaluates every method at every distance and writes the three result files.

    Returns:
      The ``results.json`` contents.
    """
    t0 = time.time()
    check_config(config)
    workdir = check_workdir(workdir)
    ev = config.eval
    paths = model_paths(config)
    rows = parse_rows(ev.methods, paths)
    distances = experiment.int_list(ev.distances, "eval.distances")
    shares = experiment.int_list(ev.distractor_facts, "eval.distractor_facts")
    questions = ev.num_queries
    seeds = experiment.int_list(ev.seeds, "eval.seeds")
    split = ev.split
    run = _load_for_eval(config, workdir)
    if any(r.method == "prosg" for r in rows) and run.sg_params is None:
        raise UserError(
            "method 'prosg' needs a trained SG module: run the prosg stage, set "
            "config.sg_from, or drop it from config.eval.methods"
        )
    if any(r.model == INIT_MODEL for r in rows):
        _check_init_from(config.init_from, read_run_info(workdir), workdir)
    dtype = jnp.dtype(config.model.dtype)
    runs = {None: run} | {
        name: _base_run(run, paths[name], dtype) for name in {r.model for r in rows} - {None}
    }
    for r in rows:  # a target the model lacks fails before any work
        method_config(run.prosg_cfg, r.method).targets(runs[r.model].model_cfg)
    directory = datasets.data_dir(config, workdir)
    sets = [
        (
            retention_kind(share),
            str(d),
            eval_name(
                f"prompt_retention/d{d}_f{ev.num_facts}"
                + (f"_q{questions}" if questions else "")
                + (f"_b{share}" if share else ""),
                (max(seeds) + 1) * ev.num_examples,
                split,
            ),
        )
        for share in (shares if distances else ())
        for d in distances
    ]
    sets += [
        ("mqar", c, eval_name(f"mqar/{c}", (max(seeds) + 1) * ev.num_examples, split))
        for c in experiment.split_list(ev.mqar)
    ]
    for _, _, name in sets:
        datasets.check_vocab(tasks.parse_dataset(name), run.model_cfg.vocab_size)

    # Results key -> its task, in set order; the MQAR table is always present.
    kinds = {k: tasks.parse_dataset(n).task for k, _, n in sets}
    kinds.setdefault("mqar", tasks.get("mqar"))
    results: dict = {}
    for kind, task in kinds.items():
        for suffix in ("", "_std") + (("_facts", "_facts_std") if task.non_fact_answers else ()):
            results[kind + suffix] = {}
    results["perplexity"] = {k: {} for k in kinds}
    results["n_answers"] = {k: {} for k in kinds}
    clock = PhaseClock()
    for kind, label, name in sets:
        with clock.phase("data"):
            es = load_eval_set(
                name, ev.num_examples, seeds, directory, tokenizer=run.tokenizer, split=split
            )
        results["n_answers"][kind][label] = len(es.answers)
        for row in rows:
            m, row_run = row.label, runs[row.model]
            t = time.time()
            nll, count, hits, _ = teacher_forced(
                row_run, es, row.method, ev.batch_size, clock=clock
            )
            if ev.exact_match == "generate":
                with clock.phase("decode"):
                    hits = exact_match(row_run, es, row.method, ev.batch_size)
            accs, fact_accs, ppls = per_seed(es, hits, nll, count, n_seeds=len(seeds))
            results[kind].setdefault(m, {})[label] = float(np.mean(accs))
            results[f"{kind}_std"].setdefault(m, {})[label] = std(accs)
            results["perplexity"][kind].setdefault(m, {})[label] = float(np.mean(ppls))
            facts = ""
            if es.task.non_fact_answers:
                results[f"{kind}_facts"].setdefault(m, {})[label] = float(np.mean(fact_accs))
                results[f"{kind}_facts_std"].setdefault(m, {})[label] = std(fact_accs)
                facts = f" (facts only {np.mean(fact_accs):.3f} ± {std(fact_accs):.3f})"
            print(
                f"{name} {m}: exact match {np.mean(accs):.3f} ± {std(accs):.3f}{facts}, "
                f"answer perplexity {np.mean(ppls):.3g} ({time.time() - t:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    results["config"] = {
        "workdir": str(workdir),
        "methods": [r.label for r in rows],
        "models": paths,  # row suffix -> base checkpoint
        "distances": list(distances),
        "distractor_facts": list(shares),
        "num_facts": ev.num_facts,
        "num_queries": questions,
        "mqar": list(experiment.split_list(ev.mqar)),
        "num_examples": ev.num_examples,
        "seeds": list(seeds),
        "exact_match": ev.exact_match,
        "split": split,
        "seed_meaning": f"seed s scores {split} examples [s*n, (s+1)*n); mean and std over seeds",
        "model": dataclasses.asdict(run.model_cfg),
        "prosg": dataclasses.asdict(run.prosg_cfg),
        "tokenizer": config.tokenizer,
    }
    results["environment"] = provenance.environment()
    results["eval_seconds"] = round(time.time() - t0, 1)
    # compile / data / derive / read (/ decode) seconds and the programs compiled
    results["eval_timing"] = clock.summary()
    print(
        "eval: "
        + ", ".join(f"{k} {v}" for k, v in results["eval_timing"].items())
        + f", total {results['eval_seconds']} s",
        file=sys.stderr,
    )
    if jax.process_index() == 0:
        write_json(workdir / RESULTS_JSON, results)
        (workdir / RESULTS_MD).write_text(results_table(results))
        plot(results, workdir / PLOT)
        print(f"wrote {workdir / RESULTS_JSON}, {RESULTS_MD}, {PLOT}", file=sys.stderr)
    return results
