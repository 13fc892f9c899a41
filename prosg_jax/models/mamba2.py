"""Mamba-2 (SSD) as pure functions over a parameter pytree.

Numerics follow ``transformers``' ``Mamba2ForCausalLM`` (its pure-PyTorch
path). One block::

    x += out_proj(RMSNormGated(SSD(silu(conv(xBC))), z))    with
    [z, xBC, dt] = in_proj(RMSNorm(x)),  xBC = [x, B, C]

and per head ``h`` (``P`` channels, state ``S ∈ R^{P×N}``), with
``Δ_t = softplus(dt_t + dt_bias)`` and ``A = -exp(A_log)``::

    S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_tᵀ,    y_t = S_t C_t + D x_t

in float32. The convolution (width ``K``) carries the last ``K - 1`` inputs,
the SSD recurrence the ``S`` of every head; both, with their two
implementations of the recurrence, are in :mod:`prosg_jax.models.ssd`. A
token whose position is 0 starts a sequence: the state before it
(convolution window and ``S``) is empty, also inside a chunk.

Axis legend: ``B`` batch, ``T`` time, ``C`` d_model, ``E`` inner width
(``d_ffn``), ``H`` heads, ``P`` head dim (``head_size``), ``G`` groups, ``N``
state size (``d_state``), ``K`` conv width (``d_conv``), ``D`` conv channels
(``E + 2GN``), ``V`` vocab.

Parameter layout (``transformers`` names without ``backbone.``)::

  emb.weight [V, C]  (embeddings), head.weight [V, C]  (lm_head), norm_f.weight [C]
  blocks[i].norm.weight [C]
  blocks[i].mixer.in_proj.weight [2E + 2GN + H, C], out_proj.weight [C, E]
  blocks[i].mixer.conv1d.weight [D, K] (official [D, 1, K]), conv1d.bias [D]
  blocks[i].mixer.{dt_bias, A_log, D} [H], norm.weight [E]
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
    RWKV7_LORA_FIELDS,
    TargetHooks,
    dense,
    without_foreign_fields,
)
from prosg_jax.models.ssd import causal_conv, ssd

VERSION = "mamba2"
_EPS = 1e-5  # every RMSNorm's eps (transformers' layer_norm_epsilon default)
_DT_MIN, _DT_MAX, _DT_FLOOR = 1e-3, 0.1, 1e-4  # time-step init range


class Dims(NamedTuple):
    """The widths of a Mamba-2 block."""

    inner: int  # E
    heads: int  # H
    head_dim: int  # P
    groups: int  # G
    state: int  # N
    conv: int  # D = E + 2GN, the convolved channels
    proj: int  # 2E + 2GN + H, in_proj's outputs


def dims(cfg: RWKVConfig) -> Dims:
    """The block widths ``cfg`` implies."""
    e, g, n = cfg.d_ffn, cfg.n_groups, cfg.d_state
    h = e // cfg.head_size
    return Dims(e, h, cfg.head_size, g, n, e + 2 * g * n, 2 * e + 2 * g * n + h)


class LayerState(NamedTuple):
    """Recurrent state of one Mamba-2 block (float32).

    Attributes:
      conv: ``[B, K-1, D]`` the convolution's last ``K - 1`` inputs, oldest first.
      ssm: ``[B, H, P, N]`` each head's state matrix.
    """

    conv: Float[Array, "B K1 D"]
    ssm: Float[Array, "B H P N"]


def init_layer_state(cfg: RWKVConfig, batch_size: int) -> LayerState:
    d = dims(cfg)
    return LayerState(
        jnp.zeros((batch_size, cfg.d_conv - 1, d.conv), jnp.float32),
        jnp.zeros((batch_size, d.heads, d.head_dim, d.state), jnp.float32),
    )


def _uniform(key, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)  # torch's default Linear / Conv1d init
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init_params(key: Array, cfg: RWKVConfig) -> dict:
    """``transformers``' Mamba-2 initialisation (S4D-real ``A``, log-uniform time
    steps), with the residual projections scaled by ``1/sqrt(n_layer)``."""
    c, v, k = cfg.d_model, cfg.vocab_size, cfg.d_conv
    d = dims(cfg)
    keys = iter(jax.random.split(key, 2 + 4 * cfg.n_layer))
    blocks = []
    for _ in range(cfg.n_layer):
        log_dt = jax.random.uniform(
            next(keys), (d.heads,), jnp.float32, math.log(_DT_MIN), math.log(_DT_MAX)
        )
        dt = jnp.maximum(jnp.exp(log_dt), _DT_FLOOR)
        mixer = {
            "in_proj": {"weight": _uniform(next(keys), (d.proj, c), c)},
            "conv1d": {
                "weight": _uniform(next(keys), (d.conv, k), k),
                "bias": jnp.zeros((d.conv,), jnp.float32),
            },
            "dt_bias": dt + jnp.log(-jnp.expm1(-dt)),  # softplus⁻¹(dt)
            "A_log": jnp.log(jnp.arange(1, d.heads + 1, dtype=jnp.float32)),
            "D": jnp.ones((d.heads,), jnp.float32),
            "norm": {"weight": jnp.ones((d.inner,), jnp.float32)},
            "out_proj": {
                "weight": _uniform(next(keys), (c, d.inner), d.inner) / math.sqrt(cfg.n_layer)
            },
        }
        blocks.append({"norm": {"weight": jnp.ones((c,), jnp.float32)}, "mixer": mixer})
    return {
        "emb": {"weight": 0.02 * jax.random.normal(next(keys), (v, c), jnp.float32)},
        "blocks": blocks,
        "norm_f": {"weight": jnp.ones((c,), jnp.float32)},
        "head": {"weight": _uniform(next(keys), (v, c), c)},
    }


# --------------------------------------------------------------------------- norms


def rms_norm(x: Float[Array, "... C"], weight: Array, eps: float = _EPS) -> Array:
    """RMSNorm over the last axis in float32, cast back to ``x.dtype``."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps)
    return (y * weight.astype(jnp.float32)).astype(x.dtype)


