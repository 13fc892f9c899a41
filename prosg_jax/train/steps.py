"""Pure losses and the jitted train step of each stage.

Trainable parameters by stage: ``base`` — the LM; ``prosg`` — the SG module
(the base is a frozen, separately passed argument); ``joint`` —
``{"base": LM, "sg": SG module}``, or with ``config.train.lora_rank > 0``
``{"lora": adapter, "sg": SG module}`` on a frozen base (:mod:`.lora`).
Parameters are float32 master weights; the LM sees them cast to its compute
dtype.

Axis legend: ``B`` batch, ``T`` packed row length, ``P`` prompt, ``K`` continuation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from prosg_jax import prosg
from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.errors import UserError
from prosg_jax.models.lm import forward_core, init_state
from prosg_jax.tasks.datasets import to_batch
from prosg_jax.train import lora
from prosg_jax.train import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
    """What a stage's checkpoint holds besides the data-iterator state."""

    step: jax.Array  # int32 scalar: completed micro-steps
    params: dict
    opt_state: optax.OptState


def compute_params(model_cfg: RWKVConfig, params):
    """The LM parameters in the compute dtype (float32 master weights otherwise)."""
    if model_cfg.compute_dtype == jnp.float32:
        return params
    return jax.tree.map(lambda x: x.astype(model_cfg.compute_dtype), params)


def _weighted_ce(logits, targets, weights, answer_mask):
    nll = prosg.token_nll(logits, targets)
    loss = (nll * weights).sum() / jnp.maximum(weights.sum(), 1e-9)
    return loss, prosg.answer_counts(logits, targets, answer_mask)


def base_loss(model_cfg: RWKVConfig, params, batch: dict):
    """Weighted next-token loss on packed rows (state resets at ``positions == 0``)."""
    logits, _, _ = forward_core(
        model_cfg,
        compute_params(model_cfg, params),
        batch["inputs"],
        init_state(model_cfg, batch["inputs"].shape[0]),
        positions=batch["positions"],
    )
    return _weighted_ce(logits, batch["targets"], batch["loss_mask"], batch["answer_mask"])


def _split(stage: str, trainable, frozen):
    """``(base params, SG params)`` of a stage's trainable and frozen trees."""
    if stage == "prosg":
        return frozen, trainable
    if "lora" in trainable:
        return lora.merge(frozen, trainable["lora"]), trainable["sg"]
    return trainable["base"], trainable["sg"]


def forget_rows(batch_size: int, forget_frac: float) -> jax.Array | None:
    """``bool[B]``: the first ``round(forget_frac * B)`` rows, or None when there are none.

    Batches are shuffled, so a fixed leading block is a random subset of examples.
    """
    if not 0.0 <= forget_frac <= 1.0:
        raise UserError(f"config.train.forget_frac={forget_frac} must be in [0, 1]")
    n = round(forget_frac * batch_size)
    return jnp.arange(batch_size) < n if n > 0 else None


def loss_fn(
    stage: str,
    model_cfg: RWKVConfig,
    prosg_cfg: ProSGConfig,
    trainable,
    *,
    frozen,
    batch,
    forget_frac: float = 0.0,
    forget_state: str = "empty",
):
    """``(loss, metrics)`` of one batch for ``stage``.

    ProSG stages continue a ``forget_frac`` share of each batch's rows from
    another recurrent state than the prompt's, empty or another row's
    (``forget_state``, see :func:`prosg_jax.prosg.continuation_logits`).
    """
    if stage == "base":
        return base_loss(model_cfg, trainable, batch)
    base, sg = _split(stage, trainable, frozen)
    loss, aux = prosg.continuation_loss(
        model_cfg,
        compute_params(model_cfg, base),
        sg,
        prosg_cfg,
        batch=to_batch(batch),
        forget=forget_rows(batch["targets"].shape[0], forget_frac),
        forget_state=forget_state,
        answer_mask=batch["answer_mask"],
    )
    return loss, aux


def make_train_step(
    stage: str,
    model_cfg: RWKVConfig,
    prosg_cfg: ProSGConfig,
    optimizer: optax.GradientTransformation,
    *,
    mesh,
    state_shardings,
    frozen_shardings,
    forget_frac: float = 0.0,
    forget_state: str = "empty",
) -> Callable[..., tuple[TrainState, dict]]:
    """The stage's jitted ``train_step(state, frozen, batch) -> (state, metrics)``,
    with explicit shardings; the state is donated."""

    def train_step(state: TrainState, frozen, batch):
        grad_fn = jax.value_and_grad(
            functools.partial(
                loss_fn,
                stage,
                model_cfg,
                prosg_cfg,
                forget_frac=forget_frac,
                forget_state=forget_state,
            ),
            has_aux=True,
        )
        (loss, metrics), grads = grad_fn(state.params, frozen=frozen, batch=batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    batch_sh = mesh_lib.batch_sharding(mesh)
    rep = mesh_lib.replicated(mesh)
    step = jax.jit(
        train_step,
        in_shardings=(state_shardings, frozen_shardings, batch_sh),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )
    return step
