"""Per-example true gradients in factored form, from one backward pass.

For a target ``W`` (``d_out × d_in``) with inputs ``x_bt``, the gradient of
example ``b``'s loss is ``G_b = Σ_t δ_bt x_btᵀ``, where ``δ_bt = ∂L_b/∂y_bt``
is the error at ``W``'s output. Rather than ``vmap(grad)`` over dense
per-example weights (B backward passes and ``B × O × I`` memory per target),
a zero perturbation ``ε`` of every target's output (shape ``[B, T, O]``) is
differentiated once: example ``b``'s outputs reach only ``L_b``, so
``∂(Σ_b L_b)/∂ε_bt = δ_bt``. The pair ``(δ, x)`` is ``G`` in factored form;
it goes straight into ``lowrank.truncate_factored`` and Frobenius norms come
from small Gram matrices (``lowrank.factored_inner``).

Axis legend: ``B`` batch, ``T`` time, ``V`` vocab, ``I`` d_in, ``O`` d_out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from prosg_jax.config import RWKVConfig
from prosg_jax.models.family import target_shape
from prosg_jax.models.layers import Deltas
from prosg_jax.models.lm import State, forward_core


class Factored(NamedTuple):
    """``G_b = Σ_t err_bt inputs_btᵀ`` for every example ``b``.

    Attributes:
      err: ``[B, T, O]`` the error ``δ`` at the target's output.
      inputs: ``[B, T, I]`` the target's inputs ``x`` in the same pass.
    """

    err: Float[Array, "B T O"]
    inputs: Float[Array, "B T I"]


def token_nll(logits: Float[Array, "B T V"], targets: Int[Array, "B T"]) -> Float[Array, "B T"]:
    """Each token's negative log-likelihood of its target, in float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def per_example_ce(
    logits: Float[Array, "B T V"], targets: Int[Array, "B T"], mask: Bool[Array, "B T"]
) -> Float[Array, " B"]:
    """Each row's mean next-token cross-entropy over its ``mask`` (0 for an empty row)."""
    mask = mask.astype(jnp.float32)
    return (token_nll(logits, targets) * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)


def masked_cross_entropy(
    logits: Float[Array, "B T V"], targets: Int[Array, "B T"], mask: Bool[Array, "B T"]
) -> Float[Array, ""]:
    """Mean next-token cross-entropy over every ``mask``-ed token (0 when none is)."""
    mask = mask.astype(jnp.float32)
    return (token_nll(logits, targets) * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def factored_grads(
    cfg: RWKVConfig,
    params: dict,
    tokens: Int[Array, "B T"],
    state: State,
    *,
    names: tuple[str, ...],
    example_losses: Callable[[Float[Array, "B T V"]], Float[Array, " B"]],
    deltas: Deltas | None = None,
    positions: Int[Array, "B T"] | None = None,
) -> dict[str, Factored]:
    """``∂L_b/∂W`` of every target in ``names``, factored, from one forward and backward.

    Args:
      cfg, params: the model; gradients are taken at ``W + ΔW_b`` when
        ``deltas`` are given (applied through the low-rank path).
      tokens, state, positions: the block to run, as in ``forward_core``.
      names: target paths.
      example_losses: maps the logits to one loss per example ``[B]``.
    """
    batch, time = tokens.shape
    zeros = {n: jnp.zeros((batch, time, target_shape(cfg, n)[0]), jnp.float32) for n in names}

    def total(eps):
        logits, _, taps = forward_core(
            cfg,
            params,
            tokens,
            state,
            deltas=deltas,
            positions=positions,
            capture=True,
            perturb=eps,
        )
        return example_losses(logits).sum(), {n: taps[n] for n in names}

    err, inputs = jax.grad(total, has_aux=True)(zeros)
    return {n: Factored(err=err[n], inputs=inputs[n].astype(jnp.float32)) for n in names}
