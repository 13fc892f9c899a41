"""Per-example low-rank parameter deltas.

A :class:`LowRankDelta` stands for ``ΔW_b = scale_b · U_b V_bᵀ`` for every
example ``b`` of a batch, where ``W`` is a ``d_out × d_in`` weight. It is never
materialised on the hot path: a target layer computes
``y = x Wᵀ + scale · (x V) Uᵀ``, which costs ``r (d_in + d_out)`` per token.

Axis legend: ``B`` batch, ``T`` time, ``I`` d_in, ``O`` d_out, ``R`` rank.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class LowRankDelta(NamedTuple):
    """``ΔW_b = scale_b · U_b V_bᵀ`` for each example ``b``.

    Attributes:
      u: ``[B, O, R]`` output-side factor.
      v: ``[B, I, R]`` input-side factor.
      scale: scalar, ``[B]`` (per example) or ``[B, T]`` (per token: a gate
        that puts the delta in force from some position of each row on).
    """

    u: Float[Array, "B O R"]
    v: Float[Array, "B I R"]
    scale: Float[Array, " ..."]

    @property
    def rank(self) -> int:
        return self.u.shape[-1]


def apply_delta(
    x: Float[Array, "B *T I"], y: Float[Array, "B *T O"], delta: LowRankDelta
) -> Float[Array, "B *T O"]:
    """Adds ``scale · (x V) Uᵀ`` to ``y = x Wᵀ``, per example, in ``x``'s dtype."""
    batch = x.shape[0]
    if delta.u.shape[0] != batch or delta.v.shape[0] != batch:
        raise ValueError(
            f"LowRankDelta batch {delta.u.shape[0]}/{delta.v.shape[0]} does not match "
            f"activations batch {batch}"
        )
    if delta.v.shape[1] != x.shape[-1] or delta.u.shape[1] != y.shape[-1]:
        raise ValueError(
            f"LowRankDelta shapes U{tuple(delta.u.shape)} V{tuple(delta.v.shape)} do not fit "
            f"a {y.shape[-1]}x{x.shape[-1]} weight"
        )
    xv = jnp.einsum("b...i,bir->b...r", x, delta.v.astype(x.dtype))
    d = jnp.einsum("b...r,bor->b...o", xv, delta.u.astype(x.dtype))
    scale = jnp.asarray(delta.scale, dtype=x.dtype)
    if scale.ndim:  # [B] or [B, T], broadcast over the remaining axes
        scale = scale.reshape(scale.shape + (1,) * (d.ndim - scale.ndim))
    return y + scale * d


def materialize(delta: LowRankDelta, b: int) -> Float[Array, "O I"]:
    """Example ``b``'s dense ``ΔW = scale_b U_b V_bᵀ`` (tests and inspection only)."""
    scale = jnp.asarray(delta.scale)
    s = scale[b] if scale.ndim else scale
    return s * delta.u[b] @ delta.v[b].T


def merge(params: dict, deltas: dict[str, LowRankDelta], b: int) -> dict:
    """A copy of ``params`` with example ``b``'s deltas added to the weights (for export)."""
    merged = _copy_tree(params)
    for name, delta in deltas.items():
        leaf = _weight_holder(merged, name)
        leaf["weight"] = (leaf["weight"] + materialize(delta, b)).astype(leaf["weight"].dtype)
    return merged


def add(a: LowRankDelta | None, b: LowRankDelta, *, max_rank: int) -> LowRankDelta:
    """``a + b`` for every example, at rank at most ``max_rank`` (host numpy).

    The factors are concatenated (scales folded into ``u``): exact while
    ``rank a + rank b <= max_rank``. Past the budget the sum is re-compressed
    to its best rank-``max_rank`` approximation with small exact linear
    algebra in float64: QR of both stacked factors and an SVD of the
    ``R x R`` core ``R_u R_vᵀ`` (``R = rank a + rank b``); the cost is
    ``O((O + I) R²)`` per example and target, and no ``O x I`` matrix is formed.
    ``a = None`` stands for no delta.

    Returns:
      A float32 delta with scale 1.
    """
    parts = [b] if a is None else [a, b]
    for d in parts:
        if np.ndim(d.scale) > 1:
            raise ValueError("add takes deltas with a scalar or per-example scale, not per-token")
    u = np.concatenate([_folded_u(d) for d in parts], axis=-1)
    v = np.concatenate([np.asarray(d.v, np.float64) for d in parts], axis=-1)
    if u.shape[-1] > max_rank:
        qu, ru = np.linalg.qr(u)
        qv, rv = np.linalg.qr(v)
        left, sigma, right_t = np.linalg.svd(ru @ np.swapaxes(rv, -1, -2))
        k = min(max_rank, sigma.shape[-1])
        u = qu @ (left[..., :k] * sigma[..., None, :k])
        v = qv @ np.swapaxes(right_t[..., :k, :], -1, -2)
    return LowRankDelta(u=u.astype(np.float32), v=v.astype(np.float32), scale=np.float32(1))


