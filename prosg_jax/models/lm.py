"""Version-independent language-model API over the RWKV blocks.

``forward`` (parallel over ``[B, T]``) and ``step`` (one token) share the
same block code; ``step`` is ``forward`` on a length-1 block, whose recurrence
runs without a loop (``layers.scan_time``), so the two are numerically the
same computation.

Axis legend: ``B`` batch, ``T`` time, ``V`` vocab.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from prosg_jax.config import RWKVConfig
from prosg_jax.models import rwkv4, rwkv7
from prosg_jax.models.layers import Deltas, layer_norm

State = tuple  # tuple of per-layer ``LayerState`` NamedTuples


def model_module(cfg: RWKVConfig) -> ModuleType:
    """The module (``rwkv4`` or ``rwkv7``) implementing ``cfg.version``."""
    return {4: rwkv4, 7: rwkv7}[cfg.version]


def init_params(key: Array, cfg: RWKVConfig) -> dict:
    """Freshly initialised float32 parameters (BlinkDL's scheme for the version)."""
    return model_module(cfg).init_params(key, cfg)


def init_state(cfg: RWKVConfig, batch_size: int) -> State:
    """The empty recurrent state for ``batch_size`` sequences (float32)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return model_module(cfg).init_state(cfg, batch_size)


def target_names(cfg: RWKVConfig) -> tuple[str, ...]:
    """Every linear map that accepts a low-rank delta, e.g. ``"blocks.0.att.key"``."""
    return tuple(f"blocks.{i}.{t}" for i in range(cfg.n_layer) for t in model_module(cfg).TARGETS)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_tokens(cfg: RWKVConfig, tokens, ndim: int, what: str = "tokens") -> None:
    """Raises ``ValueError`` for a wrong rank/dtype or ids outside ``[0, V)``.

    The range check needs concrete values; under ``jit`` only shape and dtype
    can be checked (the caller validated the ids before tracing).
    """
    shape = np.shape(tokens)
    if len(shape) != ndim:
        want = "[B, T]" if ndim == 2 else "[B]"
        raise ValueError(f"{what} must have shape {want}, got {shape}")
    if 0 in shape:
        raise ValueError(f"{what} must not be empty, got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ValueError(f"{what} must be integer token ids, got dtype {jnp.result_type(tokens)}")
    if _is_concrete(tokens):
        ids = np.asarray(tokens)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what} contain id {bad}, outside the vocabulary [0, {cfg.vocab_size})"
            )


def _check_state(cfg: RWKVConfig, state: Sequence, batch: int) -> None:
    if len(state) != cfg.n_layer:
        raise ValueError(f"state has {len(state)} layers, the model has {cfg.n_layer}")
    want = model_module(cfg).init_layer_state
    ref = jax.eval_shape(lambda: want(cfg, batch))
    for i, layer in enumerate(state):
        if type(layer).__name__ != type(ref).__name__ or len(layer) != len(ref):
            raise ValueError(f"state[{i}] is not an RWKV-{cfg.version} LayerState")
        for field, got, exp in zip(ref._fields, layer, ref, strict=True):
            if tuple(got.shape) != tuple(exp.shape):
                raise ValueError(
                    f"state[{i}].{field} has shape {tuple(got.shape)}, expected "
                    f"{tuple(exp.shape)} (batch {batch})"
                )


def forward_core(
    cfg: RWKVConfig,
    params: dict,
    tokens: Int[Array, "B T"],
    state: State,
    deltas: Deltas | None,
    positions: Int[Array, "B T"] | None,
    capture: bool,
) -> tuple[Float[Array, "B T V"], State, dict[str, Array]]:
    """The unchecked forward; with ``capture`` it also returns every target's inputs.

    The captured dict maps each target path (``"blocks.i.att.key"``) to its
    input ``[B, T, d_in]`` and ``"blocks.i.hidden"`` to the residual stream
    entering block ``i`` — all from this single pass.
    """
    impl = model_module(cfg)
    x = jnp.take(params["emb"]["weight"], tokens, axis=0).astype(jnp.float32)
    # ln0 on the gathered rows equals the reference's ln0 folded into `emb`.
    x = layer_norm(x, params["ln0"]).astype(cfg.compute_dtype)
    reset = None if positions is None else positions == 0
    taps: dict[str, Array] | None = {} if capture else None
    new_state, v_first = [], None
    for i, (p, s) in enumerate(zip(params["blocks"], state, strict=True)):
        x, s, v_first = impl.block(cfg, i, p, x, s, reset, deltas, taps, v_first)
        new_state.append(s)
    x = layer_norm(x, params["ln_out"])
    logits = jnp.einsum("btc,vc->btv", x, params["head"]["weight"].astype(x.dtype))
    return logits.astype(jnp.float32), tuple(new_state), taps or {}


_forward_jit = jax.jit(forward_core, static_argnames=("cfg", "capture"))


def forward(
    cfg: RWKVConfig,
    params: dict,
    tokens: Int[Array, "B T"],
    state: State | None = None,
    *,
    deltas: Deltas | None = None,
    positions: Int[Array, "B T"] | None = None,
) -> tuple[Float[Array, "B T V"], State]:
    """Parallel forward over a block of tokens.

    Args:
      cfg: model config.
      params: parameter pytree (see ``rwkv4``/``rwkv7`` for the layout).
      tokens: ``int32[B, T]`` token ids in ``[0, V)``.
      state: the state after the preceding tokens; ``None`` for a fresh start.
      deltas: optional per-example low-rank deltas keyed by target path
        (``target_names(cfg)``).
      positions: optional ``int32[B, T]`` index of each token within its
        sequence. The state resets before every token whose position is 0, so
        packed sequences never see each other and left padding (pads at
        position 0) leaves the real tokens untouched.

    Returns:
      ``(logits float32[B, T, V], state after the last token)``.
    """
    check_tokens(cfg, tokens, ndim=2)
    batch = np.shape(tokens)[0]
    if positions is not None and np.shape(positions) != np.shape(tokens):
        raise ValueError(
            f"positions shape {np.shape(positions)} != tokens shape {np.shape(tokens)}"
        )
    if state is None:
        state = init_state(cfg, batch)
    else:
        _check_state(cfg, state, batch)
    if deltas is not None:
        unknown = sorted(set(deltas) - set(target_names(cfg)))
        if unknown:
            raise ValueError(f"deltas name unknown target(s) {unknown[:3]}; see target_names(cfg)")
    logits, state, _ = _forward_jit(
        cfg,
        params,
        jnp.asarray(tokens, jnp.int32),
        state,
        deltas,
        None if positions is None else jnp.asarray(positions, jnp.int32),
        capture=False,
    )
    return logits, state


def step(
    cfg: RWKVConfig,
    params: dict,
    token: Int[Array, " B"],
    state: State,
    *,
    deltas: Deltas | None = None,
) -> tuple[Float[Array, "B V"], State]:
    """One generation step: logits for ``token`` and the advanced state."""
    check_tokens(cfg, token, ndim=1, what="token")
    logits, state = forward(cfg, params, jnp.asarray(token)[:, None], state, deltas=deltas)
    return logits[:, 0], state
