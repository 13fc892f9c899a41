"""RWKV-4 as pure functions over a parameter pytree.

Numerics follow the reference ``rwkv`` package (``att_seq``/``ffn_seq``): the
WKV recurrence runs in float32 in log space (``a, b, p`` with ``p`` the running
maximum exponent), so long prompts never overflow.

Axis legend: ``B`` batch, ``T`` time, ``C`` d_model, ``F`` d_ffn, ``V`` vocab.

Parameter layout (official names in brackets)::

  emb.weight [V, C]                      (emb.weight)
  ln0.{weight,bias} [C]                  (blocks.0.ln0.*)
  blocks[i].ln1/ln2.{weight,bias} [C]
  blocks[i].att.time_decay [C]           raw; the decay is -exp(time_decay)
  blocks[i].att.time_first [C]
  blocks[i].att.time_mix_{k,v,r} [C]     ([1, 1, C] in checkpoints)
  blocks[i].att.{key,value,receptance,output}.weight [C, C]
  blocks[i].ffn.time_mix_{k,r} [C]
  blocks[i].ffn.key.weight [F, C], value.weight [C, F], receptance.weight [C, C]
  ln_out.{weight,bias} [C], head.weight [V, C]
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
    RWKV5_6_KEYS,
    SSM_FIELDS,
    TargetHooks,
    block_norm_layout,
    dense,
    layer_norm,
    ln_params,
    orthogonal,
    rwkv_common_fields,
    rwkv_target_shape,
    token_shift,
    trunk_layout,
    without_foreign_fields,
)
from prosg_jax.models.wkv import P_EMPTY
from prosg_jax.models.wkv import rwkv4 as wkv4


class LayerState(NamedTuple):
    """Recurrent state of one RWKV-4 block, all float32 ``[B, C]``.

    Attributes:
      att_x: last LayerNorm-ed input of the time-mix (token shift).
      att_a, att_b: WKV numerator and denominator, scaled by ``exp(-att_p)``.
      att_p: running maximum exponent.
      ffn_x: last LayerNorm-ed input of the channel-mix (token shift).
    """

    att_x: Float[Array, "B C"]
    att_a: Float[Array, "B C"]
    att_b: Float[Array, "B C"]
    att_p: Float[Array, "B C"]
    ffn_x: Float[Array, "B C"]


# Block matrices that are only ever multiplied in the compute dtype
# (``lm.cast_for_compute`` casts them once per decode call).
MATMUL_WEIGHTS = tuple(
    ("att", m, "weight") for m in ("key", "value", "receptance", "output")
) + tuple(("ffn", m, "weight") for m in ("key", "value", "receptance"))


def init_layer_state(cfg: RWKVConfig, batch_size: int) -> LayerState:
    # A buffer per field: a donating caller (the decode loop) may not alias them.
    shape = (batch_size, cfg.d_model)
    return LayerState(
        *(jnp.zeros(shape, jnp.float32) for _ in range(3)),
        jnp.full(shape, P_EMPTY, jnp.float32),
        jnp.zeros(shape, jnp.float32),
    )


def init_params(key: Array, cfg: RWKVConfig) -> dict:
    """BlinkDL's RWKV-4 initialisation (``RWKV-v4neo``), in float32."""
    c, f, v, n_layer = cfg.d_model, cfg.d_ffn, cfg.vocab_size, cfg.n_layer
    keys = jax.random.split(key, 3 + 2 * n_layer)
    ramp = jnp.arange(c, dtype=jnp.float32) / c  # channel position in [0, 1)
    blocks = []
    for i in range(n_layer):
        ratio_0_to_1 = i / max(n_layer - 1, 1)
        ratio_1_to_almost0 = 1.0 - i / n_layer
        h = jnp.arange(c, dtype=jnp.float32) / max(c - 1, 1)
        zigzag = (jnp.asarray([(j + 1) % 3 - 1 for j in range(c)], jnp.float32)) * 0.5
        k_att, k_ffn = keys[3 + 2 * i], keys[4 + 2 * i]
        blocks.append(
            {
                "ln1": ln_params(c),
                "ln2": ln_params(c),
                "att": {
                    "time_decay": -5.0 + 8.0 * h ** (0.7 + 1.3 * ratio_0_to_1),
                    "time_first": jnp.full((c,), math.log(0.3), jnp.float32) + zigzag,
                    "time_mix_k": ramp**ratio_1_to_almost0,
                    "time_mix_v": ramp**ratio_1_to_almost0 + 0.3 * ratio_0_to_1,
                    "time_mix_r": ramp ** (0.5 * ratio_1_to_almost0),
                    # BlinkDL zero-initialises key, receptance and output.
                    "key": {"weight": jnp.zeros((c, c), jnp.float32)},
                    "value": {"weight": orthogonal(k_att, (c, c), 1.0)},
                    "receptance": {"weight": jnp.zeros((c, c), jnp.float32)},
                    "output": {"weight": jnp.zeros((c, c), jnp.float32)},
                },
                "ffn": {
                    "time_mix_k": ramp**ratio_1_to_almost0,
                    "time_mix_r": ramp**ratio_1_to_almost0,
                    "key": {"weight": orthogonal(k_ffn, (f, c), math.sqrt(f / c) if f > c else 1)},
                    "value": {"weight": jnp.zeros((c, f), jnp.float32)},
                    "receptance": {"weight": jnp.zeros((c, c), jnp.float32)},
                },
            }
        )
    head_gain = 0.5 * (math.sqrt(v / c) if v > c else 1.0)
    return {
        "emb": {"weight": jax.random.uniform(keys[0], (v, c), jnp.float32, -1e-4, 1e-4)},
        "ln0": ln_params(c),
        "blocks": blocks,
        "ln_out": ln_params(c),
        "head": {"weight": orthogonal(keys[1], (v, c), head_gain)},
    }


