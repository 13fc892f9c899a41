"""Stage 3: rank-r factors of ``Σ_t δ̂_t x_tᵀ`` with grad-free linear algebra.

Over real prompt positions only (``mask``), for one target at a time:

- ``query``: ``a_{j,t} = softmax_t(q_j · κ(z_t) / √k)`` with ``r`` learned
  queries ``q_j`` and ``κ(z) = z W_κ``; ``U_j = Σ_t a_{j,t} δ̂_t``,
  ``V_j = Σ_t a_{j,t} x_t``.
- ``sketch``: ``U = Σ_t δ̂_t s_tᵀ``, ``V = Σ_t x_t s_tᵀ`` with Gaussian
  ``s_t ~ N(0, I/r)`` drawn from the token's position in its prompt, so
  ``E[U Vᵀ] = Σ_t δ̂_t x_tᵀ`` and padding never changes the draw.
- ``power``: ``U Vᵀ = Q Qᵀ G`` with ``Q`` from randomised subspace iteration
  on the factored ``G = Σ_t δ̂_t x_tᵀ`` — the best rank-r truncation as it
  converges, never forming the ``d_out × d_in`` matrix.

Axis legend: ``B`` batch, ``P`` prompt length, ``C`` d_model, ``I`` d_in,
``O`` d_out, ``R`` rank.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from prosg_jax.config import ProSGConfig
from prosg_jax.lowrank import truncate_factored


def sketch_matrix(
    positions: Int[Array, "B P"], mask: Bool[Array, "B P"], rank: int, seed: int
) -> Float[Array, "B P R"]:
    """Gaussian ``s_t ~ N(0, I/R)`` keyed by each token's position in its prompt.

    Keying by position (not by padded column) makes the sketch, and so the
    deltas, independent of how much padding a prompt carries.
    """
    base = jax.random.key(seed)
    draw = jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(base, t), (rank,)))
    s = draw(positions.reshape(-1)).reshape(*positions.shape, rank) / math.sqrt(rank)
    return jnp.where(mask[..., None], s, 0.0)


def compress(
    prosg_cfg: ProSGConfig,
    sg: dict,
    delta_hat: Float[Array, "B P O"],
    x: Float[Array, "B P I"],
    *,
    z: Float[Array, "B P C"],
    mask: Bool[Array, "B P"],
    positions: Int[Array, "B P"],
) -> tuple[Float[Array, "B O R"], Float[Array, "B I R"]]:
    """Rank-r factors ``(U, V)`` of ``Σ_t δ̂_t x_tᵀ`` over real prompt positions.

    Args:
      prosg_cfg: ``pooling``, ``rank``, ``sketch_seed`` and ``power_iters``.
      sg: this target's SG parameters (``kappa`` and ``queries`` for ``query``).
      delta_hat: predicted output-side errors.
      x: the target's inputs.
      z: normalised hiddens, the pooling keys' inputs.
      mask: real prompt tokens.
      positions: each token's index within its prompt.
    """
    x = x.astype(jnp.float32)
    if prosg_cfg.pooling == "query":
        kappa = z @ sg["kappa"]
        scores = jnp.einsum("rk,bpk->brp", sg["queries"], kappa) / math.sqrt(kappa.shape[-1])
        scores = jnp.where(mask[:, None, :], scores, -jnp.inf)  # padding never contributes
        attn = jax.nn.softmax(scores, axis=-1)
        return jnp.einsum("brp,bpo->bor", attn, delta_hat), jnp.einsum("brp,bpi->bir", attn, x)
    if prosg_cfg.pooling == "sketch":
        s = sketch_matrix(positions, mask, prosg_cfg.rank, prosg_cfg.sketch_seed)
        return jnp.einsum("bpo,bpr->bor", delta_hat, s), jnp.einsum("bpi,bpr->bir", x, s)
    m = mask[..., None]
    return truncate_factored(
        jnp.where(m, delta_hat, 0.0),
        jnp.where(m, x, 0.0),
        prosg_cfg.rank,
        key=jax.random.key(prosg_cfg.sketch_seed),
        iters=prosg_cfg.power_iters,
    )
