"""Evaluation called by ``eval.py``: recall vs distance, MQAR, perplexity; table and plot.

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
import functools
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from prosg_jax import prosg, provenance
from prosg_jax.checkpoint import load_rwkv
from prosg_jax.clock import PhaseClock
from prosg_jax.config import METHODS, ProSGConfig
from prosg_jax.errors import UserError
from prosg_jax.export import SG_FILE, load_run, load_sg_params, read_run_info, write_json
from prosg_jax.models.lm import forward_core
from prosg_jax.prosg.ablations import derive
from prosg_jax.sampling import Run, complete_ids, decode_text
from prosg_jax.train import data as data_lib
from prosg_jax.train import experiment
from prosg_jax.train.config_check import check_config

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT = "recall_vs_distance.png"
_WIDTH_MULTIPLE = 64
# Tokens per teacher-forced read. Every continuation is read in blocks of this
# width, so all distances share one compiled reader; a multiple of the chunked
# WKV's chunk, and wide enough that a block's matmuls keep both cores busy.
READ_BLOCK = 256


# --------------------------------------------------------------------------- generation


def _complete_batch(
    run: Run,
    prompts: np.ndarray,
    prompt_lengths: np.ndarray,
    contexts: np.ndarray,
    context_lengths: np.ndarray,
    *,
    max_new_tokens: int,
    method: str | None = None,
) -> np.ndarray:
    """Greedy completions after teacher-forced contexts (:func:`prosg_jax.complete_ids`).

    Row ``b`` reads ``prompts[b, :prompt_lengths[b]]`` (deltas derived from
    it by ``method``), then ``contexts[b, :context_lengths[b]]`` under the
    deltas, then generates ``max_new_tokens`` tokens greedily (no stop token:
    the answer is compared over its own length).

    Returns:
      ``int32[B, max_new_tokens]`` generated ids.
    """
    prosg_cfg = _method_config(run.prosg_cfg, method)
    rows = range(len(prompt_lengths))
    out = complete_ids(
        dataclasses.replace(run, prosg_cfg=prosg_cfg),
        [prompts[b, : prompt_lengths[b]].tolist() for b in rows],
        [contexts[b, : context_lengths[b]].tolist() for b in rows],
        max_new_tokens=max_new_tokens,
        stop_tokens=(),
    )
    return np.asarray(out, np.int32)


def _method_config(prosg_cfg: ProSGConfig, method: str | None) -> ProSGConfig:
    """The run's ProSG config evaluated as ``method`` (no training-only losses)."""
    if method is not None and method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose from {METHODS}")
    return dataclasses.replace(
        prosg_cfg,
        method=prosg_cfg.method if method is None else method,
        sg_match_weight=0.0,
        train_base=False,
    )


