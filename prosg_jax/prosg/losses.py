"""Training losses: the continuation loss under the deltas, and SG matching.

A :class:`Batch` is prompts plus the continuation to score. The continuation
is read exactly as generation reads it: the base model reads each prompt up
to its last token, the deltas are derived from the whole prompt, and the last
prompt token is replayed under the deltas, so its logits — which predict the
first continuation token — are already under the deltas. The continuation is
teacher forced after it in the same parallel pass.

Axis legend: ``B`` batch, ``P`` prompt length, ``K`` continuation length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.lowrank import factored_inner, truncate_factored
from prosg_jax.models.layers import Deltas
from prosg_jax.models.lm import check_params, check_tokens, forward_core, init_state
from prosg_jax.prosg.ablations import derive
from prosg_jax.prosg.grads import factored_grads, masked_cross_entropy, per_example_ce
from prosg_jax.prosg.sg import check_sg_params
from prosg_jax.prosg.states import PromptTail, check_right_padded


class Batch(NamedTuple):
    """A ProSG training batch: prompts, then the continuation to score.

    Attributes:
      prompts: ``int32[B, P]`` prompts, right-padded with 0.
      prompt_lengths: ``int32[B]`` real prompt lengths, each in ``[1, P]``.
      targets: ``int32[B, K]`` the continuation tokens that follow each
        prompt, right-padded. ``targets[:, 0]`` is predicted by the logits
        after the prompt's last token (replayed under the deltas),
        ``targets[:, t]`` by those after ``targets[:, t - 1]`` (teacher
        forcing): the first continuation token is scored too.
      loss_mask: ``float32[B, K]`` 1 where ``targets`` is scored, aligned
        with ``targets`` (0 on padding). A row with no scored token adds
        nothing to either loss.
    """

    prompts: Int[Array, "B P"]
    prompt_lengths: Int[Array, " B"]
    targets: Int[Array, "B K"]
    loss_mask: Float[Array, "B K"]


def continuation_inputs(
    tail: PromptTail, targets: Int[Array, "B K"]
) -> tuple[Int[Array, "B K"], Int[Array, "B K"]]:
    """``(inputs, positions)`` that teacher-force ``targets`` after the prompts.

    The inputs are each prompt's last token (the replay) followed by
    ``targets[:, :-1]``; positions continue from the last prompt token's.
    """
    inputs = jnp.concatenate([tail.token[:, None], targets[:, :-1]], axis=1)
    positions = tail.position[:, None] + jnp.arange(targets.shape[1], dtype=jnp.int32)[None]
    return inputs, positions


def _check_batch(model_cfg: RWKVConfig, batch: Batch) -> None:
    check_right_padded(model_cfg, batch.prompts, batch.prompt_lengths, what="batch.prompts")
    check_tokens(model_cfg, batch.targets, ndim=2, what="batch.targets")
    if np.shape(batch.targets)[0] != np.shape(batch.prompts)[0]:
        raise ValueError(
            f"batch.targets has {np.shape(batch.targets)[0]} rows, batch.prompts "
            f"{np.shape(batch.prompts)[0]}"
        )
    if np.shape(batch.loss_mask) != np.shape(batch.targets):
        raise ValueError(
            f"batch.loss_mask shape {np.shape(batch.loss_mask)} != batch.targets shape "
            f"{np.shape(batch.targets)}"
        )


def sg_match_loss(
    model_cfg: RWKVConfig,
    params: dict,
    prosg_cfg: ProSGConfig,
    deltas: Deltas,
    *,
    tail: PromptTail,
    batch: Batch,
) -> Float[Array, ""]:
    """Pulls each ``ΔW = s U Vᵀ`` toward the rank-r true update ``-η ∂L_cont/∂W``.

    The true per-example gradient of the continuation loss is taken at the
    current deltas and held fixed (training-time only; Jaderberg et al.
    2016), factored from one backward pass and truncated to rank r. The
    error is the squared Frobenius distance normalised by the target's
    squared norm, computed from ``R × R`` Gram matrices; it is averaged over
    the examples that have a scored token (and a non-zero target) and then
    over targets. With no such example it is 0.
    """
    names = tuple(deltas)
    inputs, positions = continuation_inputs(tail, batch.targets)

    def losses(logits):
        return per_example_ce(logits, batch.targets, batch.loss_mask)

    grads = factored_grads(
        model_cfg,
        jax.lax.stop_gradient(params),
        inputs,
        jax.lax.stop_gradient(tail.state),
        names=names,
        example_losses=losses,
        deltas=jax.lax.stop_gradient(deltas),
        positions=positions,
    )
    scored = jnp.asarray(batch.loss_mask).sum(-1) > 0
    total = jnp.zeros(())
    for i, n in enumerate(names):
        u_t, v_t = jax.lax.stop_gradient(
            truncate_factored(
                -prosg_cfg.sg_match_lr * grads[n].err,
                grads[n].inputs,
                prosg_cfg.rank,
                key=jax.random.fold_in(jax.random.key(prosg_cfg.sketch_seed), i),
                iters=prosg_cfg.power_iters,
            )
        )
        d = deltas[n]
        scale = jnp.asarray(d.scale, jnp.float32)
        u = d.u * (scale.reshape(-1, 1, 1) if scale.ndim else scale)
        target_sq = factored_inner(u_t, v_t, u_t, v_t)
        err = factored_inner(u, d.v, u, d.v) - 2 * factored_inner(u, d.v, u_t, v_t) + target_sq
        valid = scored & (target_sq > 0)
        rel = jnp.maximum(err, 0.0) / jnp.where(valid, target_sq, 1.0)
        total = total + jnp.where(valid, rel, 0.0).sum() / jnp.maximum(valid.sum(), 1)
    return total / len(names)


FORGET_STATES = ("empty", "other")


def _forget_rows(model_cfg: RWKVConfig, state, forget: Bool[Array, " B"], replacement: str):
    """``state`` with the rows marked in ``forget`` replaced: by the empty state, or
    (``"other"``) by the state the previous row's prompt left (row 0 takes the last's)."""
    if replacement == "empty":
        fresh = init_state(model_cfg, forget.shape[0])
    else:
        fresh = jax.tree.map(lambda s: jnp.roll(s, 1, axis=0), state)

    def pick(new, kept):
        return jnp.where(forget.reshape((-1,) + (1,) * (kept.ndim - 1)), new, kept)

    return jax.tree.map(pick, fresh, state)


def continuation_logits(
    model_cfg: RWKVConfig,
    params: dict,
    sg_params: dict | None,
    prosg_cfg: ProSGConfig,
    *,
    batch: Batch,
    forget: Bool[Array, " B"] | None = None,
    forget_state: str = "empty",
) -> tuple[Float[Array, "B K V"], Deltas | None, PromptTail]:
    """Logits for ``batch.targets`` (the replay, then teacher forcing), the deltas and the tail.

    ``forget`` (training-time augmentation) marks rows whose continuation starts
    from another recurrent state than the prompt's: there the deltas alone carry
    the prompt, as they must once a long generation has overwritten the state.
    ``forget_state`` says which: ``"empty"``, or ``"other"``, the state another
    row's prompt left, which holds other facts, as one overwritten by a
    generation that wrote unrelated ones does.
    """
    if forget_state not in FORGET_STATES:
        raise ValueError(f"forget_state={forget_state!r}; choose from {FORGET_STATES}")
    if forget_state == "other" and np.shape(batch.prompts)[0] < 2:
        raise ValueError("forget_state='other' needs a batch of at least 2 rows")
    deltas, tail = derive(
        model_cfg,
        params,
        sg_params,
        prosg_cfg,
        prompts=batch.prompts,
        prompt_lengths=batch.prompt_lengths,
    )
    if forget is not None:
        if np.shape(forget) != np.shape(batch.prompt_lengths):
            raise ValueError(
                f"forget shape {np.shape(forget)} != batch {np.shape(batch.prompt_lengths)}"
            )
        forgotten = _forget_rows(model_cfg, tail.state, jnp.asarray(forget, bool), forget_state)
        tail = tail._replace(state=forgotten)
    inputs, positions = continuation_inputs(tail, batch.targets)
    logits, _, _ = forward_core(
        model_cfg, params, inputs, tail.state, deltas=deltas, positions=positions
    )
    return logits, deltas, tail


def continuation_loss(
    model_cfg: RWKVConfig,
    params: dict,
    sg_params: dict | None,
    prosg_cfg: ProSGConfig,
    *,
    batch: Batch,
    forget: Bool[Array, " B"] | None = None,
    forget_state: str = "empty",
    answer_mask: Float[Array, "B K"] | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """LM loss on the continuation with the prompt's deltas applied from its first token.

    The base model is frozen (``stop_gradient``) unless ``prosg_cfg.train_base``.
    With ``distill_weight = λ > 0`` the LM loss is mixed with the teacher's KL
    (:func:`distill_kl`): ``(1 - λ) CE + λ KL``. With ``sg_match_weight > 0``
    (``method="prosg"``) the synthetic-gradient matching loss is added.
    ``forget``, ``forget_state``: see :func:`continuation_logits`.

    Returns:
      ``(loss, metrics)`` with metrics ``ce`` (mean over every scored token),
      ``sg_match``, with ``distill_weight > 0`` ``distill_kl``; with
      ``answer_mask`` (1 on the answer tokens of ``batch.targets``) also
      ``answer_correct`` and ``answer_count``, the argmax hits among those
      tokens and their number, from this same forward.
    """
    check_params(model_cfg, params)
    _check_batch(model_cfg, batch)
    check_sg_params(model_cfg, prosg_cfg, sg_params)
    if not prosg_cfg.train_base:
        params = jax.lax.stop_gradient(params)
    logits, deltas, tail = continuation_logits(
        model_cfg,
        params,
        sg_params,
        prosg_cfg,
        batch=batch,
        forget=forget,
        forget_state=forget_state,
    )
    ce = masked_cross_entropy(logits, batch.targets, batch.loss_mask)
    metrics = {"ce": ce}
    loss = ce
    if prosg_cfg.distill_weight > 0:
        kl = distill_kl(model_cfg, params, batch=batch, logits=logits)
        metrics["distill_kl"] = kl
        loss = (1.0 - prosg_cfg.distill_weight) * ce + prosg_cfg.distill_weight * kl
    match = jnp.zeros(())
    if prosg_cfg.sg_match_weight > 0 and prosg_cfg.method == "prosg":
        match = sg_match_loss(model_cfg, params, prosg_cfg, deltas, tail=tail, batch=batch)
    metrics["sg_match"] = match
    if answer_mask is not None:
        metrics.update(answer_counts(logits, batch.targets, answer_mask))
    return loss + prosg_cfg.sg_match_weight * match, metrics


def distill_kl(
    model_cfg: RWKVConfig, params: dict, *, batch: Batch, logits: Float[Array, "B K V"]
) -> Float[Array, ""]:
    """Mean ``KL(teacher ‖ model)`` over the scored tokens of ``batch``.

    The teacher is the base without deltas reading the continuation from the
    prompt's own state (held fixed): what the model should say where the state
    still holds the prompt, and, for rows continued from another state, what
    the deltas must restore.
    """
    params = jax.lax.stop_gradient(params)
    _, tail = derive(
        model_cfg,
        params,
        None,
        ProSGConfig(method="none"),
        prompts=batch.prompts,
        prompt_lengths=batch.prompt_lengths,
    )
    inputs, positions = continuation_inputs(tail, batch.targets)
    teacher, _, _ = forward_core(model_cfg, params, inputs, tail.state, positions=positions)
    p_log = jax.nn.log_softmax(jax.lax.stop_gradient(teacher).astype(jnp.float32), -1)
    q_log = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    kl = (jnp.exp(p_log) * (p_log - q_log)).sum(-1)
    mask = jnp.asarray(batch.loss_mask, jnp.float32)
    return (kl * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def answer_counts(
    logits: Float[Array, "B K V"], targets: Int[Array, "B K"], answer_mask: Float[Array, "B K"]
) -> dict[str, Array]:
    """``answer_correct`` (argmax hits on answer tokens) and ``answer_count`` (answer tokens)."""
    correct = (jnp.argmax(logits, -1) == targets) * answer_mask
    return {"answer_correct": correct.sum(), "answer_count": answer_mask.sum()}
