"""The RWKV time-mixing recurrences ("WKV"): one signature per version, two implementations.

Everything around the recurrence (projections, deltas, ProSG taps) is parallel
over ``[B, T]``; only these functions carry state through time. Each has two
implementations that agree to float32 rounding, chosen by
``RWKVConfig.wkv_impl``:

* ``"scan"``: the per-token recurrence, a ``lax.scan`` over time. It is the
  oracle the other implementation is tested against.
* ``"chunked"``: time is cut into chunks of ``CHUNK`` tokens. The work inside
  a chunk runs for every chunk at once; a ``lax.scan`` over chunks carries
  only the chunk-boundary states. Both are rematerialised in backward
  (``jax.checkpoint``), which therefore stores the inputs and one state per
  chunk — not one per token, as the scan does.
* ``"auto"``: ``"chunked"`` for ``T > 1``, except RWKV-4 on a CPU, where the
  per-token scan is the faster one.

A single token (decode, ``T == 1``) always runs the per-token body once,
without a loop, so decode and prefill share their arithmetic.

A sequence may restart anywhere (``reset[b, t]``: the state is emptied before
token ``t``), also inside a chunk. ``T`` need not be a multiple of the chunk:
the chunked forms pad the front with steps that leave the state unchanged.

Axis legend: ``B`` batch, ``T`` time, ``H`` heads, ``N`` head size (RWKV-7),
``C`` channels (RWKV-4), ``K`` chunks, ``L`` chunk length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from prosg_jax.config import WKV_IMPLS
from prosg_jax.models.layers import scan_time, time_major

CHUNK = 16  # tokens per chunk; a power of two (see _unit_lower_inverse)

# Running-max exponent of an empty RWKV-4 state: "minus infinity" that stays
# finite, so exp(p - q) is exactly 0 without producing NaNs.
P_EMPTY = -1e30

State4 = tuple[Float[Array, "B C"], Float[Array, "B C"], Float[Array, "B C"]]


def _use_chunked(impl: str, length: int, version: int) -> bool:
    if impl not in WKV_IMPLS:
        raise ValueError(f"wkv impl must be one of {WKV_IMPLS}, got {impl!r}")
    if length == 1 or impl == "scan":
        return False
    if impl == "chunked":
        return True
    # "auto": wherever chunking is faster. On a CPU, where a loop step costs no
    # kernel launch, RWKV-4's per-channel recurrence is already cheap per token
    # and its chunked form measured slower (benchmarks/train_bench.py);
    # RWKV-7's matrix-valued state makes the chunked form faster to train there too.
    return version == 7 or jax.default_backend() != "cpu"


def to_chunks(x: Array, chunk: int, fill: float = 0) -> Array:
    """``[B, T, ...] -> [K, B, L, ...]``, front-padded with ``fill`` to whole chunks."""
    bsz, t = x.shape[:2]
    pad = -t % chunk
    x = jnp.pad(x, [(0, 0), (pad, 0)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return jnp.swapaxes(x.reshape(bsz, (t + pad) // chunk, chunk, *x.shape[2:]), 0, 1)


def from_chunks(y: Array, t: int) -> Array:
    """Inverse of :func:`to_chunks`: ``[K, B, L, ...] -> [B, T, ...]``, padding dropped."""
    y = jnp.swapaxes(y, 0, 1)
    y = y.reshape(y.shape[0], -1, *y.shape[3:])
    return y[:, y.shape[1] - t :]


def _check_chunk(chunk: int) -> None:
    if chunk < 2 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 2, got {chunk}")


# --------------------------------------------------------------------------- RWKV-7


def rwkv7(
    r: Float[Array, "B T H N"],
    log_w: Float[Array, "B T H N"],
    k: Float[Array, "B T H N"],
    v: Float[Array, "B T H N"],
    kk: Float[Array, "B T H N"],
    a: Float[Array, "B T H N"],
    state: Float[Array, "B H N N"],
    reset: Bool[Array, "B T"] | None,
    *,
    impl: str = "auto",
    chunk: int = CHUNK,
) -> tuple[Float[Array, "B T H N"], Float[Array, "B H N N"]]:
    """The RWKV-7 generalized delta rule, per head, in float32.

    With ``w_t = exp(log_w_t)``, ``κ_t = kk_t`` (unit norm) and ``a_t`` the
    in-context learning rate, the state (rows: value, columns: key channels)
    evolves as::

        S_t = S_{t-1} diag(w_t) + (S_{t-1} (-κ_t)) (κ_t ⊙ a_t)ᵀ + v_t k_tᵀ,   y_t = S_t r_t

    Args:
      r, log_w, k, v, kk, a: per-token inputs; ``log_w <= 0``.
      state: the state before the first token.
      reset: where true, the state is emptied before that token; ``None``: never.
      impl: ``"auto"``, ``"scan"`` or ``"chunked"``.
      chunk: chunk length of ``"chunked"`` (a power of two).

    Returns:
      ``(y, state after the last token)``.
    """
    if _use_chunked(impl, r.shape[1], version=7):
        return _chunked7(r, log_w, k, v, -kk, kk * a, state, reset, chunk)
    return _scan7(r, log_w, k, v, -kk, kk * a, state, reset)


def _scan7(r, log_w, k, v, alpha, beta, state, reset):
    """The oracle: ``S_t = S_{t-1} (diag(w_t) + α_t β_tᵀ) + v_t k_tᵀ`` token by token."""

    def body(s, inp):
        rt, lwt, kt, vt, at, bt, reset_t = inp
        if reset_t is not None:  # a new sequence starts here: empty memory
            s = jnp.where(reset_t[:, None, None, None], 0.0, s)
        sa = jnp.einsum("bhvk,bhk->bhv", s, at)
        s = (
            s * jnp.exp(lwt)[:, :, None, :]
            + sa[..., None] * bt[:, :, None, :]
            + vt[..., None] * kt[:, :, None, :]
        )
        return s, jnp.einsum("bhvk,bhk->bhv", s, rt)

    xs = tuple(time_major(x) for x in (r, log_w, k, v, alpha, beta))
    state, y = scan_time(body, state, xs + (None if reset is None else time_major(reset),))
    return time_major(y), state


def _unit_lower_inverse(a: Float[Array, "... L L"]) -> Float[Array, "... L L"]:
    """``(I - a)⁻¹`` for strictly lower-triangular ``a``, by blockwise doubling.

    ``X`` starts as the inverse of the 1×1 diagonal blocks (``I``); each round
    pairs neighbouring s×s blocks into a 2s×2s one, whose inverse is
    ``[[X₁, 0], [X₂ a₂₁ X₁, X₂]]``, i.e. ``X + X (a ⊙ mask_s) X``. After
    log₂ L rounds of two small matmuls, ``X`` is the exact inverse. Unlike a
    Neumann series (Σ aʲ), every intermediate is a true inverse of a diagonal
    block, so nothing large cancels; unlike row-by-row forward substitution,
    it has log₂ L steps instead of L and differentiates as plain matmuls.
    """
    length = a.shape[-1]
    idx = np.arange(length)

    def lower_left(s):  # the s×s lower-left block of every 2s×2s diagonal block
        return (idx[:, None] // (2 * s) == idx[None, :] // (2 * s)) & (
            idx[:, None] // s > idx[None, :] // s
        )

    x = jnp.eye(length, dtype=a.dtype) + a * lower_left(1)  # the first round, with X = I
    s = 2
    while s < length:
        x = x + x @ (a * lower_left(s)) @ x
        s *= 2
    return x


def _intra7(r, lw, k, v, alpha, beta, seg):
    """Everything a chunk needs that does not depend on its incoming state.

    Inside a chunk (local index t, γ_t = Π_{i≤t} w_i, u_t = S_{t-1} α_t)::

        u_t = S_0 (γ_{t-1} ⊙ α_t) + Σ_{i<t} (α_t ⊙ γ_{t-1}/γ_i)·(k_i v_i + β_i u_i)
        y_t = S_0 (γ_t ⊙ r_t)     + Σ_{i≤t} (r_t ⊙ γ_t/γ_i)·(k_i v_i + β_i u_i)

    where ``x·(k v + β u)`` stands for ``(x·k) v + (x·β) u``.

    The u's solve a unit-lower-triangular system, so with ``T = (I - A_αβ)⁻¹``
    ``U = W S_0ᵀ + Ũ`` and ``Y = Q S_0ᵀ + Y_intra``; and the outgoing state is
    ``S_L = S_0 diag(γ_L) + Σ_i v_i (k_i ⊙ γ_L/γ_i)ᵀ + u_i (β_i ⊙ γ_L/γ_i)ᵀ``.

    A reset before token s empties the state: a token at or after s sees
    neither the incoming state nor any token before s. With ``seg`` the number
    of resets up to each token, that is "token t sees token i only if
    seg_i == seg_t, and sees S_0 only if seg_t == 0" — masks on the matrices
    below, which keep every pairwise decay within one segment.

    All arrays are ``[K, B, H, L, N]`` (``seg``: ``[K, B, L]`` or None).
    """
    length = r.shape[-2]
    g = jnp.cumsum(lw, axis=-2)  # log γ_t
    g_prev = g - lw  # log γ_{t-1}
    g_last = g[..., -1:, :]
    # γ_t/γ_i = exp(g_t - g_i) is split into a row factor exp(g_t) <= 1 and a
    # column factor exp(-g_i) <= exp(a chunk's total decay): at most
    # e^{16·0.61} ≈ 2e4 for RWKV-7 (w > e^{-0.61}), far from fp32's e^88. The
    # reference is the chunk start, not its middle, so that no output depends,
    # even in rounding, on a later token's decay (causality holds bit for bit).
    rows = jnp.concatenate([r * jnp.exp(g), alpha * jnp.exp(g_prev)], axis=-2)
    cols = jnp.concatenate([k, beta], axis=-2) * jnp.exp(-jnp.concatenate([g, g], axis=-2))
    incl = np.tril(np.ones((length, length), bool))
    causal = np.block([[incl, incl], [np.tril(incl, -1), np.tril(incl, -1)]])
    mask = jnp.asarray(causal)
    if seg is not None:
        same = seg[..., :, None] == seg[..., None, :]
        mask = mask & jnp.tile(same, (2, 2))[:, :, None]
    pair = jnp.where(mask, jnp.einsum("...ln,...mn->...lm", rows, cols), 0.0)
    a_rk, a_rb = pair[..., :length, :length], pair[..., :length, length:]
    a_ak, a_ab = pair[..., length:, :length], pair[..., length:, length:]

    sees_state = 1.0 if seg is None else (seg == 0)[:, :, None, :, None]
    wu = _unit_lower_inverse(a_ab) @ jnp.concatenate(
        [rows[..., length:, :] * sees_state, a_ak @ v], axis=-1
    )  # [W | Ũ]
    n = r.shape[-1]
    qy = a_rb @ wu
    q = rows[..., :length, :] * sees_state + qy[..., :n]
    in_last = 1.0 if seg is None else (seg == seg[..., -1:])[:, :, None, :, None]
    to_end = jnp.exp(g_last - g) * in_last
    carry = jnp.exp(g_last[..., 0, :])
    if seg is not None:
        carry = carry * (seg[..., -1] == 0)[:, :, None, None]
    return (
        jnp.concatenate([wu[..., :n], q], axis=-2),  # how [U; Y] read S_0: [W; Q]
        jnp.concatenate([wu[..., n:], a_rk @ v + qy[..., n:]], axis=-2),  # the rest: [Ũ; Y_intra]
        jnp.concatenate([k * to_end, beta * to_end], axis=-2),  # how [v; u] write S_L
        v,
        carry,
    )


def _chunked7(r, log_w, k, v, alpha, beta, state, reset, chunk):
    _check_chunk(chunk)
    xs = (jnp.swapaxes(to_chunks(x, chunk), 2, 3) for x in (r, log_w, k, v, alpha, beta))
    # Padding is zeros: log w = 0 (no decay) and k = v = α = β = 0 leave S unchanged.
    seg = None if reset is None else jnp.cumsum(to_chunks(reset, chunk), axis=-1)
    per_chunk = jax.checkpoint(_intra7)(*xs, seg)

    # What needs the incoming state: two (2L × N) · (N × N) matmuls per chunk.
    @jax.checkpoint
    def body(s, x):
        reads, rest, writes, v_c, carry = x
        u_y = jnp.einsum("bhlk,bhvk->bhlv", reads, s) + rest
        u, y = u_y[..., :chunk, :], u_y[..., chunk:, :]
        v_u = jnp.concatenate([v_c, u], axis=-2)
        return s * carry[:, :, None, :] + jnp.einsum("bhlv,bhlk->bhvk", v_u, writes), y

    state, y = jax.lax.scan(body, state, per_chunk)
    return from_chunks(jnp.swapaxes(y, 2, 3), r.shape[1]), state


# --------------------------------------------------------------------------- RWKV-4


def rwkv4(
    decay: Float[Array, " C"],
    first: Float[Array, " C"],
    k: Float[Array, "B T C"],
    v: Float[Array, "B T C"],
    state: State4,
    reset: Bool[Array, "B T"] | None,
    *,
    impl: str = "auto",
    chunk: int = CHUNK,
) -> tuple[Float[Array, "B T C"], State4]:
    """The RWKV-4 WKV in float32 log space::

        wkv_t = (Σ_{i<t} e^{(t-1-i)·decay + k_i} v_i + e^{first + k_t} v_t) / (same with v → 1)

    The state ``(a, b, p)`` holds the numerator and denominator sums as
    ``a·e^p`` and ``b·e^p``, with ``p`` a running maximum exponent, so no
    exponential overflows however long the input.

    Args:
      decay: per-step log decay (``-exp(time_decay)``, negative).
      first: the bonus ``u`` of the current token (``time_first``).
      k, v: per-token keys and values.
      state: ``(a, b, p)`` before the first token (empty: ``(0, 0, P_EMPTY)``).
      reset: where true, the state is emptied before that token; ``None``: never.
      impl: ``"auto"``, ``"scan"`` or ``"chunked"``.
      chunk: chunk length of ``"chunked"`` (a power of two).

    Returns:
      ``(wkv, state after the last token)``.
    """
    if _use_chunked(impl, k.shape[1], version=4):
        return _chunked4(decay, first, k, v, state, reset, chunk)

    def body(carry, inp):
        carry, (num, den, _) = _step4(decay, first, carry, *inp)
        return carry, num / den

    xs = (time_major(k), time_major(v), None if reset is None else time_major(reset))
    state, y = scan_time(body, state, xs)
    return time_major(y), state


def _step4(decay, first, carry, kt, vt, reset_t):
    """One token: the unnormalised output ``(num, den, scale)`` and the next state."""
    a, b, p = carry
    if reset_t is not None:  # a new sequence starts here: forget everything before it
        a = jnp.where(reset_t[..., None], 0.0, a)
        b = jnp.where(reset_t[..., None], 0.0, b)
        p = jnp.where(reset_t[..., None], P_EMPTY, p)
    ww = first + kt
    q = jnp.maximum(p, ww)
    e1, e2 = jnp.exp(p - q), jnp.exp(ww - q)
    out = (e1 * a + e2 * vt, e1 * b + e2, q)
    ww = decay + p
    q = jnp.maximum(ww, kt)
    e1, e2 = jnp.exp(ww - q), jnp.exp(kt - q)
    return (e1 * a + e2 * vt, e1 * b + e2, q), out


def _log_add(x, y):
    """``(a, b, p) + (a', b', p')`` as sums ``a·e^p + a'·e^p'`` in log space."""
    (a1, b1, p1), (a2, b2, p2) = x, y
    q = jnp.maximum(p1, p2)
    e1, e2 = jnp.exp(p1 - q), jnp.exp(p2 - q)
    return e1 * a1 + e2 * a2, e1 * b1 + e2 * b2, q


def _chunked4(decay, first, k, v, state, reset, chunk):
    """Two levels of the same log-space recurrence.

    RWKV-4's decay is per channel and constant in time, so the incoming state
    reaches local token t of a chunk simply scaled by ``e^{t·decay}``. Level one
    runs the exact per-token step from an empty state inside every chunk at
    once (depth L, vectorised over B × K); level two scans the K chunk
    summaries and adds each chunk's decayed incoming state to its unnormalised
    outputs — log-space additions with running maxima throughout, so the
    result is as stable as the per-token scan. A reset in a chunk cuts the
    incoming state off from the reset on, exactly as in the scan.
    """
    _check_chunk(chunk)
    length = k.shape[1]
    pad = -length % chunk
    # Front padding with e^k = 0 adds nothing; pre-scaling the incoming state by
    # the padding's decay makes it arrive at the first real token unchanged.
    a0, b0, p0 = state
    state = (a0, b0, p0 - pad * decay)
    k_c, v_c = to_chunks(k, chunk, fill=P_EMPTY), to_chunks(v, chunk)  # [K, B, L, C]
    r_c = None if reset is None else to_chunks(reset, chunk)  # [K, B, L]

    def local(carry, x):
        return _step4(decay, first, carry, *x)

    def time_first(x):
        return None if x is None else jnp.moveaxis(x, 2, 0)

    empty = (jnp.zeros_like(k_c[:, :, 0]),) * 2 + (jnp.full_like(k_c[:, :, 0], P_EMPTY),)
    xs = (time_first(k_c), time_first(v_c), time_first(r_c))
    summary, outs = jax.lax.scan(local, empty, xs)  # over L, all chunks at once
    outs = tuple(jnp.moveaxis(o, 0, 2) for o in outs)  # [K, B, L, C]
    if r_c is None:
        sees_state, cut = None, None
    else:
        sees_state = jnp.cumsum(r_c, axis=-1) == 0  # no reset yet at local t
        cut = r_c.any(axis=-1)
    offsets = jnp.arange(chunk, dtype=decay.dtype)[:, None] * decay  # [L, C]

    @jax.checkpoint
    def body(s, x):
        (num, den, q), sum_c, sees, cut_c = x
        a_s, b_s, p_s = (z[:, None] for z in s)
        p_t = p_s + offsets
        if sees is not None:
            p_t = jnp.where(sees[..., None], p_t, P_EMPTY)
        num, den, _ = _log_add((a_s, b_s, p_t), (num, den, q))
        p_end = s[2] + chunk * decay
        if cut_c is not None:
            p_end = jnp.where(cut_c[:, None], P_EMPTY, p_end)
        return _log_add((s[0], s[1], p_end), sum_c), num / den

    state, y = jax.lax.scan(body, state, (outs, summary, sees_state, cut))
    return from_chunks(y, length), state
