"""Batch generation: one jitted prefill, then a ``lax.scan`` decode loop.

Prompts of different lengths are left-padded; each pad sits at position 0, so
the model's reset-at-position-0 rule makes padding invisible and every row's
final state is exactly its prompt's state. Per-example low-rank deltas (ProSG)
are applied in both phases.

Axis legend: ``B`` batch, ``P`` prompt length, ``G`` generated tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from prosg_jax.config import RWKVConfig
from prosg_jax.models.layers import Deltas
from prosg_jax.models.lm import check_tokens, forward_core, init_state


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[Int[np.ndarray, "B P"], Int[np.ndarray, "B P"]]:
    """Left-pads ragged prompts; returns ``(tokens, positions)``.

    Positions count 0, 1, ... over each prompt's real tokens; pads get
    position 0 so that the state resets through them.

    Raises:
      ValueError: no prompts, or an empty prompt (nothing to condition on).
    """
    if not prompts:
        raise ValueError("left_pad needs at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty; every prompt needs >= 1 token")
    width = max(lengths)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    positions = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = np.asarray(p, np.int32)
        positions[i, width - len(p) :] = np.arange(len(p), dtype=np.int32)
    return tokens, positions


def _pick(logits: Array, key: Array, temperature: float, top_k: int) -> Array:
    """Greedy when ``temperature == 0``; otherwise (top-k) temperature sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def decode(
    cfg: RWKVConfig,
    params: dict,
    last_logits,
    state,
    deltas: Deltas | None,
    key: Array,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    eos_id: int | None,
) -> Int[Array, "B G"]:
    """The decode loop: a ``lax.scan`` of single steps from a prefilled state.

    ``last_logits`` ``[B, V]`` are the logits after the last prompt token. Call
    it under ``jit`` (as :func:`generate` and ``prosg.generate`` do).
    """

    def body(carry, key_t):
        last, state, done = carry
        tok = _pick(last, key_t, temperature, top_k)
        if eos_id is not None:  # finished rows keep emitting EOS
            tok = jnp.where(done, eos_id, tok)
            done = done | (tok == eos_id)
        logits, state, _ = forward_core(cfg, params, tok[:, None], state, deltas, None, False)
        return (logits[:, 0], state, done), tok

    done = jnp.zeros((last_logits.shape[0],), bool)
    _, out = jax.lax.scan(body, (last_logits, state, done), jax.random.split(key, max_new_tokens))
    return out.T


@functools.partial(
    jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_k", "eos_id")
)
def _generate(
    cfg, params, tokens, positions, deltas, key, max_new_tokens, temperature, top_k, eos_id
):
    logits, state, _ = forward_core(
        cfg, params, tokens, init_state(cfg, tokens.shape[0]), deltas, positions, capture=False
    )
    return decode(
        cfg,
        params,
        logits[:, -1],
        state,
        deltas,
        key,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
    )


def check_sampling_args(cfg: RWKVConfig, max_new_tokens, temperature, top_k, key) -> None:
    """Raises ``ValueError`` for sampling arguments that cannot work."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    if not 0 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k must be in [0, {cfg.vocab_size}], got {top_k}")


def generate(
    cfg: RWKVConfig,
    params: dict,
    tokens: Int[Array, "B P"],
    *,
    max_new_tokens: int,
    positions: Int[Array, "B P"] | None = None,
    deltas: Deltas | None = None,
    key: Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    eos_id: int | None = None,
) -> Int[Array, "B G"]:
    """Generates ``max_new_tokens`` tokens after each (left-padded) prompt.

    Args:
      cfg, params: the model.
      tokens: ``int32[B, P]`` prompts, left-padded (see :func:`left_pad`).
      max_new_tokens: number of tokens ``G`` to generate.
      positions: from :func:`left_pad`; ``None`` when no row is padded.
      deltas: optional per-example low-rank deltas, applied throughout.
      key: PRNG key, required when ``temperature > 0``.
      temperature: 0 for greedy decoding.
      top_k: sample only among the ``top_k`` most likely tokens (0: all).
      eos_id: once a row emits it, the row keeps emitting it.

    Returns:
      ``int32[B, G]`` generated ids.
    """
    check_tokens(cfg, tokens, ndim=2)
    check_sampling_args(cfg, max_new_tokens, temperature, top_k, key)
    if key is None:
        key = jax.random.key(0)  # unused by greedy decoding
    return _generate(
        cfg,
        params,
        jnp.asarray(tokens, jnp.int32),
        None if positions is None else jnp.asarray(positions, jnp.int32),
        deltas,
        key,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
        eos_id=eos_id,
    )
