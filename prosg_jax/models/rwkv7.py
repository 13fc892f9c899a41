"""RWKV-7 ("Goose") as pure functions over a parameter pytree.

Numerics follow the reference ``rwkv`` package (``RWKV_x070_TMix_seq`` /
``RWKV_x070_CMix_seq``, fp32 CPU path). Each head keeps a matrix-valued state
``S ∈ R^{N×N}`` (rows: value channels, columns: key channels) updated by the
generalized delta rule::

    S_t = S_{t-1} diag(w_t) + (S_{t-1} (-κ_t)) (κ_t ⊙ a_t)ᵀ + v_t k_tᵀ,   y_t = S_t r_t

in float32 (``prosg_jax.models.wkv``). Only this recurrence carries state through
time; every projection is one matmul over the whole ``[B, T]`` block.

Axis legend: ``B`` batch, ``T`` time, ``C`` d_model, ``H`` heads, ``N`` head
size, ``F`` d_ffn, ``D*`` low-rank widths, ``V`` vocab.

Parameter layout (official names, ``[1, 1, C]`` vectors squeezed to ``[C]``)::

  emb.weight [V, C], ln0 [C] (blocks.0.ln0), ln_out [C], head.weight [V, C]
  blocks[i].ln1/ln2.{weight,bias} [C]
  blocks[i].att.x_{r,w,k,v,a,g} [C]
  blocks[i].att.w0 [C], w1 [C, Dw], w2 [Dw, C]      decay
  blocks[i].att.a0 [C], a1 [C, Da], a2 [Da, C]      in-context learning rate
  blocks[i].att.v0 [C], v1 [C, Dv], v2 [Dv, C]      value residual (i > 0 only)
  blocks[i].att.g1 [C, Dg], g2 [Dg, C]              output gate
  blocks[i].att.k_k [C], k_a [C], r_k [H, N]
  blocks[i].att.{receptance,key,value,output}.weight [C, C]
  blocks[i].att.ln_x.{weight,bias} [C]
  blocks[i].ffn.x_k [C], key.weight [F, C], value.weight [C, F]
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from prosg_jax.config import RWKVConfig
from prosg_jax.models.family import Family, register
from prosg_jax.models.layers import (
    NO_HOOKS,
    SSM_FIELDS,
    TargetHooks,
    block_norm_layout,
    dense,
    group_norm_heads,
    layer_norm,
    ln_params,
    orthogonal,
    rwkv_common_fields,
    rwkv_target_shape,
    token_shift,
    trunk_layout,
    without_foreign_fields,
)
from prosg_jax.models.wkv import rwkv7 as wkv7

_LN_X_EPS = 64e-5  # the reference GroupNorm eps (not torch's default)
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's eps
_DECAY_SCALE = math.exp(-0.5)  # w = exp(-e^{-1/2} σ(·)) keeps every decay in (e^{-0.61}, 1)
_MIX = ("r", "w", "k", "v", "a", "g")
# Block matrices that are only ever multiplied in the compute dtype
# (``lm.cast_for_compute`` casts them once per decode call).
MATMUL_WEIGHTS = (
    tuple(("att", m, "weight") for m in ("receptance", "key", "value", "output"))
    + tuple(("att", f"{m}{j}") for m in "wagv" for j in (1, 2))
    + (
        ("ffn", "key", "weight"),
        ("ffn", "value", "weight"),
    )
)


class LayerState(NamedTuple):
    """Recurrent state of one RWKV-7 block (float32).

    Attributes:
      att_x: ``[B, C]`` last LayerNorm-ed time-mix input (token shift).
      wkv: ``[B, H, N, N]`` per-head state, rows = value, columns = key channels.
      ffn_x: ``[B, C]`` last LayerNorm-ed channel-mix input.
    """

    att_x: Float[Array, "B C"]
    wkv: Float[Array, "B H N N"]
    ffn_x: Float[Array, "B C"]


def init_layer_state(cfg: RWKVConfig, batch_size: int) -> LayerState:
    # A buffer per field: a donating caller (the decode loop) may not alias them.
    c, h, n = cfg.d_model, cfg.n_head, cfg.head_size
    return LayerState(
        jnp.zeros((batch_size, c), jnp.float32),
        jnp.zeros((batch_size, h, n, n), jnp.float32),
        jnp.zeros((batch_size, c), jnp.float32),
    )


def _ortho_lora(key, shape, scale):
    gain = math.sqrt(shape[0] / shape[1]) if shape[0] > shape[1] else 1.0
    return orthogonal(key, shape, gain * scale)


def init_params(key: Array, cfg: RWKVConfig) -> dict:
    """BlinkDL's RWKV-7 initialisation (``RWKV-v7/train_temp``), in float32."""
    c, f, v, n_layer, n = cfg.d_model, cfg.d_ffn, cfg.vocab_size, cfg.n_layer, cfg.head_size
    keys = iter(jax.random.split(key, 2 + 8 * n_layer))
    ddd = jnp.arange(c, dtype=jnp.float32) / c
    idx = jnp.arange(c, dtype=jnp.float32)
    linear = idx / (c - 1) - 0.5
    zigzag = ((idx % n) - (n - 1) / 2) / ((n - 1) / 2)
    zigzag = zigzag * jnp.abs(zigzag)
    blocks = []
    for i in range(n_layer):
        ratio_0_to_1 = i / max(n_layer - 1, 1)
        ratio_1_to_almost0 = 1.0 - i / n_layer
        mix_power = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}
        att = {f"x_{m}": 1.0 - ddd ** (mix_power[m] * ratio_1_to_almost0) for m in _MIX}
        www = -6.0 + 6.0 * (idx / (c - 1)) ** (1 + ratio_0_to_1**0.3)
        att.update(
            w0=www + 0.5 + zigzag * 2.5,
            w1=jnp.zeros((c, cfg.d_decay_lora), jnp.float32),
            w2=_ortho_lora(next(keys), (cfg.d_decay_lora, c), 0.1),
            a0=-0.19 + zigzag * 0.3 + linear * 0.4,
            a1=jnp.zeros((c, cfg.d_aaa_lora), jnp.float32),
            a2=_ortho_lora(next(keys), (cfg.d_aaa_lora, c), 0.1),
            g1=jnp.zeros((c, cfg.d_gate_lora), jnp.float32),
            g2=_ortho_lora(next(keys), (cfg.d_gate_lora, c), 0.1),
            k_k=0.71 - linear * 0.1,
            k_a=jnp.full((c,), 1.02, jnp.float32),
            r_k=jnp.full((cfg.n_head, n), -0.04, jnp.float32),
            receptance={"weight": orthogonal(next(keys), (c, c), 1.0)},
            key={"weight": orthogonal(next(keys), (c, c), 0.1)},
            value={"weight": orthogonal(next(keys), (c, c), 1.0)},
            output={"weight": jnp.zeros((c, c), jnp.float32)},
            ln_x={
                "weight": jnp.full((c,), ((1 + i) / n_layer) ** 0.7, jnp.float32),
                "bias": jnp.zeros((c,), jnp.float32),
            },
        )
        mv_key = next(keys)
        if i > 0:  # layer 0 defines v_first and has no value residual
            att.update(
                v0=0.73 - linear * 0.4,
                v1=jnp.zeros((c, cfg.d_mv_lora), jnp.float32),
                v2=_ortho_lora(mv_key, (cfg.d_mv_lora, c), 0.1),
            )
        ffn = {
            "x_k": 1.0 - ddd ** (ratio_1_to_almost0**4),
            "key": {"weight": orthogonal(next(keys), (f, c), 1.0)},
            "value": {"weight": jnp.zeros((c, f), jnp.float32)},
        }
        blocks.append({"ln1": ln_params(c), "ln2": ln_params(c), "att": att, "ffn": ffn})
    head_gain = 0.5 * (math.sqrt(v / c) if v > c else 1.0)
    return {
        "emb": {"weight": jax.random.uniform(next(keys), (v, c), jnp.float32, -1e-4, 1e-4)},
        "ln0": ln_params(c),
        "blocks": blocks,
        "ln_out": ln_params(c),
        "head": {"weight": orthogonal(next(keys), (v, c), head_gain)},
    }


