"""Shared building blocks of the RWKV models: norms, token shift, dense layers.

All functions are pure and work on a leading batch axis ``B``, an optional
time axis ``T`` and a feature axis ``C``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from prosg_jax.lowrank import LowRankDelta, apply_delta

Deltas = Mapping[str, LowRankDelta]


def layer_norm(x: Float[Array, "... C"], p: Mapping[str, Array], eps: float = 1e-5) -> Array:
    """LayerNorm over the last axis, computed in float32 and cast back to ``x.dtype``."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * p["weight"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x.dtype)


def group_norm_heads(
    x: Float[Array, "... H N"], weight: Array, bias: Array, eps: float
) -> Float[Array, "... C"]:
    """GroupNorm with one group per head (``torch.nn.GroupNorm(H, C)``), flattened to C."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = ((xf - mean) * jax.lax.rsqrt(var + eps)).reshape(*x.shape[:-2], -1)
    return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def token_shift(
    x: Float[Array, "B T C"], prev: Float[Array, "B C"], reset: Bool[Array, "B T"] | None
) -> Float[Array, "B T C"]:
    """The previous token's features at every position.

    ``prev`` is the last features of the preceding chunk (the carried state).
    Where ``reset`` is set a new sequence starts, so there is no previous token
    and the shift yields zeros, exactly as for a fresh state.
    """
    shifted = jnp.concatenate([prev[:, None, :].astype(x.dtype), x[:, :-1]], axis=1)
    if reset is not None:
        shifted = jnp.where(reset[..., None], jnp.zeros((), x.dtype), shifted)
    return shifted


class TargetHooks(NamedTuple):
    """Optional per-target additions to the dense layers, keyed by target path.

    Each field is a pure, optional input: with every field ``None`` a dense
    layer is exactly ``x Wᵀ``.

    Attributes:
      deltas: per-example low-rank deltas; the layer adds ``scale (x V) Uᵀ``.
      perturb: additive output perturbations ``[B, T, O]``. Passed as zeros
        they change nothing, but the gradient of a loss with respect to them is
        the back-propagated error ``δ_t`` at the target's output, which with the
        captured inputs ``x_t`` gives every example's weight gradient
        ``Σ_t δ_t x_tᵀ`` in factored form from one backward pass.
      taps: when not None, every target's input (and each block's residual
        stream) is recorded here; a Python-level switch that costs nothing
        when off.
    """

    deltas: Deltas | None = None
    perturb: Mapping[str, Array] | None = None
    taps: dict[str, Array] | None = None


NO_HOOKS = TargetHooks()


def dense(
    x: Float[Array, "B *T I"], w: Float[Array, "O I"], name: str, hooks: TargetHooks
) -> Float[Array, "B *T O"]:
    """``x Wᵀ`` plus whatever ``hooks`` registers under ``name``.

    Args:
      x: inputs.
      w: weight in the PyTorch ``[d_out, d_in]`` orientation.
      name: the target's path, e.g. ``"blocks.3.att.key"``.
      hooks: optional deltas, output perturbations and input capture.
    """
    if hooks.taps is not None:
        hooks.taps[name] = x
    y = jnp.einsum("...i,oi->...o", x, w.astype(x.dtype))
    if hooks.deltas is not None and name in hooks.deltas:
        y = apply_delta(x, y, hooks.deltas[name])
    if hooks.perturb is not None and name in hooks.perturb:
        y = y + hooks.perturb[name].astype(y.dtype)
    return y


def scan_time(body, carry, xs):
    """Runs the recurrence ``body(carry, x_t) -> (carry, y_t)`` over a time-major ``xs``.

    A length-1 input (the decode step) calls ``body`` directly, so single-token
    generation pays for no loop; longer inputs use ``lax.scan``. Both paths run
    the same ``body``, which is what keeps decode and prefill numerically equal.
    """
    length = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if length == 1:
        carry, y = body(carry, jax.tree_util.tree_map(lambda a: a[0], xs))
        return carry, jax.tree_util.tree_map(lambda a: a[None], y)
    return jax.lax.scan(body, carry, xs)


def time_major(x: Array) -> Array:
    """``[B, T, ...] -> [T, B, ...]``."""
    return jnp.swapaxes(x, 0, 1)


def orthogonal(key: Array, shape: tuple[int, int], gain: float) -> Array:
    """Orthogonal init (``torch.nn.init.orthogonal_``); exact zeros when ``gain == 0``."""
    if gain == 0:
        return jnp.zeros(shape, jnp.float32)
    return jax.nn.initializers.orthogonal(scale=gain)(key, shape, jnp.float32)


def ln_params(c: int) -> dict[str, Array]:
    """Identity LayerNorm parameters."""
    return {"weight": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}


def trunk_layout(c: int, v: int) -> list[tuple[str, tuple, tuple[int, ...]]]:
    """Checkpoint layout of the parts every RWKV version shares: emb, ln0, ln_out, head."""
    return [
        ("emb.weight", ("emb", "weight"), (v, c)),
        ("blocks.0.ln0.weight", ("ln0", "weight"), (c,)),
        ("blocks.0.ln0.bias", ("ln0", "bias"), (c,)),
        ("ln_out.weight", ("ln_out", "weight"), (c,)),
        ("ln_out.bias", ("ln_out", "bias"), (c,)),
        ("head.weight", ("head", "weight"), (v, c)),
    ]


# Key fragments of RWKV-5/6 checkpoints (which also name `att.time_mix_k`):
# RWKV-4's detector excludes them and load_rwkv names them in its refusal.
RWKV5_6_KEYS = ("time_maa", ".ln_x.", "gate.weight", "time_faaaa")


# Fields of RWKVConfig that one family reads and the others ignore, each with
# the value it has when unused (a run record carries every field).
SSM_FIELDS = {"d_state": 0, "n_groups": 1, "d_conv": 4}
RWKV7_LORA_FIELDS = {"d_decay_lora": 0, "d_aaa_lora": 0, "d_mv_lora": 0, "d_gate_lora": 0}


def without_foreign_fields(name: str, fields: dict, foreign: dict, owner: str) -> dict:
    """``fields`` less ``foreign``, another family's (``owner``) fields; raises
    ``ValueError`` where one is set to something but its unused value, which a
    ``name`` model cannot use."""
    for key, unused in foreign.items():
        if fields.get(key, unused) != unused:
            raise ValueError(f"{name} has no {key} ({owner} only), got {key}={fields[key]}")
    return {k: v for k, v in fields.items() if k not in foreign}


def rwkv_common_fields(dim) -> dict[str, int]:
    """Vocabulary, width and FFN width of an official RWKV state dict (``dim(key, axis)``)."""
    return dict(
        vocab_size=dim("emb.weight", 0),
        d_model=dim("emb.weight", 1),
        d_ffn=dim("blocks.0.ffn.key.weight", 0),
    )


def rwkv_target_shape(cfg, matrix: str) -> tuple[int, int]:
    """``(d_out, d_in)`` of an RWKV block matrix: the FFN's two are ``F x C`` and
    ``C x F``, every time-mix projection ``C x C``."""
    c, f = cfg.d_model, cfg.d_ffn
    return {"ffn.key": (f, c), "ffn.value": (c, f)}.get(matrix, (c, c))


def block_norm_layout(i: int, c: int) -> list[tuple[str, tuple, tuple[int, ...]]]:
    """Checkpoint layout of block ``i``'s two LayerNorms."""
    return [
        (f"blocks.{i}.{ln}.{leaf}", ("blocks", i, ln, leaf), (c,))
        for ln in ("ln1", "ln2")
        for leaf in ("weight", "bias")
    ]