@functools.partial(jax.jit, static_argnames=("model_cfg", "prosg_cfg"))
def _derive(model_cfg, params, sg_params, prosg_cfg, prompts, prompt_lengths):
    """The deltas (``None`` for ``none``/``repeat_prompt``) and the prompt tail."""
    return derive(model_cfg, params, sg_params, prosg_cfg, prompts, prompt_lengths)


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def _score_block(
    model_cfg,
    params,
    deltas,
    tail: prosg.PromptTail,
    targets: jax.Array,  # int32[B, W]
    mask: jax.Array,  # float32[B, W]
):
    """Teacher-forces one block of a continuation from where ``tail`` left off.

    Returns:
      ``(tail, nll, argmax)``: where the next block resumes (the state after
      this one, its last target and that target's position), ``float32[B]``
      NLL summed over ``mask`` and the ``int32[B, W]`` argmax predictions.
    """
    inputs, positions = prosg.continuation_inputs(tail, targets)
    logits, state, _ = forward_core(
        model_cfg, params, inputs, tail.state, deltas=deltas, positions=positions
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    # targets[:, -1] is read first in the next block, one position after this block's last
    following = prosg.PromptTail(state=state, token=targets[:, -1], position=positions[:, -1] + 1)
    return following, (nll * mask).sum(-1), jnp.argmax(logits, -1).astype(jnp.int32)


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class EvalSet:
    """One dataset's scored answers, as fixed-width arrays (one row per answer)."""

    name: str
    kind: str  # "prompt_retention" or "mqar"
    examples: list[dict]  # encoded records (see train.data.encode_record)
    example_seed: np.ndarray  # [E] the seed (index into seeds) of each example
    prompts: np.ndarray  # [N, P]
    prompt_lengths: np.ndarray  # [N]
    contexts: np.ndarray  # [N, C]
    context_lengths: np.ndarray  # [N]
    answers: list[np.ndarray]  # N answer id arrays
    row_example: np.ndarray  # [N] example of each row
    row_is_fact: np.ndarray  # [N] the answer is a fact (not prompt_retention's closing word)
    max_new_tokens: int


def _round_up(n: int, m: int = _WIDTH_MULTIPLE) -> int:
    return max(m, -(-n // m) * m)


def _eval_name(base: str, total: int, split: str = "test") -> str:
    """A copy of ``base`` with only ``split``: its same first ``total`` examples."""
    sizes = {"test": f"_val0_t{total}", "validation": f"_val{total}_t0"}[split]
    return f"{base}_n0{sizes}"


def load_eval_set(
    name: str, kind: str, n: int, seeds, directory: str, tokenizer, split: str = "test"
) -> EvalSet:
    """Builds (once) and encodes the ``split`` examples of every seed, one row per answer."""
    total = (max(seeds) + 1) * n
    spec = data_lib.parse_dataset(name)
    source = data_lib.load_split(spec, directory, split)
    examples, example_seed = [], []
    for k, s in enumerate(seeds):
        for i in range(s * n, (s + 1) * n):
            if i >= len(source):
                raise UserError(
                    f"{name} has {len(source)} {split} examples; seed {s} needs {total}"
                )
            examples.append(data_lib.encode_record(source[i], dataset=kind, tokenizer=tokenizer))
            example_seed.append(k)
    rows = []
    for e, ex in enumerate(examples):
        for start, end in zip(ex["answer_start"], ex["answer_end"], strict=True):
            rows.append((e, ex["prompt"], ex["cont"][:start], ex["cont"][start:end]))
    p_width = _round_up(max(len(r[1]) for r in rows))
    c_width = _round_up(max(len(r[2]) for r in rows))
    prompts = np.zeros((len(rows), p_width), np.int32)
    contexts = np.zeros((len(rows), c_width), np.int32)
    for j, (_, p, c, _) in enumerate(rows):
        prompts[j, : len(p)] = p
        contexts[j, : len(c)] = c
    context_lengths = np.asarray([len(r[2]) for r in rows], np.int32)
    answer_lens = [len(r[3]) for r in rows]
    return EvalSet(
        name=name,
        kind=kind,
        examples=examples,
        example_seed=np.asarray(example_seed),
        prompts=prompts,
        prompt_lengths=np.asarray([len(r[1]) for r in rows], np.int32),
        contexts=contexts,
        context_lengths=context_lengths,
        answers=[r[3] for r in rows],
        row_example=np.asarray([r[0] for r in rows]),
        row_is_fact=np.concatenate([ex["answer_is_fact"] for ex in examples]),
        # Text answers: a couple of spare tokens, since another tokenizer may split
        # the generated text differently; MQAR answers are single tokens.
        max_new_tokens=max(answer_lens) + (0 if kind == "mqar" else 2),
    )


# --------------------------------------------------------------------------- scoring


def _batches(n: int, size: int):
    """``(rows, padded rows)`` of ``n`` rows in equal batches of at most ``size``.

    The batch size is balanced (48 rows at ``size=32`` are two batches of 24)
    so that padding the last batch to the common shape wastes under a row
    per batch.
    """
    count = -(-n // size)
    size = -(-n // count)
    for start in range(0, n, size):
        idx = np.arange(start, min(start + size, n))
        yield idx, np.concatenate([idx, np.full(size - len(idx), idx[0])])  # fixed shape


def exact_match(run: Run, es: EvalSet, method: str, batch_size: int) -> np.ndarray:
    """``bool[N]``: whether each answer was generated exactly."""
    hits = np.zeros(len(es.answers), bool)
    for idx, padded in _batches(len(es.answers), batch_size):
        gen = _complete_batch(
            run,
            es.prompts[padded],
            es.prompt_lengths[padded],
            es.contexts[padded],
            es.context_lengths[padded],
            max_new_tokens=es.max_new_tokens,
            method=method,
        )
        for j, row in enumerate(idx):
            want = es.answers[row]
            if es.kind == "mqar":
                hits[row] = np.array_equal(gen[j, : len(want)], want)
            else:
                text = decode_text(run.tokenizer, want)
                hits[row] = decode_text(run.tokenizer, gen[j])[: len(text)] == text
    return hits


def teacher_forced(
    run: Run,
    es: EvalSet,
    method: str,
    batch_size: int,
    *,
    block: int = READ_BLOCK,
    clock: PhaseClock | None = None,
):
    """One teacher-forced pass per example, read in blocks of ``block`` tokens.

    The deltas are derived once per batch; the continuation (the replayed last
    prompt token, then the context with its answers) is then read ``block``
    tokens at a time with the recurrent state carried between blocks. Every
    continuation length and every method with deltas shares one compiled
    block reader, so an eval compiles one program per method for the prompt
    and two for the reading, whatever its distances.

    Returns:
      ``(nll, count, hits, first)``: per-example summed answer-token NLL and
      answer token count; per answer row whether every answer token is the
      argmax given the true prefix — which is exactly when greedy decoding
      reproduces the answer — and the argmax at the answer's first token.
    """
    clock = clock or PhaseClock()
    prosg_cfg = _method_config(run.prosg_cfg, method)
    sg = run.sg_params if prosg_cfg.method == "prosg" else None
    p = _round_up(max(len(e["prompt"]) for e in es.examples))
    k = _round_up(max(len(e["cont"]) for e in es.examples), block)
    nll = np.zeros(len(es.examples))
    count = np.zeros(len(es.examples))
    preds = [None] * len(es.examples)
    for idx, padded in _batches(len(es.examples), batch_size):
        arrays = data_lib.make_prosg_batch(
            [es.examples[i] for i in padded],
            prompt_len=p,
            cont_len=k,
            loss_on="answers",
            answer_weight=1.0,
        )
        with clock.phase("derive"):
            deltas, tail = _derive(
                run.model_cfg,
                run.params,
                sg,
                prosg_cfg,
                arrays["prompts"],
                arrays["prompt_lengths"],
            )
            jax.block_until_ready(deltas)
        out = []
        with clock.phase("read"):
            for s in range(0, k, block):
                cut = slice(s, s + block)
                tail, *scored = _score_block(
                    run.model_cfg,
                    run.params,
                    deltas,
                    tail,
                    arrays["targets"][:, cut],
                    arrays["loss_mask"][:, cut],
                )
                out.append(scored)
            out = [(np.asarray(n, np.float64), np.asarray(p)) for n, p in out]
        out_nll = np.sum([n for n, _ in out], axis=0)
        out_pred = np.concatenate([p for _, p in out], axis=1)
        for j, i in enumerate(idx):
            nll[i], count[i], preds[i] = out_nll[j], arrays["loss_mask"][j].sum(), out_pred[j]
    hits = np.zeros(len(es.answers), bool)
    first = np.zeros(len(es.answers), np.int32)
    row = 0
    for e, ex in enumerate(es.examples):
        for start, end in zip(ex["answer_start"], ex["answer_end"], strict=True):
            # prediction k is for cont[k] (the replayed last prompt token predicts cont[0])
            hits[row] = np.array_equal(preds[e][start:end], ex["cont"][start:end])
            first[row] = preds[e][start]
            row += 1
    return nll, count, hits, first


def _per_seed(es: EvalSet, hits, nll, count, n_seeds):
    """Per seed: exact match of every answer, of the facts only, and answer perplexity."""
    accs, fact_accs, ppls = [], [], []
    for k in range(n_seeds):
        rows = es.example_seed[es.row_example] == k
        accs.append(float(hits[rows].mean()))
        fact_accs.append(float(hits[rows & es.row_is_fact].mean()))
        ex = es.example_seed == k
        ppls.append(float(math.exp(nll[ex].sum() / max(count[ex].sum(), 1.0))))
    return accs, fact_accs, ppls


def _std(xs) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


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
    """The workdir's run, or ``config.init_from`` plus ``config.eval.sg_checkpoint``."""
    want = experiment.model_config(config)
    if read_run_info(workdir) is not None:
        run = load_run(workdir)
        experiment.check_same_shape(want, run.model_cfg, str(workdir))
        return _apply_eval_choices(config, run, str(workdir))
    if not config.init_from:
        raise UserError(
            f"no trained run in {workdir}: run train.py with this --workdir, or set "
            "config.init_from (and config.eval.sg_checkpoint)"
        )
    cfg, params = load_rwkv(config.init_from, dtype=jnp.dtype(config.model.dtype))
    experiment.check_same_shape(want, cfg, config.init_from)
    cfg = cfg.replace(wkv_impl=config.model.wkv_impl)
    sg_params = None
    if config.eval.sg_checkpoint:
        path = Path(config.eval.sg_checkpoint)
        sg_params = load_sg_params(path / SG_FILE if path.is_dir() else path)
    from prosg_jax.data.tokenizers import get_tokenizer

    return Run(
        model_cfg=cfg,
        params=params,
        prosg_cfg=experiment.prosg_config(config),
        sg_params=sg_params,
        tokenizer=get_tokenizer(config.tokenizer),
    )


# --------------------------------------------------------------------------- rows


INIT_MODEL = "init"  # the row suffix naming config.init_from


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
    from prosg_jax.train_lib import check_workdir

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
            "config.eval.sg_checkpoint, or drop it from config.eval.methods"
        )
    if any(r.model == INIT_MODEL for r in rows):
        _check_init_from(config.init_from, read_run_info(workdir), workdir)
    dtype = jnp.dtype(config.model.dtype)
    runs = {None: run} | {
        name: _base_run(run, paths[name], dtype) for name in {r.model for r in rows} - {None}
    }
    for r in rows:  # a target the model lacks fails before any work
        _method_config(run.prosg_cfg, r.method).targets(runs[r.model].model_cfg)
    directory = data_lib.data_dir(config, workdir)
    sets = [
        (
            retention_kind(share),
            str(d),
            _eval_name(
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
        ("mqar", c, _eval_name(f"mqar/{c}", (max(seeds) + 1) * ev.num_examples, split))
        for c in experiment.split_list(ev.mqar)
    ]
    for _, _, name in sets:
        data_lib.check_vocab(data_lib.parse_dataset(name), run.model_cfg.vocab_size)

    kinds = list(dict.fromkeys([*(k for k, _, _ in sets), "mqar"]))
    results: dict = {}
    for kind in kinds:
        for suffix in ("", "_std") + (("_facts", "_facts_std") if kind != "mqar" else ()):
            results[kind + suffix] = {}
    results["perplexity"] = {k: {} for k in kinds}
    results["n_answers"] = {k: {} for k in kinds}
    clock = PhaseClock()
    for kind, label, name in sets:
        dataset = "mqar" if kind == "mqar" else "prompt_retention"
        with clock.phase("data"):
            es = load_eval_set(
                name, dataset, ev.num_examples, seeds, directory, run.tokenizer, split
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
            accs, fact_accs, ppls = _per_seed(es, hits, nll, count, len(seeds))
            results[kind].setdefault(m, {})[label] = float(np.mean(accs))
            results[f"{kind}_std"].setdefault(m, {})[label] = _std(accs)
            results["perplexity"][kind].setdefault(m, {})[label] = float(np.mean(ppls))
            facts = ""
            if kind != "mqar":
                results[f"{kind}_facts"].setdefault(m, {})[label] = float(np.mean(fact_accs))
                results[f"{kind}_facts_std"].setdefault(m, {})[label] = _std(fact_accs)
                facts = f" (facts only {np.mean(fact_accs):.3f} ± {_std(fact_accs):.3f})"
            print(
                f"{name} {m}: exact match {np.mean(accs):.3f} ± {_std(accs):.3f}{facts}, "
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


# --------------------------------------------------------------------------- reports


def retention_kind(share: int) -> str:
    """Results key of ``prompt_retention`` with ``share`` % distractor facts."""
    return "prompt_retention" if share == 0 else f"prompt_retention_b{share}"


def _share_text(share: int) -> str:
    return f", {share}% distractor facts" if share else ""


def _set_text(cfg: dict, share: int) -> str:
    """``f4``, ``f4, 1 question``, ``f4, 50% distractor facts``: what a table scores."""
    questions = cfg.get("num_queries", 0)  # absent from older results: every fact asked
    asked = f", {questions} question{'s' if questions > 1 else ''}" if questions else ""
    return f"f{cfg['num_facts']}{asked}{_share_text(share)}"


def _table(title, values, spreads, columns, fmt) -> list[str]:
    lines = [f"### {title}", "", "| method | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for m, row in values.items():
        cells = []
        for c in columns:
            v = row.get(c)
            s = (spreads or {}).get(m, {}).get(c)
            cells.append("–" if v is None else fmt(v) + ("" if s is None else f" ± {fmt(s)}"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def results_table(results: dict) -> str:
    """``results.md``: exact match (mean ± std over seeds) and answer perplexity."""
    cfg = results["config"]
    d_cols = [str(d) for d in cfg["distances"]]
    m_cols = cfg["mqar"]
    pct = "{:.1%}".format
    lines = [
        "# Recall vs distance",
        "",
        f"Exact match of each answer (greedy, after teacher-forced context), mean ± std over "
        f"seeds {cfg['seeds']} ({cfg['num_examples']} {cfg.get('split', 'test')} examples "
        "per seed; "
        f"{cfg['seed_meaning']}). Columns: distractor length D in tokens.",
        "",
    ]
    models = {m.partition("@")[2] for m in cfg.get("methods", [])} - {""}
    if models:  # older results have no suffixed rows
        named = "; ".join(f"`@{k}` = `{cfg['models'][k]}`" for k in sorted(models))
        lines += [
            f"Rows: a bare method runs on the trained run in `{cfg['workdir']}`; `method@model` "
            f"runs it on a base checkpoint without an SG module: {named}"
            + (
                " (`config.init_from`, the base the run started from)"
                if INIT_MODEL in models
                else ""
            )
            + ".",
            "",
        ]
    shares = cfg.get("distractor_facts", [0]) if d_cols else []  # older results: filler only
    for share in shares:
        kind = retention_kind(share)
        title = f"prompt_retention ({_set_text(cfg, share)})"
        lines += _table(title, results[kind], results[f"{kind}_std"], d_cols, pct)
        if results.get(f"{kind}_facts"):  # absent from older results
            lines += _table(
                f"{title}, facts only (closing word excluded)",
                results[f"{kind}_facts"],
                results[f"{kind}_facts_std"],
                d_cols,
                pct,
            )
    if m_cols:
        lines += _table("MQAR", results["mqar"], results["mqar_std"], m_cols, pct)
    for share in shares:
        lines += _table(
            f"Answer-token perplexity (prompt_retention{_share_text(share)})",
            results["perplexity"][retention_kind(share)],
            None,
            d_cols,
            "{:.3g}".format,
        )
    if m_cols:
        lines += _table(
            "Answer-token perplexity (MQAR)",
            results["perplexity"]["mqar"],
            None,
            m_cols,
            "{:.3g}".format,
        )
    n = results["n_answers"]
    counts = [
        f"D={k}{_share_text(share)}: {v}"
        for share in shares
        for k, v in n[retention_kind(share)].items()
    ]
    counts += [f"{k}: {v}" for k, v in n.get("mqar", {}).items()]
    lines.append("Answers scored per method: " + ", ".join(counts))
    return "\n".join(lines) + "\n"


_NOT_SHAPE = ("name", "description", "distance")


def _mqar_distances(configs) -> dict[str, int]:
    """MQAR config → distance, when the configs differ in distance alone (a curve)."""
    specs = {c: data_lib.parse_dataset(f"mqar/{c}").config for c in configs}

    def shape(x):  # every builder field but the name and the distance
        return [getattr(x, f.name) for f in dataclasses.fields(x) if f.name not in _NOT_SHAPE]

    shapes = [shape(x) for x in specs.values()]
    if len(specs) < 2 or any(s != shapes[0] for s in shapes):
        return {}
    return {c: x.distance for c, x in specs.items()}


def plot(results: dict, path: str | os.PathLike) -> None:
    """``recall_vs_distance.png``: one line per method, error bars = std over seeds.

    One panel for ``prompt_retention`` (if any distance was evaluated) and one
    for MQAR configs that differ only in their distance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    panels = []
    for share in cfg.get("distractor_facts", [0]) if cfg["distances"] else []:
        title = f"prompt_retention recall ({_set_text(cfg, share)})"
        panels.append((title, retention_kind(share), {str(d): d for d in cfg["distances"]}))
    mqar_d = _mqar_distances(cfg["mqar"])
    if mqar_d:
        task = re.sub(r"_d\d+", "", cfg["mqar"][0])
        panels.append((f"MQAR recall ({task})", "mqar", mqar_d))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), dpi=120, squeeze=False)
    for ax, (title, kind, labels) in zip(axes[0], panels, strict=True):
        order = sorted(labels, key=labels.get)
        xs = [labels[c] for c in order]
        for m, row in results[kind].items():
            ys = [row[c] for c in order]
            es = [results[f"{kind}_std"][m][c] for c in order]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
        # symlog: MQAR curves start at D = 0, which a log axis cannot show
        ax.set_xscale("symlog", base=2, linthresh=min((x for x in xs if x > 0), default=1))
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("distance D (distractor tokens between prompt and questions)")
        ax.set_ylabel("exact match")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def read_results(workdir: str | os.PathLike) -> dict:
    """``results.json`` of a workdir."""
    return json.loads((Path(workdir) / RESULTS_JSON).read_text())
