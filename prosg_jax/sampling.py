"""Generation: one prefill, one ``lax.while_loop`` decode over a step function.

**Padding convention** (every entry point): prompts are right-padded
``int32[B, P]`` with ``prompt_lengths int32[B]`` — row ``b``'s ids in columns
``[0, prompt_lengths[b])``, 0 beyond — or a ragged list of id lists.
Contexts follow the same rule with ``context_lengths`` (a context may be
empty). A row with an id beyond its length (e.g. a left-padded row) is an
error. Rows are left-aligned internally, pads at position 0, where the model
resets its state.

**Prefill** (:func:`prefill`) gives ``(SamplingState, deltas)`` under any
``ProSGConfig.method``: the base model reads each prompt up to its last
token, the deltas are derived from the whole prompt, and the last prompt
token is replayed under the deltas (one T=1 step), so the first generated
token and every state after the prompt are under the deltas. With contexts
(``prosg_jax.complete``), each row's prompt and context are left-aligned together
and read in one parallel pass from a fresh state, the deltas gated on from
the prompt's last token: rows of different context lengths never run padding
through their state, and each row equals running it alone.

**Decode** (:func:`decode_chunk`) is a jitted ``lax.while_loop``
(:func:`prosg_jax.decode.decode_loop`, which takes the model as a one-token step function)
over a :class:`SamplingState` with donated buffers: greedy, temperature, top-k and
top-p sampling; per-row stop tokens; the loop exits as soon as every row has
stopped. Calling it again continues where it stopped (streaming). It casts
the weights and delta factors to the compute dtype once per call, not once
per token, and can run several tokens per loop iteration (``unroll``).

Prompt and context widths are padded to powers of two (at least 8), so new
prompts of similar length reuse one compiled prefill; padding never changes
a result.

Axis legend: ``B`` batch, ``P`` prompt width, ``Q`` context width, ``G``
generated tokens, ``S`` stop ids per row, ``V`` vocab.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from prosg_jax.config import ProSGConfig, RWKVConfig, method_config
from prosg_jax.decode import (
    SamplingState,
    check_count,
    check_sampling,
    decode_loop,
    stop_matrix,
)
from prosg_jax.models.layers import Deltas
from prosg_jax.models.lm import (
    cast_for_compute,
    check_deltas,
    check_params,
    forward_core,
    init_state,
)
from prosg_jax.prosg.ablations import derive, repeat_prompts
from prosg_jax.prosg.sg import check_sg_params
from prosg_jax.prosg.states import join_rows, left_align, right_padded


class Generation(NamedTuple):
    """What :func:`generate` returns.

    Attributes:
      tokens: ``int32[B, G]`` generated ids, 0 after a row has stopped.
      lengths: ``int32[B]`` tokens generated per row, its stop token included.
      stopped: ``bool[B]`` whether the row ended on a stop token (else it
        reached ``max_new_tokens``).
    """

    tokens: Int[Array, "B G"]
    lengths: Int[Array, " B"]
    stopped: Bool[Array, " B"]


# --------------------------------------------------------------------------- arguments


def bucket(width: int, minimum: int = 8) -> int:
    """The padded width for ``width`` columns: the next power of two, at least ``minimum``."""
    return max(minimum, 1 << (max(width, 1) - 1).bit_length())


def _pad_columns(rows: np.ndarray, width: int) -> np.ndarray:
    return np.pad(rows, ((0, 0), (0, width - rows.shape[1])))


# --------------------------------------------------------------------------- jitted core


def _gate(deltas: Deltas, on: Bool[Array, "B T"]) -> Deltas:
    """The deltas with a per-token scale: in force where ``on``, absent elsewhere."""
    gated = {}
    for name, d in deltas.items():
        scale = jnp.asarray(d.scale, jnp.float32)
        scale = scale.reshape(-1, 1) if scale.ndim else scale
        gated[name] = d._replace(scale=jnp.where(on, scale, 0.0))
    return gated


def _read_contexts(
    model_cfg, params, prosg_cfg, deltas, *, prompts, prompt_lengths, contexts, context_lengths
):
    """Prompt ++ context, left-aligned, in one pass from a fresh state.

    The base model reads each prompt up to its last token; from that token on
    the deltas are in force (a per-token gate on their scale). Left alignment
    puts every row's context last, so right-padding a ragged context never
    runs pads through the state. The prompt is read a second time (after the
    pass that derived the deltas) because only a fresh state, where pads at
    position 0 are invisible, lets rows of different lengths share one pass.
    """
    if prosg_cfg.method == "repeat_prompt":
        prompts, prompt_lengths = repeat_prompts(prompts, prompt_lengths)
    joint, lengths = join_rows(prompts, prompt_lengths, contexts, context_lengths)
    tokens, positions, _ = left_align(joint, lengths)
    width = tokens.shape[1]
    on = jnp.arange(width)[None, :] >= width - 1 - context_lengths[:, None]
    logits, state, _ = forward_core(
        model_cfg,
        params,
        tokens,
        init_state(model_cfg, tokens.shape[0]),
        deltas=None if deltas is None else _gate(deltas, on),
        positions=positions,
    )
    return logits[:, -1], state


@functools.partial(jax.jit, static_argnames=("model_cfg", "prosg_cfg"))
def _prefill(
    model_cfg,
    params,
    sg_params,
    prosg_cfg,
    *,
    prompts,
    prompt_lengths,
    contexts,
    context_lengths,
    stop_ids,
    key,
):
    deltas, tail = derive(
        model_cfg, params, sg_params, prosg_cfg, prompts=prompts, prompt_lengths=prompt_lengths
    )
    if contexts is None:
        logits, state, _ = forward_core(
            model_cfg,
            params,
            tail.token[:, None],
            tail.state,
            deltas=deltas,
            positions=tail.position[:, None],
        )
        last = logits[:, 0]
    else:
        last, state = _read_contexts(
            model_cfg,
            params,
            prosg_cfg,
            deltas,
            prompts=prompts,
            prompt_lengths=prompt_lengths,
            contexts=contexts,
            context_lengths=context_lengths,
        )
    batch = prompts.shape[0]
    sampling = SamplingState(
        last_logits=last,
        state=state,
        done=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        stop_ids=stop_ids,
        key=key,
    )
    return sampling, deltas


def _cast_deltas(model_cfg: RWKVConfig, deltas: Deltas | None) -> Deltas | None:
    """The deltas' factors in the compute dtype (``apply_delta`` casts them anyway)."""
    if deltas is None:
        return None
    dt = model_cfg.compute_dtype
    return {name: d._replace(u=d.u.astype(dt), v=d.v.astype(dt)) for name, d in deltas.items()}