def checkpoint_layout(cfg: RWKVConfig) -> list[tuple[str, tuple, tuple[int, ...]]]:
    """``(official key, path in our pytree, official shape)`` for every tensor.

    Official checkpoints may also hold ``blocks.0.att.v0/v1/v2``, which the
    model never uses; the loader accepts and drops them.
    """
    c, f, v = cfg.d_model, cfg.d_ffn, cfg.vocab_size
    vec = (1, 1, c)
    out = trunk_layout(c, v)
    for i in range(cfg.n_layer):
        pre = f"blocks.{i}."
        att = ("blocks", i, "att")
        out += block_norm_layout(i, c)
        shapes = {f"x_{m}": vec for m in _MIX}
        lora = {"w": cfg.d_decay_lora, "a": cfg.d_aaa_lora, "g": cfg.d_gate_lora}
        if i > 0:
            lora["v"] = cfg.d_mv_lora
        for m, d in lora.items():
            if m != "g":
                shapes[f"{m}0"] = vec
            shapes[f"{m}1"] = (c, d)
            shapes[f"{m}2"] = (d, c)
        shapes.update(k_k=vec, k_a=vec, r_k=(cfg.n_head, cfg.head_size))
        for leaf, shape in shapes.items():
            out.append((f"{pre}att.{leaf}", att + (leaf,), shape))
        for mat in ("receptance", "key", "value", "output"):
            out.append((f"{pre}att.{mat}.weight", att + (mat, "weight"), (c, c)))
        for leaf in ("weight", "bias"):
            out.append((f"{pre}att.ln_x.{leaf}", att + ("ln_x", leaf), (c,)))
        out.append((f"{pre}ffn.x_k", ("blocks", i, "ffn", "x_k"), vec))
        out.append((f"{pre}ffn.key.weight", ("blocks", i, "ffn", "key", "weight"), (f, c)))
        out.append((f"{pre}ffn.value.weight", ("blocks", i, "ffn", "value", "weight"), (c, f)))
    return out


