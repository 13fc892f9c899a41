"""Scoring a run on one evaluation set: exact match and answer perplexity.

An :class:`EvalSet` holds one dataset's answers as fixed-width rows (one row
per answer). :func:`teacher_forced` derives the deltas once per batch and
reads each continuation in :data:`READ_BLOCK`-token blocks with the state
carried, so every distance shares one compiled reader; :func:`exact_match`
generates each answer instead (``eval.exact_match="generate"``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from prosg_jax import prosg, tasks
from prosg_jax.clock import PhaseClock
from prosg_jax.config import method_config
from prosg_jax.errors import UserError
from prosg_jax.models.lm import forward_core
from prosg_jax.prosg.ablations import derive_compiled
from prosg_jax.run import Run, complete_ids, decode_text
from prosg_jax.tasks.datasets import load_split, make_prosg_batch, round_up

# Tokens per teacher-forced read. Every continuation is read in blocks of this
# width, so all distances share one compiled reader; a multiple of the chunked
# WKV's chunk, and wide enough that a block's matmuls keep both cores busy.
READ_BLOCK = 256


# --------------------------------------------------------------------------- generation


def complete_batch(
    run: Run,
    prompts: np.ndarray,
    prompt_lengths: np.ndarray,
    contexts: np.ndarray,
    *,
    context_lengths: np.ndarray,
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
    prosg_cfg = method_config(run.prosg_cfg, method)
    rows = range(len(prompt_lengths))
    out = complete_ids(
        dataclasses.replace(run, prosg_cfg=prosg_cfg),
        [prompts[b, : prompt_lengths[b]].tolist() for b in rows],
        [contexts[b, : context_lengths[b]].tolist() for b in rows],
        max_new_tokens=max_new_tokens,
        stop_tokens=(),
    )
    return np.asarray(out, np.int32)


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def _score_block(
    model_cfg,
    params,
    deltas,
    tail: prosg.PromptTail,
    *,
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
    nll = prosg.token_nll(logits, targets)
    # targets[:, -1] is read first in the next block, one position after this block's last
    following = prosg.PromptTail(state=state, token=targets[:, -1], position=positions[:, -1] + 1)
    return following, (nll * mask).sum(-1), jnp.argmax(logits, -1).astype(jnp.int32)


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class EvalSet:
    """One dataset's scored answers, as fixed-width arrays (one row per answer)."""

    name: str
    task: tasks.Task
    examples: list[dict]  # encoded records (see Task.encode)
    example_seed: np.ndarray  # [E] the seed (index into seeds) of each example
    prompts: np.ndarray  # [N, P]
    prompt_lengths: np.ndarray  # [N]
    contexts: np.ndarray  # [N, C]
    context_lengths: np.ndarray  # [N]
    answers: list[np.ndarray]  # N answer id arrays
    row_example: np.ndarray  # [N] example of each row
    row_is_fact: np.ndarray  # [N] the answer is a fact of the prompt (not a closing word)
    max_new_tokens: int


def eval_name(base: str, total: int, split: str = "test") -> str:
    """A copy of ``base`` with only ``split``: its same first ``total`` examples."""
    sizes = {"test": f"_val0_t{total}", "validation": f"_val{total}_t0"}[split]
    return f"{base}_n0{sizes}"


def load_eval_set(
    name: str, n: int, seeds, directory: str, *, tokenizer, split: str = "test"
) -> EvalSet:
    """Builds (once) and encodes the ``split`` examples of every seed, one row per answer.

    Seed ``s`` takes examples ``[s*n, (s+1)*n)`` of ``split``.
    """
    total = (max(seeds) + 1) * n
    spec = tasks.parse_dataset(name)
    source = load_split(spec, directory, split)
    examples, example_seed = [], []
    for k, s in enumerate(seeds):
        for i in range(s * n, (s + 1) * n):
            if i >= len(source):
                raise UserError(
                    f"{name} has {len(source)} {split} examples; seed {s} needs {total}"
                )
            examples.append(spec.task.encode(source[i], tokenizer))
            example_seed.append(k)
    rows = []
    for e, ex in enumerate(examples):
        for start, end in zip(ex["answer_start"], ex["answer_end"], strict=True):
            rows.append((e, ex["prompt"], ex["cont"][:start], ex["cont"][start:end]))
    p_width = round_up(max(len(r[1]) for r in rows))
    c_width = round_up(max(len(r[2]) for r in rows))
    prompts = np.zeros((len(rows), p_width), np.int32)
    contexts = np.zeros((len(rows), c_width), np.int32)
    for j, (_, p, c, _) in enumerate(rows):
        prompts[j, : len(p)] = p
        contexts[j, : len(c)] = c
    context_lengths = np.asarray([len(r[2]) for r in rows], np.int32)
    answer_lens = [len(r[3]) for r in rows]
    return EvalSet(
        name=name,
        task=spec.task,
        examples=examples,
        example_seed=np.asarray(example_seed),
        prompts=prompts,
        prompt_lengths=np.asarray([len(r[1]) for r in rows], np.int32),
        contexts=contexts,
        context_lengths=context_lengths,
        answers=[r[3] for r in rows],
        row_example=np.asarray([r[0] for r in rows]),
        row_is_fact=np.concatenate([ex["answer_is_fact"] for ex in examples]),
        max_new_tokens=max(answer_lens) + spec.task.spare_answer_tokens,
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
        gen = complete_batch(
            run,
            es.prompts[padded],
            es.prompt_lengths[padded],
            es.contexts[padded],
            context_lengths=es.context_lengths[padded],
            max_new_tokens=es.max_new_tokens,
            method=method,
        )
        for j, row in enumerate(idx):
            want = es.answers[row]
            if es.task.token_ids:  # ids are the answer itself
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
    prosg_cfg = method_config(run.prosg_cfg, method)
    sg = run.sg_params if prosg_cfg.method == "prosg" else None
    p = round_up(max(len(e["prompt"]) for e in es.examples))
    k = round_up(max(len(e["cont"]) for e in es.examples), block)
    nll = np.zeros(len(es.examples))
    count = np.zeros(len(es.examples))
    preds = [None] * len(es.examples)
    for idx, padded in _batches(len(es.examples), batch_size):
        arrays = make_prosg_batch(
            [es.examples[i] for i in padded],
            prompt_len=p,
            cont_len=k,
            loss_on="answers",
            answer_weight=1.0,
        )
        with clock.phase("derive"):
            deltas, tail = derive_compiled(
                run.model_cfg,
                run.params,
                sg,
                prosg_cfg,
                prompts=arrays["prompts"],
                prompt_lengths=arrays["prompt_lengths"],
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
                    targets=arrays["targets"][:, cut],
                    mask=arrays["loss_mask"][:, cut],
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


def per_seed(es: EvalSet, hits, nll, count, *, n_seeds):
    """Per seed: exact match of every answer, of the facts only, and answer perplexity."""
    accs, fact_accs, ppls = [], [], []
    for k in range(n_seeds):
        rows = es.example_seed[es.row_example] == k
        accs.append(float(hits[rows].mean()))
        fact_accs.append(float(hits[rows & es.row_is_fact].mean()))
        ex = es.example_seed == k
        ppls.append(float(math.exp(nll[ex].sum() / max(count[ex].sum(), 1.0))))
    return accs, fact_accs, ppls


def std(xs) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