@functools.partial(
    jax.jit,
    static_argnames=("model_cfg", "n", "greedy", "top_k", "nucleus", "unroll"),
    donate_argnames=("sampling",),
)
def _decode(
    model_cfg, params, sampling, deltas, *, temperature, top_p, n, greedy, top_k, nucleus, unroll
):
    """:func:`decode_loop` over the model's forward with the deltas bound."""
    # Once per call, not per token: the weights and factors each step reads.
    params = cast_for_compute(model_cfg, params)
    deltas = _cast_deltas(model_cfg, deltas)

    def step(tokens, state):
        logits, state, _ = forward_core(model_cfg, params, tokens, state, deltas=deltas)
        return logits, state

    return decode_loop(
        step,
        sampling,
        temperature,
        top_p,
        n=n,
        greedy=greedy,
        top_k=top_k,
        nucleus=nucleus,
        unroll=unroll,
    )


# --------------------------------------------------------------------------- public API


def prefill(
    model_cfg: RWKVConfig,
    params: dict,
    prompts,
    prompt_lengths=None,
    *,
    method: str | None = None,
    prosg_cfg: ProSGConfig | None = None,
    sg_params: dict | None = None,
    contexts=None,
    context_lengths=None,
    stop_tokens=None,
    key: Array | None = None,
) -> tuple[SamplingState, Deltas | None]:
    """Reads the prompts (and contexts) and returns ``(SamplingState, deltas)``.

    Args:
      model_cfg, params: the base model.
      prompts: right-padded ``int32[B, P]`` (with ``prompt_lengths``) or a
        ragged list of id lists; every prompt needs at least one token.
      prompt_lengths: ``int32[B]``, with an array only.
      method: overrides ``prosg_cfg.method`` (``"none"``, ``"prosg"``,
        ``"true_grad"``, ``"repeat_prompt"``); ``None`` keeps it.
      prosg_cfg: how prompts become deltas; ``None`` is the plain model.
      sg_params: SG-module parameters (``method="prosg"`` only).
      contexts: optional tokens read after each prompt with the deltas in
        force (teacher forced), in the same forms as ``prompts``; may be empty.
      context_lengths: ``int32[B]``, with an array of contexts only.
      stop_tokens: ids that end a row: one collection for every row, or one
        per row; ``None``: none.
      key: PRNG key for sampling, kept in the state for :func:`decode_chunk`
        (``None``: a fixed ``jax.random.key(0)``; unused when greedy).

    Returns:
      The sampling state before the first generated token, and the deltas
      (``None`` for ``none``/``repeat_prompt``) to pass to :func:`decode_chunk`.
    """
    if sg_params is not None and prosg_cfg is None and method is None:
        raise ValueError("sg_params given without a ProSG method: pass method='prosg'")
    pc = method_config(prosg_cfg, method)
    check_params(model_cfg, params)
    check_sg_params(model_cfg, pc, sg_params)
    rows, lengths = right_padded(model_cfg, prompts, prompt_lengths)
    rows = _pad_columns(rows, bucket(rows.shape[1]))
    batch = rows.shape[0]
    if contexts is None:
        if context_lengths is not None:
            raise ValueError("context_lengths given without contexts")
        context_rows = context_row_lengths = None
    else:
        context_rows, context_row_lengths = right_padded(
            model_cfg,
            contexts,
            context_lengths,
            what="contexts",
            lengths_name="context_lengths",
            min_length=0,
        )
        if context_rows.shape[0] != batch:
            raise ValueError(f"contexts has {context_rows.shape[0]} rows, prompts {batch}")
        context_rows = jnp.asarray(_pad_columns(context_rows, bucket(context_rows.shape[1])))
        context_row_lengths = jnp.asarray(context_row_lengths)
    # Methods without learned or gradient deltas compile once, whatever the
    # other fields of their config.
    static_pc = pc if pc.method in ("prosg", "true_grad") else ProSGConfig(method=pc.method)
    return _prefill(
        model_cfg,
        params,
        sg_params if pc.method == "prosg" else None,
        static_pc,
        prompts=jnp.asarray(rows),
        prompt_lengths=jnp.asarray(lengths),
        contexts=context_rows,
        context_lengths=context_row_lengths,
        stop_ids=jnp.asarray(stop_matrix(model_cfg, stop_tokens, batch)),
        key=jax.random.key(0) if key is None else key,
    )