def checkpoint_layout(cfg: RWKVConfig) -> list[tuple[str, tuple, tuple[int, ...]]]:
    """``(official key, path in our pytree, official shape)`` for every tensor."""
    c, f, v = cfg.d_model, cfg.d_ffn, cfg.vocab_size
    out = trunk_layout(c, v)
    for i in range(cfg.n_layer):
        pre = f"blocks.{i}."
        out += block_norm_layout(i, c)
        for leaf, shape in (
            ("time_decay", (c,)),
            ("time_first", (c,)),
            ("time_mix_k", (1, 1, c)),
            ("time_mix_v", (1, 1, c)),
            ("time_mix_r", (1, 1, c)),
        ):
            out.append((f"{pre}att.{leaf}", ("blocks", i, "att", leaf), shape))
        for mat in ("key", "value", "receptance", "output"):
            out.append((f"{pre}att.{mat}.weight", ("blocks", i, "att", mat, "weight"), (c, c)))
        for leaf in ("time_mix_k", "time_mix_r"):
            out.append((f"{pre}ffn.{leaf}", ("blocks", i, "ffn", leaf), (1, 1, c)))
        for mat, shape in (("key", (f, c)), ("value", (c, f)), ("receptance", (c, c))):
            out.append((f"{pre}ffn.{mat}.weight", ("blocks", i, "ffn", mat, "weight"), shape))
    return out


def _time_mix(cfg: RWKVConfig, p, x, state: LayerState, *, reset, name, hooks):
    sx = token_shift(x, state.att_x, reset)
    mk, mv, mr = (p[f"time_mix_{n}"].astype(x.dtype) for n in "kvr")
    k = dense(x * mk + sx * (1 - mk), p["key"]["weight"], f"{name}.key", hooks)
    v = dense(x * mv + sx * (1 - mv), p["value"]["weight"], f"{name}.value", hooks)
    r = jax.nn.sigmoid(
        dense(x * mr + sx * (1 - mr), p["receptance"]["weight"], f"{name}.receptance", hooks)
    )
    decay = -jnp.exp(p["time_decay"].astype(jnp.float32))
    y, (a, b, pp) = wkv4(
        decay,
        p["time_first"].astype(jnp.float32),
        k.astype(jnp.float32),
        v.astype(jnp.float32),
        (state.att_a, state.att_b, state.att_p),
        reset,
        impl=cfg.wkv_impl,
    )
    out = dense(r * y.astype(x.dtype), p["output"]["weight"], f"{name}.output", hooks)
    return out, (x[:, -1].astype(jnp.float32), a, b, pp)