def gated_rms_norm(
    y: Float[Array, "B T E"], z: Float[Array, "B T E"], weight: Array, groups: int
) -> Float[Array, "B T E"]:
    """``RMSNorm(y · silu(z))`` over each of ``groups`` equal slices of the channels."""
    g = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
    g = g.reshape(*g.shape[:-1], groups, -1)
    g = g * jax.lax.rsqrt(jnp.square(g).mean(-1, keepdims=True) + _EPS)
    return (g.reshape(y.shape) * weight.astype(jnp.float32)).astype(y.dtype)


# --------------------------------------------------------------------------- block


def _heads(z: Array, groups: int, heads: int) -> Array:
    """``[B, T, G·N] -> [B, T, H, N]``: head ``h`` reads group ``h // (H / G)``."""
    bsz, t, _ = z.shape
    z = z.reshape(bsz, t, groups, 1, -1)
    return jnp.broadcast_to(z, (bsz, t, groups, heads // groups, z.shape[-1])).reshape(
        bsz, t, heads, -1
    )


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
    """One Mamba-2 block (``v_first`` is unused and passed through)."""
    d = dims(cfg)
    m = p["mixer"]
    name = f"blocks.{i}.mixer"
    bsz, t, _ = x.shape
    proj = dense(rms_norm(x, p["norm"]["weight"]), m["in_proj"]["weight"], f"{name}.in_proj", hooks)
    z, xbc, dt = jnp.split(proj, [d.inner, d.inner + d.conv], axis=-1)
    xbc, conv = causal_conv(xbc, m["conv1d"]["weight"], m["conv1d"]["bias"], state.conv, reset)
    xs, b, c = jnp.split(xbc.astype(jnp.float32), [d.inner, d.inner + d.groups * d.state], axis=-1)
    xs = xs.reshape(bsz, t, d.heads, d.head_dim)
    dt = jax.nn.softplus(dt.astype(jnp.float32) + m["dt_bias"].astype(jnp.float32))
    y, ssm = ssd(
        xs,
        dt,
        -jnp.exp(m["A_log"].astype(jnp.float32)),
        _heads(b, d.groups, d.heads),
        _heads(c, d.groups, d.heads),
        state.ssm,
        reset,
        impl=cfg.wkv_impl,
    )
    y = y + xs * m["D"].astype(jnp.float32)[:, None]
    y = gated_rms_norm(y.reshape(bsz, t, d.inner).astype(x.dtype), z, m["norm"]["weight"], d.groups)
    out = dense(y, m["out_proj"]["weight"], f"{name}.out_proj", hooks)
    return x + out, LayerState(conv, ssm), v_first


def read_state(
    cfg: RWKVConfig, state: LayerState, q: Float[Array, "B P C"]
) -> Float[Array, "B P C"]:
    """Each head's state read with a key cut from the query: ``S_h k_h``, ``k_h`` the
    ``h``-th ``N`` channels of the query repeated to ``H·N``; the ``E`` outputs are
    folded to ``C`` by averaging ``C``-wide slices (zero-padded)."""
    d = dims(cfg)
    bsz, n_q, c = q.shape
    keys = jnp.tile(q, (1, 1, -(-d.heads * d.state // c)))[..., : d.heads * d.state]
    y = jnp.einsum("bhpn,bqhn->bqhp", state.ssm, keys.reshape(bsz, n_q, d.heads, d.state))
    y = y.reshape(bsz, n_q, d.inner)
    folds = -(-d.inner // c)
    y = jnp.pad(y, ((0, 0), (0, 0), (0, folds * c - d.inner)))
    return y.reshape(bsz, n_q, folds, c).mean(axis=2)


def check_config(cfg: RWKVConfig) -> None:
    """Heads tile the inner width, groups tile the heads, a state and a window exist."""
    if cfg.d_state <= 0:
        raise ValueError("Mamba-2 needs a positive d_state (the SSM state size N)")
    if cfg.d_conv < 2:
        raise ValueError(f"Mamba-2 d_conv (the convolution width) must be >= 2, got {cfg.d_conv}")
    if cfg.d_ffn % cfg.head_size:
        raise ValueError(
            f"Mamba-2 d_ffn ({cfg.d_ffn}, the inner width) must be a multiple of head_size "
            f"({cfg.head_size})"
        )
    heads = cfg.d_ffn // cfg.head_size
    if heads % cfg.n_groups:
        raise ValueError(
            f"Mamba-2 n_groups ({cfg.n_groups}) must divide the {heads} heads (d_ffn / head_size)"
        )


def preset(
    *,
    vocab_size: int,
    d_model: int,
    n_layer: int,
    d_ffn: int | None = None,
    head_size: int = 64,
    d_state: int = 128,
    n_groups: int = 1,
    d_conv: int = 4,
    dtype: str = "float32",
    wkv_impl: str = "auto",
    **unused,
) -> RWKVConfig:
    """A Mamba-2 config; inner width ``2 · d_model`` unless given (``expand = 2``).

    ``unused``: RWKV-7's LoRA widths, which a run record carries; any set
    to something but 0 is refused.
    """
    unexpected = without_foreign_fields("Mamba-2", unused, RWKV7_LORA_FIELDS, "RWKV-7")
    if unexpected:
        raise TypeError(f"unexpected model field {next(iter(unexpected))!r}")
    return RWKVConfig(
        version=VERSION,
        vocab_size=vocab_size,
        d_model=d_model,
        n_layer=n_layer,
        d_ffn=d_ffn or 2 * d_model,
        head_size=head_size,
        d_state=d_state,
        n_groups=n_groups,
        d_conv=d_conv,
        dtype=dtype,
        wkv_impl=wkv_impl,
    )


# --------------------------------------------------------------------------- checkpoints

_PREFIX = "backbone.layers"


def checkpoint_layout(cfg: RWKVConfig) -> list[tuple[str, tuple, tuple[int, ...]]]:
    """``(transformers key, path in our pytree, official shape)`` for every tensor."""
    c, v, d = cfg.d_model, cfg.vocab_size, dims(cfg)
    out = [
        ("backbone.embeddings.weight", ("emb", "weight"), (v, c)),
        ("backbone.norm_f.weight", ("norm_f", "weight"), (c,)),
        ("lm_head.weight", ("head", "weight"), (v, c)),
    ]
    for i in range(cfg.n_layer):
        pre, mixer = f"{_PREFIX}.{i}.", ("blocks", i, "mixer")
        out.append((f"{pre}norm.weight", ("blocks", i, "norm", "weight"), (c,)))
        shapes = {
            "in_proj.weight": (d.proj, c),
            "conv1d.weight": (d.conv, 1, cfg.d_conv),
            "conv1d.bias": (d.conv,),
            "dt_bias": (d.heads,),
            "A_log": (d.heads,),
            "D": (d.heads,),
            "norm.weight": (d.inner,),
            "out_proj.weight": (c, d.inner),
        }
        for leaf, shape in shapes.items():
            out.append((f"{pre}mixer.{leaf}", mixer + tuple(leaf.split(".")), shape))
    return out


def canonical_tensors(tensors) -> dict:
    """``mamba_ssm``'s names (``backbone.embedding``) as ``transformers``'; a missing
    ``lm_head.weight`` is the tied embedding."""
    out = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in tensors.items()}
    if "lm_head.weight" not in out and "backbone.embeddings.weight" in out:
        out["lm_head.weight"] = out["backbone.embeddings.weight"]
    return out


# transformers config.json entries whose non-default values this module does not compute.
_FIXED = {
    "layer_norm_epsilon": _EPS,
    "time_step_limit": [0.0, float("inf")],
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "norm_before_gate": False,
}


def config_fields(tensors, dim, n_layer: int, meta: dict) -> dict:
    """Every width read off a state dict (``A_log`` gives ``H``, the gated norm
    ``E``, the convolution ``E + 2GN`` and ``K``) and ``meta``: the number of
    groups ``G`` (shapes only give ``G·N``; 1 when ``meta`` does not say)."""
    del tensors, n_layer
    for key, want in _FIXED.items():
        if (
            key in meta
            and meta[key] != want
            and not (isinstance(want, list) and list(meta[key]) == want)
        ):
            raise ValueError(f"Mamba-2 with {key}={meta[key]} is not supported (only {want})")
    pre = f"{_PREFIX}.0.mixer."
    inner, heads = dim(f"{pre}norm.weight", 0), dim(f"{pre}A_log", 0)
    groups = int(meta.get("n_groups", 1))
    grouped = dim(f"{pre}conv1d.weight", 0) - inner  # 2GN
    if inner % heads or grouped % (2 * groups):
        raise ValueError(
            f"inner width {inner}, {heads} heads and B/C width {grouped} do not fit "
            f"{groups} group(s)"
        )
    return dict(
        vocab_size=dim("backbone.embeddings.weight", 0),
        d_model=dim("backbone.embeddings.weight", 1),
        d_ffn=inner,
        head_size=inner // heads,
        d_state=grouped // (2 * groups),
        n_groups=groups,
        d_conv=dim(f"{pre}conv1d.weight", 2),
    )


def _norm_out(cfg, params, x):
    del cfg
    return rms_norm(x, params["norm_f"]["weight"])


FAMILY = register(
    Family(
        version=VERSION,
        name="Mamba-2",
        init_params=init_params,
        init_layer_state=init_layer_state,
        block=block,
        targets=("mixer.in_proj", "mixer.out_proj"),
        target_shape=lambda cfg, matrix: {
            "mixer.in_proj": (dims(cfg).proj, cfg.d_model),
            "mixer.out_proj": (cfg.d_model, cfg.d_ffn),
        }[matrix],
        read_state=read_state,
        matmul_weights=(("mixer", "in_proj", "weight"), ("mixer", "out_proj", "weight")),
        shape_fields=(
            "vocab_size",
            "d_model",
            "n_layer",
            "d_ffn",
            "head_size",
            "d_state",
            "n_groups",
            "d_conv",
        ),
        check_config=check_config,
        preset=preset,
        checkpoint_layout=checkpoint_layout,
        detect=lambda keys: any(".mixer.A_log" in k for k in keys),
        config_fields=config_fields,
        layer_prefix=_PREFIX,
        canonical_tensors=canonical_tensors,
        norm_in=lambda cfg, params, x: x,
        norm_out=_norm_out,
    )
)