def _run_decode(model_cfg, params, sampling, deltas, *, n, temperature, top_k, top_p, unroll):
    check_count("unroll", unroll)
    return _decode(
        model_cfg,
        params,
        sampling,
        deltas,
        temperature=jnp.float32(max(temperature, 1e-6)),
        top_p=jnp.float32(top_p),
        n=int(n),
        greedy=temperature == 0,
        top_k=int(top_k),
        nucleus=top_p < 1,
        unroll=min(int(unroll), int(n)),
    )


def decode_chunk(
    model_cfg: RWKVConfig,
    params: dict,
    sampling: SamplingState,
    deltas: Deltas | None,
    *,
    n: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    unroll: int = 1,
) -> tuple[Int[Array, "B n"], SamplingState]:
    """Generates up to ``n`` more tokens per row and returns the advanced state.

    ``sampling`` is donated (do not reuse it); pass the returned state to the
    next call to continue. Rows that have stopped emit 0; the loop exits once
    every row has stopped. Temperature and ``top_p`` are traced, so changing
    them does not recompile. ``unroll`` tokens share one loop iteration: it
    changes speed and compile time, not the arithmetic (another compiled
    program may round floats differently; on an accelerator each iteration's
    exit test is a host round trip; time the choice with
    ``benchmarks/decode_bench.py --unroll 1,4``).

    Returns:
      ``(int32[B, n] tokens, SamplingState)``; ``state.lengths`` counts each
      row's tokens so far and ``state.done`` marks stopped rows.
    """
    check_count("n", n)
    check_params(model_cfg, params)
    check_sampling(model_cfg, temperature, top_k, top_p)
    if deltas is not None:
        check_deltas(model_cfg, deltas, sampling.done.shape[0])
    return _run_decode(
        model_cfg,
        params,
        sampling,
        deltas,
        n=n,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        unroll=unroll,
    )


def generate(
    model_cfg: RWKVConfig,
    params: dict,
    prompts,
    prompt_lengths=None,
    *,
    max_new_tokens: int,
    method: str | None = None,
    prosg_cfg: ProSGConfig | None = None,
    sg_params: dict | None = None,
    contexts=None,
    context_lengths=None,
    key: Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens=None,
    unroll: int = 1,
) -> Generation:
    """Batch generation after each prompt, under any ProSG method.

    Arguments as in :func:`prefill` and :func:`decode_chunk`, plus:

    Args:
      max_new_tokens: at most this many tokens per row (``G``).
      key: PRNG key, required when ``temperature > 0``.
      temperature: 0 for greedy decoding.
      top_k: sample only among the ``top_k`` most likely tokens (0: all).
      top_p: sample only within the smallest set of tokens whose probability
        mass reaches ``top_p`` (1: all).
      unroll: tokens per decode-loop iteration (see :func:`decode_chunk`).

    Returns:
      A :class:`Generation`: tokens ``[B, G]`` (0 after a row stops), per-row
      lengths (stop token included) and whether each row stopped.
    """
    check_count("max_new_tokens", max_new_tokens)
    check_sampling(model_cfg, temperature, top_k, top_p)
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    sampling, deltas = prefill(
        model_cfg,
        params,
        prompts,
        prompt_lengths,
        method=method,
        prosg_cfg=prosg_cfg,
        sg_params=sg_params,
        contexts=contexts,
        context_lengths=context_lengths,
        stop_tokens=stop_tokens,
        key=key,
    )
    tokens, sampling = _run_decode(
        model_cfg,
        params,
        sampling,
        deltas,
        n=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        unroll=unroll,
    )
    return Generation(tokens=tokens, lengths=sampling.lengths, stopped=sampling.done)