def _lora(x, p, m):
    return (x @ p[f"{m}1"].astype(x.dtype)) @ p[f"{m}2"].astype(x.dtype)


def _time_mix(cfg: RWKVConfig, i, p, x, *, state: LayerState, reset, v_first, name, hooks):
    bsz, t, c = x.shape
    h, n = cfg.n_head, cfg.head_size
    dt = x.dtype
    xx = token_shift(x, state.att_x, reset) - x
    xr, xw, xk, xv, xa, xg = (x + xx * p[f"x_{m}"].astype(dt) for m in _MIX)

    r = dense(xr, p["receptance"]["weight"], f"{name}.receptance", hooks)
    k = dense(xk, p["key"]["weight"], f"{name}.key", hooks)
    v = dense(xv, p["value"]["weight"], f"{name}.value", hooks)
    w = jnp.tanh(xw @ p["w1"].astype(dt)) @ p["w2"].astype(dt)
    a = jax.nn.sigmoid(p["a0"].astype(dt) + _lora(xa, p, "a"))
    g = jax.nn.sigmoid(xg @ p["g1"].astype(dt)) @ p["g2"].astype(dt)

    kk = (k * p["k_k"].astype(dt)).reshape(bsz, t, h, n).astype(jnp.float32)
    kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), _NORM_EPS)
    k = k * (1 + (a - 1) * p["k_a"].astype(dt))
    if i == 0:
        v_first = v
    else:
        v = v + (v_first - v) * jax.nn.sigmoid(p["v0"].astype(dt) + _lora(xv, p, "v"))
    log_w = -_DECAY_SCALE * jax.nn.sigmoid((p["w0"].astype(dt) + w).astype(jnp.float32))

    def heads(z):
        return z.reshape(bsz, t, h, n).astype(jnp.float32)

    y, wkv = wkv7(
        heads(r),
        heads(log_w),
        heads(k),
        heads(v),
        kk,
        heads(a),
        state.wkv,
        reset,
        impl=cfg.wkv_impl,
    )
    y = group_norm_heads(y.astype(dt), p["ln_x"]["weight"], p["ln_x"]["bias"], _LN_X_EPS)
    bonus = (heads(r) * heads(k) * p["r_k"].astype(jnp.float32)).sum(-1, keepdims=True)
    y = y + (bonus * heads(v)).reshape(bsz, t, c).astype(dt)
    out = dense(y * g, p["output"]["weight"], f"{name}.output", hooks)
    return out, x[:, -1].astype(jnp.float32), wkv, v_first


def _channel_mix(p, x, prev, reset, *, name, hooks):
    xx = token_shift(x, prev, reset) - x
    k = x + xx * p["x_k"].astype(x.dtype)
    k = jnp.square(jax.nn.relu(dense(k, p["key"]["weight"], f"{name}.key", hooks)))
    return dense(k, p["value"]["weight"], f"{name}.value", hooks), x[:, -1].astype(jnp.float32)


