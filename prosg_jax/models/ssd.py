"""The Mamba-2 recurrences: the short causal convolution and the SSD state-space scan.

Everything around them (projections, norms, deltas) is parallel over ``[B, T]``;
only these carry state through time. The SSD recurrence has two
implementations that agree to float32 rounding (``RWKVConfig.wkv_impl``):

* ``"scan"``: token by token, a ``lax.scan`` (the oracle);
* ``"chunked"`` (``"auto"`` for ``T > 1``): inside a chunk of ``CHUNK`` tokens,
  matmuls; across chunks a ``lax.scan`` over the states, the chunk body
  rematerialised in backward (``jax.checkpoint``).

A single token always runs the per-token body, without a loop. A sequence may
restart anywhere (``reset[b, t]``), also inside a chunk; ``T`` need not be a
multiple of the chunk (the front is padded with steps that leave the state
unchanged).

Axis legend: ``B`` batch, ``T`` time, ``H`` heads, ``P`` head dim, ``N`` state
size, ``D`` convolved channels, ``K`` conv width, ``L``/``S`` chunk positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from prosg_jax.config import WKV_IMPLS
from prosg_jax.models.layers import scan_time, time_major
from prosg_jax.models.wkv import from_chunks, to_chunks

CHUNK = 64  # tokens per SSD chunk


# --------------------------------------------------------------------------- convolution


def _last_reset(reset: Bool[Array, "B T"], k: int) -> Array:
    """``int32[B, T]``: the index of the latest reset at or before each token, or
    ``-k`` (before anything the window can see) where there is none."""
    t = reset.shape[1]
    return jax.lax.cummax(jnp.where(reset, jnp.arange(t), -k), axis=1)


def causal_conv(
    x: Float[Array, "B T D"],
    weight: Float[Array, "D K"],
    bias: Float[Array, " D"],
    prev: Float[Array, "B K1 D"],
    reset: Bool[Array, "B T"] | None,
) -> tuple[Float[Array, "B T D"], Float[Array, "B K1 D"]]:
    """The depthwise causal convolution (with ``silu``) and its next state.

    Token ``t`` sees inputs ``t-K+1 … t`` (the earliest from ``prev``) that
    belong to its own sequence: inputs before a reset count as zeros, as in a
    fresh state.
    """
    bsz, t, _ = x.shape
    k = weight.shape[1]
    full = jnp.concatenate([prev.astype(x.dtype), x], axis=1)  # [B, K-1+T, D]
    last = None if reset is None else _last_reset(reset, k)
    out = bias.astype(jnp.float32)
    for j in range(k):  # tap j reads input t - j
        tap = full[:, k - 1 - j : k - 1 - j + t].astype(jnp.float32)
        if last is not None:
            tap = jnp.where((jnp.arange(t) - j >= last)[..., None], tap, 0.0)
        out = out + tap * weight[:, k - 1 - j].astype(jnp.float32)
    kept = full[:, t:].astype(jnp.float32)  # the last K-1 inputs
    if last is not None:
        index = jnp.arange(t - (k - 1), t)  # their indices in this block (< 0: from prev)
        kept = jnp.where((index >= last[:, -1:])[..., None], kept, 0.0)
    return jax.nn.silu(out).astype(x.dtype), kept


# --------------------------------------------------------------------------- SSD


def _use_chunked(impl: str, length: int) -> bool:
    if impl not in WKV_IMPLS:
        raise ValueError(f"wkv impl must be one of {WKV_IMPLS}, got {impl!r}")
    return length > 1 and impl != "scan"


def ssd(
    x: Float[Array, "B T H P"],
    dt: Float[Array, "B T H"],
    a: Float[Array, " H"],
    b: Float[Array, "B T H N"],
    c: Float[Array, "B T H N"],
    state: Float[Array, "B H P N"],
    reset: Bool[Array, "B T"] | None,
    *,
    impl: str = "auto",
    chunk: int = CHUNK,
) -> tuple[Float[Array, "B T H P"], Float[Array, "B H P N"]]:
    """``(y [B, T, H, P], final state)`` of ``S_t = e^{Δ_t A} S_{t-1} + Δ_t x_t B_tᵀ``,
    ``y_t = S_t C_t`` (float32; ``dt`` is ``Δ``, ``a`` is ``A``, no ``D`` term)."""
    if _use_chunked(impl, x.shape[1]):
        return _ssd_chunked(x, dt, a, b, c, state, reset, chunk)
    return _ssd_scan(x, dt, a, b, c, state, reset)


def _ssd_scan(x, dt, a, b, c, state, reset):
    bsz, t = x.shape[:2]
    keep = jnp.ones((bsz, t), bool) if reset is None else ~reset

    def body(s, inp):
        x_t, dt_t, b_t, c_t, keep_t = inp
        decay = jnp.where(keep_t[:, None], jnp.exp(dt_t * a), 0.0)  # [B, H]
        s = s * decay[..., None, None] + (dt_t[..., None] * x_t)[..., None] * b_t[:, :, None, :]
        return s, jnp.einsum("bhpn,bhn->bhp", s, c_t)

    state, y = scan_time(body, state, tuple(time_major(z) for z in (x, dt, b, c, keep)))
    return time_major(y), state


def _ssd_chunked(x, dt, a, b, c, state, reset, chunk):
    t = x.shape[1]
    # Front padding is Δ = 0: no decay and no input, so the state passes unchanged.
    log_decay = to_chunks(dt * a, chunk)  # [K, B, L, H]
    inputs = to_chunks(dt[..., None] * x, chunk)  # [K, B, L, H, P]
    b_c, c_c = to_chunks(b, chunk), to_chunks(c, chunk)
    if reset is None:
        seg = jnp.zeros(log_decay.shape[:3], jnp.int32)
    else:
        seg = jnp.cumsum(to_chunks(reset, chunk).astype(jnp.int32), axis=-1)  # resets so far
    causal = jnp.tril(jnp.ones((chunk, chunk), bool))

    @jax.checkpoint
    def body(s, inp):
        la, u, b_l, c_l, sg = inp
        cs = jnp.cumsum(la, axis=1)  # [B, L, H]: log decay from the chunk start
        # Token s reaches token l ≥ s of its own sequence, decayed by cs[l] - cs[s].
        same = causal[None] & (sg[:, :, None] == sg[:, None, :])  # [B, L, S]
        gap = cs[:, :, None, :] - cs[:, None, :, :]  # [B, L, S, H]
        weight = jnp.where(same[..., None], jnp.exp(jnp.where(same[..., None], gap, 0.0)), 0.0)
        scores = jnp.einsum("blhn,bshn->blsh", c_l, b_l) * weight
        y = jnp.einsum("blsh,bshp->blhp", scores, u)
        fresh = (sg == 0)[..., None]  # [B, L, 1]: no reset yet, the incoming state counts
        y = y + jnp.einsum("blhn,bhpn->blhp", c_l, s) * (jnp.exp(cs) * fresh)[..., None]
        ends = (sg[:, -1:] == sg)[..., None]  # [B, L, 1]: in the chunk's last sequence
        to_end = jnp.where(ends, jnp.exp(cs[:, -1:] - cs), 0.0)  # [B, L, H]
        carry = jnp.exp(cs[:, -1]) * fresh[:, -1]  # [B, H]
        s = s * carry[..., None, None] + jnp.einsum("blh,blhn,blhp->bhpn", to_end, b_l, u)
        return s, y

    state, y = jax.lax.scan(body, state, (log_decay, inputs, b_c, c_c, seg))
    return from_chunks(y, t), state
