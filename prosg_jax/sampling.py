"""Batch generation: one jitted prefill, one jitted ``lax.scan`` decode loop.

Prompts of different lengths are left-padded; each pad sits at position 0, so
the model's reset-at-position-0 rule makes padding invisible and every row's
final state is exactly its prompt's state. Per-example low-rank deltas (ProSG)
are applied in both phases.

The two phases meet in a :class:`SamplingState`, which ``decode`` takes with
donated buffers and returns advanced, so a long generation can be produced in
chunks without copying the recurrent state. ``prosg.generate`` builds the same
state from its own prefill (base model over the prompt, deltas afterwards).

Axis legend: ``B`` batch, ``P`` prompt length, ``G`` generated tokens, ``V`` vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from prosg_jax.config import RWKVConfig
from prosg_jax.models.layers import Deltas
from prosg_jax.models.lm import State, check_tokens, forward_core, init_state


@flax.struct.dataclass
class SamplingState:
    """Everything the decode loop carries between tokens.

    Attributes:
      last_logits: ``[B, V]`` logits for the next token.
      state: the model's recurrent state after the last token.
      done: ``[B]`` rows that have emitted ``eos_id``.
      key: PRNG key for the next sampling step.
    """

    last_logits: Float[Array, "B V"]
    state: State
    done: Bool[Array, " B"]
    key: Array


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


def _pick(logits: Array, key: Array, temperature: Array, greedy: bool, top_k: int) -> Array:
    """Greedy, or temperature sampling among exactly the ``top_k`` best (0: all)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if top_k:
        # Sampling among top_k's own indices keeps exactly k candidates even
        # when logits tie at the k-th value.
        values, indices = jax.lax.top_k(logits, top_k)
        choice = jax.random.categorical(key, values / temperature, axis=-1)
        return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def prefill(
    cfg: RWKVConfig,
    params: dict,
    tokens: Int[Array, "B P"],
    positions: Int[Array, "B P"] | None,
    deltas: Deltas | None,
    key: Array,
) -> SamplingState:
    """Reads the (left-padded) prompts in one parallel forward."""
    logits, state, _ = forward_core(
        cfg, params, tokens, init_state(cfg, tokens.shape[0]), deltas, positions, capture=False
    )
    return start_state(logits[:, -1], state, key)


def start_state(last_logits, state, key) -> SamplingState:
    """The sampling state right after a prompt, before any token is generated."""
    return SamplingState(
        last_logits=last_logits,
        state=state,
        done=jnp.zeros((last_logits.shape[0],), bool),
        key=key,
    )


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "max_new_tokens", "greedy", "top_k", "eos_id"),
    donate_argnames=("sampling",),
)
def decode(
    cfg: RWKVConfig,
    params: dict,
    sampling: SamplingState,
    deltas: Deltas | None,
    temperature: Float[Array, ""],
    *,
    max_new_tokens: int,
    greedy: bool,
    top_k: int,
    eos_id: int | None,
) -> tuple[Int[Array, "B G"], SamplingState]:
    """Generates ``max_new_tokens`` tokens with a ``lax.scan`` of single steps.

    ``sampling`` is donated: its buffers are reused for the returned state.
    ``temperature`` is traced, so changing it does not recompile.
    """

    def body(s: SamplingState, _):
        key, key_t = jax.random.split(s.key)
        tok = _pick(s.last_logits, key_t, temperature, greedy, top_k)
        done = s.done
        if eos_id is not None:  # finished rows keep emitting EOS
            tok = jnp.where(done, eos_id, tok)
            done = done | (tok == eos_id)
        logits, state, _ = forward_core(cfg, params, tok[:, None], s.state, deltas, None, False)
        return SamplingState(logits[:, 0], state, done, key), tok

    sampling, out = jax.lax.scan(body, sampling, None, length=max_new_tokens)
    return out.T, sampling


def check_sampling_args(
    cfg: RWKVConfig, max_new_tokens, temperature, top_k, key, eos_id=None
) -> None:
    """Raises ``ValueError`` for sampling arguments that cannot work."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    if not 0 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k must be in [0, {cfg.vocab_size}], got {top_k}")
    if eos_id is not None and not 0 <= eos_id < cfg.vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {cfg.vocab_size})")


def run_decode(
    cfg: RWKVConfig,
    params: dict,
    sampling: SamplingState,
    deltas: Deltas | None,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    eos_id: int | None,
) -> Int[Array, "B G"]:
    """:func:`decode` with the Python-level sampling arguments turned into jit arguments."""
    tokens, _ = decode(
        cfg,
        params,
        sampling,
        deltas,
        jnp.float32(max(temperature, 1e-6)),
        max_new_tokens=max_new_tokens,
        greedy=temperature == 0.0,
        top_k=int(top_k),
        eos_id=eos_id,
    )
    return tokens


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
    if positions is not None and np.shape(positions) != np.shape(tokens):
        raise ValueError(
            f"positions shape {np.shape(positions)} != tokens shape {np.shape(tokens)}"
        )
    check_sampling_args(cfg, max_new_tokens, temperature, top_k, key, eos_id)
    sampling = prefill(
        cfg,
        params,
        jnp.asarray(tokens, jnp.int32),
        None if positions is None else jnp.asarray(positions, jnp.int32),
        deltas,
        jax.random.key(0) if key is None else key,  # the key is unused by greedy decoding
    )
    return run_decode(
        cfg,
        params,
        sampling,
        deltas,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
    )