def _channel_mix(p, x, prev, reset, *, name, hooks):
    sx = token_shift(x, prev, reset)
    mk, mr = (p[f"time_mix_{n}"].astype(x.dtype) for n in "kr")
    r = jax.nn.sigmoid(
        dense(x * mr + sx * (1 - mr), p["receptance"]["weight"], f"{name}.receptance", hooks)
    )
    k = jnp.square(
        jax.nn.relu(dense(x * mk + sx * (1 - mk), p["key"]["weight"], f"{name}.key", hooks))
    )
    out = r * dense(k, p["value"]["weight"], f"{name}.value", hooks)
    return out, x[:, -1].astype(jnp.float32)


def block(
    cfg: RWKVConfig,
    i: int,
    p: dict,
    x: Float[Array, "B T C"],
    *,
    state: LayerState,
    reset: Bool[Array, "B T"] | None = None,
    hooks: TargetHooks = NO_HOOKS,
    v_first: None = None,
) -> tuple[Float[Array, "B T C"], LayerState, None]:
    """One RWKV-4 block: ``(x, state, deltas) -> (y, state)``.

    ``reset`` marks tokens that start a new sequence; ``hooks`` carries the
    optional per-target deltas, output perturbations and input capture.
    ``v_first`` exists only so that both model versions share one block
    signature (RWKV-7 threads its first layer's values through the stack).
    """
    name = f"blocks.{i}"
    att, (att_x, a, b, pp) = _time_mix(
        cfg, p["att"], layer_norm(x, p["ln1"]), state, reset=reset, name=f"{name}.att", hooks=hooks
    )
    x = x + att
    ffn, ffn_x = _channel_mix(
        p["ffn"], layer_norm(x, p["ln2"]), state.ffn_x, reset, name=f"{name}.ffn", hooks=hooks
    )
    return x + ffn, LayerState(att_x, a, b, pp, ffn_x), v_first


def read_state(
    cfg: RWKVConfig, state: LayerState, q: Float[Array, "B P C"]
) -> Float[Array, "B P C"]:
    """The WKV memory's running average value, gated by each query."""
    del cfg
    mean_v = state.att_a / jnp.maximum(state.att_b, 1e-30)
    return mean_v[:, None, :] * q


def detect(keys) -> bool:
    """Whether a state dict's key names are RWKV-4's."""
    keys = list(keys)
    return any(".att.time_mix_k" in k for k in keys) and not any(
        s in k for k in keys for s in RWKV5_6_KEYS
    )


def _preset(
    *, head_size=None, d_decay_lora=0, d_aaa_lora=0, d_mv_lora=0, d_gate_lora=0, **fields
) -> RWKVConfig:
    # RWKV-4 has no heads or LoRAs: experiment configs may carry head_size,
    # run records carry every RWKVConfig field.
    return RWKVConfig.rwkv4(**without_foreign_fields("RWKV-4", fields, SSM_FIELDS, "Mamba-2"))


FAMILY = register(
    Family(
        version=4,
        name="RWKV-4",
        init_params=init_params,
        init_layer_state=init_layer_state,
        block=block,
        targets=(
            "att.key",
            "att.value",
            "att.receptance",
            "att.output",
            "ffn.key",
            "ffn.value",
            "ffn.receptance",
        ),
        target_shape=rwkv_target_shape,
        read_state=read_state,
        matmul_weights=MATMUL_WEIGHTS,
        preset=_preset,
        checkpoint_layout=checkpoint_layout,
        detect=detect,
        config_fields=lambda tensors, dim, n_layer, meta: rwkv_common_fields(dim),
    )
)
