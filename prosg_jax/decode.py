"""The decode loop: one ``lax.while_loop`` over a one-token step function.

:func:`decode_loop` is model-agnostic: it samples each row's next token from
the logits it carries (greedy, temperature, top-k, top-p), feeds it to
``step``, and stops a row at its stop tokens; the loop exits once every row
has stopped. :mod:`prosg_jax.sampling` binds the model and its deltas into the
step. The argument checks here give the one-line errors of every decode entry.

Axis legend: ``B`` batch, ``S`` stop ids per row, ``V`` vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from prosg_jax.config import RWKVConfig
from prosg_jax.models.lm import State


@flax.struct.dataclass
class SamplingState:
    """Everything the decode loop carries between tokens.

    Attributes:
      last_logits: ``[B, V]`` logits for each row's next token.
      state: the model's recurrent state after each row's last token.
      done: ``[B]`` rows that have emitted a stop token.
      lengths: ``[B]`` tokens generated so far per row (stop token included).
      stop_ids: ``[B, S]`` each row's stop tokens (-1: unused slot).
      key: PRNG key for the next sampling step.
    """

    last_logits: Float[Array, "B V"]
    state: State
    done: Bool[Array, " B"]
    lengths: Int[Array, " B"]
    stop_ids: Int[Array, "B S"]
    key: Array


def stop_matrix(cfg: RWKVConfig, stop_tokens, batch: int) -> np.ndarray:
    """``int32[B, S]`` stop ids (-1: unused) from one shared set or one set per row."""
    if stop_tokens is None:
        rows = [[]] * batch
    elif isinstance(stop_tokens, int | np.integer):
        rows = [[stop_tokens]] * batch
    elif all(isinstance(t, int | np.integer) for t in stop_tokens):
        rows = [list(stop_tokens)] * batch
    elif len(stop_tokens) == batch and all(
        isinstance(r, Sequence | set | frozenset | np.ndarray)
        and all(isinstance(t, int | np.integer) for t in r)
        for r in stop_tokens
    ):
        rows = [list(r) for r in stop_tokens]
    else:
        raise ValueError(
            f"stop_tokens must be one collection of ids shared by every row or one per row "
            f"({batch} rows), got {stop_tokens!r}"
        )
    flat = [int(t) for r in rows for t in r]
    bad = [t for t in flat if not 0 <= t < cfg.vocab_size]
    if bad:
        raise ValueError(f"stop token {bad[0]} is outside the vocabulary [0, {cfg.vocab_size})")
    # A multiple of 4 slots: a few more ids rarely changes the compiled shape.
    width = 4 * max(1, math.ceil(max(len(r) for r in rows) / 4))
    out = np.full((batch, width), -1, np.int32)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


def _is_real(x) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def check_sampling(cfg: RWKVConfig, temperature, top_k, top_p) -> None:
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not isinstance(top_k, int | np.integer) or not 0 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k must be an int in [0, {cfg.vocab_size}], got {top_k!r}")
    if not _is_real(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


# Tokens one call may generate per row: its [B, n] output is allocated up front.
MAX_NEW_TOKENS = 1 << 24


def check_count(name: str, n) -> None:
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or not 0 < n <= MAX_NEW_TOKENS:
        raise ValueError(f"{name} must be an int in [1, {MAX_NEW_TOKENS:,}], got {n!r}")


def pick(
    logits: Float[Array, "B V"],
    key: Array,
    temperature: Float[Array, ""],
    top_p: Float[Array, ""],
    *,
    greedy: bool,
    top_k: int,
    nucleus: bool,
) -> Int[Array, " B"]:
    """Greedy, or sampling at ``temperature`` among the ``top_k`` best (0: all) within
    the smallest set of mass >= ``top_p`` (when ``nucleus``)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if not (top_k or nucleus):
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    # Sorted candidates; sampling among their own indices keeps exactly k of
    # them even when logits tie at the k-th value.
    values, indices = jax.lax.top_k(logits, top_k or logits.shape[-1])
    if nucleus:
        probs = jax.nn.softmax(values, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the better candidates
        values = jnp.where(before < top_p, values, -jnp.inf)  # the best always stays
    choice = jax.random.categorical(key, values, axis=-1)
    return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


StepFn = Callable[[Int[Array, "B 1"], State], tuple[Float[Array, "B 1 V"], State]]


def decode_loop(
    step: StepFn,
    sampling: SamplingState,
    temperature: Float[Array, ""],
    top_p: Float[Array, ""],
    *,
    n: int,
    greedy: bool,
    top_k: int,
    nucleus: bool,
    unroll: int,
) -> tuple[Int[Array, "B n"], SamplingState]:
    """Up to ``n`` tokens per row from ``step``, ``unroll`` tokens per loop
    iteration; stops early once every row is done.

    ``step(tokens [B, 1], state) -> (logits [B, 1, V], state)`` is one token
    of the model, whatever binds it (weights, deltas). Each token of an
    iteration is guarded (``live``): past ``n`` or after every row has
    stopped it changes nothing, not even the PRNG key, so every ``unroll``
    runs the same token steps as ``unroll=1``.
    """

    def token(i, s, out):
        live = (i < n) & ~jnp.all(s.done)
        key, key_t = jax.random.split(s.key)
        active = ~s.done & live
        tok = pick(
            s.last_logits, key_t, temperature, top_p, greedy=greedy, top_k=top_k, nucleus=nucleus
        )
        tok = jnp.where(active, tok, 0)
        out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
        logits, state = step(tok[:, None], s.state)

        def keep(new, old):  # a stopped row keeps its state as of its stop token
            return jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        return SamplingState(
            last_logits=keep(logits[:, 0], s.last_logits),
            state=jax.tree.map(keep, state, s.state),
            done=s.done | (active & jnp.any(tok[:, None] == s.stop_ids, axis=1)),
            lengths=s.lengths + active.astype(jnp.int32),
            stop_ids=s.stop_ids,
            key=jnp.where(live, key, s.key),
        ), out

    def cond(carry):
        i, s, _ = carry
        return (i < n) & ~jnp.all(s.done)

    def body(carry):
        i, s, out = carry
        for j in range(unroll):
            s, out = token(i + j, s, out)
        return i + unroll, s, out

    # Columns past n take the writes of an unrolled iteration's guarded tail.
    width = -(-n // unroll) * unroll
    out = jnp.zeros((sampling.done.shape[0], width), jnp.int32)
    _, sampling, out = jax.lax.while_loop(cond, body, (jnp.int32(0), sampling, out))
    return out[:, :n], sampling
