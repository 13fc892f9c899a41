"""Per-example low-rank parameter deltas.

A :class:`LowRankDelta` stands for ``ΔW_b = scale_b · U_b V_bᵀ`` for every
example ``b`` of a batch, where ``W`` is a ``d_out × d_in`` weight. It is never
materialised on the hot path: a target layer computes
``y = x Wᵀ + scale · (x V) Uᵀ``, which costs ``r (d_in + d_out)`` per token.

Axis legend: ``B`` batch, ``T`` time, ``I`` d_in, ``O`` d_out, ``R`` rank.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float


class LowRankDelta(NamedTuple):
    """``ΔW_b = scale_b · U_b V_bᵀ`` for each example ``b``.

    Attributes:
      u: ``[B, O, R]`` output-side factor.
      v: ``[B, I, R]`` input-side factor.
      scale: scalar or ``[B]`` multiplier.
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
    if scale.ndim:  # per-example scale [B] broadcast over time and features
        scale = scale.reshape((batch,) + (1,) * (d.ndim - 1))
    return y + scale * d