def block(
    cfg: RWKVConfig,
    i: int,
    p: dict,
    x: Float[Array, "B T C"],
    *,
    state: LayerState,
    reset: Bool[Array, "B T"] | None = None,
    hooks: TargetHooks = NO_HOOKS,
    v_first: Float[Array, "B T C"] | None = None,
) -> tuple[Float[Array, "B T C"], LayerState, Float[Array, "B T C"]]:
    """One RWKV-7 block: ``(x, state, deltas, v_first) -> (y, state, v_first)``.

    ``reset`` marks tokens that start a new sequence; ``hooks`` carries the
    optional per-target deltas, output perturbations and input capture;
    ``v_first`` is layer 0's values (``None`` entering layer 0).
    """
    name = f"blocks.{i}"
    att, att_x, wkv, v_first = _time_mix(
        cfg,
        i,
        p["att"],
        layer_norm(x, p["ln1"]),
        state=state,
        reset=reset,
        v_first=v_first,
        name=f"{name}.att",
        hooks=hooks,
    )
    x = x + att
    ffn, ffn_x = _channel_mix(
        p["ffn"], layer_norm(x, p["ln2"]), state.ffn_x, reset, name=f"{name}.ffn", hooks=hooks
    )
    return x + ffn, LayerState(att_x, wkv, ffn_x), v_first


def read_state(
    cfg: RWKVConfig, state: LayerState, q: Float[Array, "B P C"]
) -> Float[Array, "B P C"]:
    """Each head's state matrix applied to the query: ``S q`` per head."""
    b, p, _ = q.shape
    qh = q.reshape(b, p, cfg.n_head, cfg.head_size)
    return jnp.einsum("bhvk,bphk->bphv", state.wkv, qh).reshape(b, p, -1)


def check_config(cfg: RWKVConfig) -> None:
    """Heads must tile the width, and every LoRA needs a width."""
    if cfg.d_model % cfg.head_size:
        raise ValueError(
            f"RWKV-7 d_model ({cfg.d_model}) must be a multiple of head_size ({cfg.head_size})"
        )
    for name in ("d_decay_lora", "d_aaa_lora", "d_mv_lora", "d_gate_lora"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"RWKV-7 config needs a positive {name}")


def config_fields(tensors, dim, n_layer: int, meta: dict) -> dict:
    """Widths, head size and LoRA widths read off an official state dict."""
    del meta  # every field shows in a shape
    # Layer 0 has no value-residual LoRA; a one-layer model keeps the default.
    mv_key = "blocks.1.att.v1" if n_layer > 1 else "blocks.0.att.v1"
    return dict(
        **rwkv_common_fields(dim),
        head_size=dim("blocks.0.att.r_k", 1),
        d_decay_lora=dim("blocks.0.att.w1", 1),
        d_aaa_lora=dim("blocks.0.att.a1", 1),
        d_mv_lora=dim(mv_key, 1) if mv_key in tensors else 32,
        d_gate_lora=dim("blocks.0.att.g1", 1),
    )


FAMILY = register(
    Family(
        version=7,
        name="RWKV-7",
        init_params=init_params,
        init_layer_state=init_layer_state,
        block=block,
        targets=("att.key", "att.value", "att.receptance", "att.output", "ffn.key", "ffn.value"),
        target_shape=rwkv_target_shape,
        read_state=read_state,
        matmul_weights=MATMUL_WEIGHTS,
        shape_fields=(
            "vocab_size",
            "d_model",
            "n_layer",
            "d_ffn",
            "head_size",
            "d_decay_lora",
            "d_aaa_lora",
            "d_mv_lora",
            "d_gate_lora",
        ),
        check_config=check_config,
        preset=lambda **fields: RWKVConfig.rwkv7(
            **without_foreign_fields("RWKV-7", fields, SSM_FIELDS, "Mamba-2")
        ),
        checkpoint_layout=checkpoint_layout,
        detect=lambda keys: any(".att.r_k" in k or ".att.x_r" in k for k in keys),
        config_fields=config_fields,
        # Layer 0's value-residual LoRA exists in official files but is never used.
        ignored_keys=frozenset(("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")),
    )
)