def _folded_u(d: LowRankDelta) -> np.ndarray:
    scale = np.asarray(d.scale, np.float64)
    return np.asarray(d.u, np.float64) * scale.reshape(scale.shape + (1,) * (3 - scale.ndim))


def weight(params: dict, name: str) -> Array:
    """The ``[d_out, d_in]`` weight of target ``name`` (``"blocks.3.att.value"``)."""
    return _weight_holder(params, name)["weight"]


def _weight_holder(params: dict, name: str) -> dict:
    node = params
    for part in name.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def _copy_tree(tree):
    if isinstance(tree, dict):
        return {k: _copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_copy_tree(v) for v in tree]
    return tree


def _orthonormal(y: Float[Array, "*B M R"], rel_tol: float = 1e-6) -> Float[Array, "*B M R"]:
    """Orthonormal columns spanning ``y`` (Gram-Schmidt, re-orthogonalised once).

    Pure XLA ops rather than ``jnp.linalg.qr``: the LAPACK custom call
    deadlocked XLA's CPU runtime when many independent QRs ran in one program.
    Columns that are (numerically) dependent on earlier ones become zero, so
    ``Q Qᵀ`` stays the orthogonal projector onto ``span(y)`` even when ``y`` is
    rank-deficient (a prompt shorter than the rank).
    """
    r = y.shape[-1]
    tol = rel_tol * jnp.max(jnp.linalg.norm(y, axis=-2), axis=-1)  # [*B]

    def column(j, q):
        v = q[..., j]
        earlier = (jnp.arange(r) < j).astype(q.dtype)
        for _ in range(2):  # "twice is enough" (Giraud et al. 2005)
            v = v - jnp.einsum(
                "...mk,...k->...m", q, jnp.einsum("...mk,...m->...k", q, v) * earlier
            )
        norm = jnp.linalg.norm(v, axis=-1)
        v = jnp.where((norm > tol)[..., None], v / jnp.maximum(norm, tol)[..., None], 0.0)
        return q.at[..., j].set(v)

    return jax.lax.fori_loop(0, r, column, y)


def truncate_operator(apply, apply_t, omega: Float[Array, "I R"], iters: int):
    """Rank-r factors ``(U [.., O, R], V [.., I, R])``, ``U Vᵀ ≈ G``, from products with G.

    Randomised subspace iteration (Halko et al. 2011): ``Q = orth(G Ω)``,
    ``iters`` times ``Q = orth(G Gᵀ Q)``, then ``U = Q``, ``V = Gᵀ Q``, so
    ``U Vᵀ = Q Qᵀ G`` — exact when ``R >= rank(G)``, the best rank-R
    approximation as the iterations converge. Gradients flow through
    ``G`` only, with the subspace ``Q`` held fixed. ``apply(z) = G z`` and
    ``apply_t(y) = Gᵀ y`` may carry leading batch axes.
    """
    # The basis is treated as a constant: U Vᵀ = Q Qᵀ G stays differentiable
    # (and linear) in G, while gradients never pass through the
    # orthonormalisation, which is ill-conditioned when G has rank < R.
    q = _orthonormal(apply(omega))
    for _ in range(iters):
        q = _orthonormal(apply(_orthonormal(apply_t(q))))
    q = jax.lax.stop_gradient(q)
    return q, apply_t(q)


def truncate_factored(
    d: Float[Array, "*B P O"], x: Float[Array, "*B P I"], rank: int, *, key: Array, iters: int
):
    """Rank-``rank`` factors of ``G = Σ_t d_t x_tᵀ`` without forming the O×I matrix."""
    rank = min(rank, d.shape[-1], x.shape[-1])
    omega = jax.random.normal(key, (x.shape[-1], rank), x.dtype)
    dt = jnp.swapaxes(d, -1, -2)
    xt = jnp.swapaxes(x, -1, -2)
    return truncate_operator(lambda z: dt @ (x @ z), lambda y: xt @ (d @ y), omega, iters)


def factored_inner(
    u1: Float[Array, "*B O R"],
    v1: Float[Array, "*B I R"],
    u2: Float[Array, "*B O S"],
    v2: Float[Array, "*B I S"],
) -> Float[Array, "*B"]:
    """Frobenius inner product ``⟨U1 V1ᵀ, U2 V2ᵀ⟩`` from ``R × S`` Gram matrices.

    ``tr(V1 U1ᵀ U2 V2ᵀ) = Σ_{rs} (U1ᵀ U2)_{rs} (V1ᵀ V2)_{rs}``: the cost is
    ``R S (O + I)``, and no ``O × I`` matrix is formed.
    """
    uu = jnp.einsum("...or,...os->...rs", u1, u2)
    vv = jnp.einsum("...ir,...is->...rs", v1, v2)
    return jnp.sum(uu * vv, axis=(-2, -1))
