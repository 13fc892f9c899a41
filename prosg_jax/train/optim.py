"""AdamW with warmup + cosine, global-norm clipping, masked weight decay, accumulation."""

from __future__ import annotations

import jax
import optax

# Path components whose leaves never get weight decay: norms, embeddings, scales.
_NO_DECAY = ("emb", "ln0", "ln1", "ln2", "ln_out", "ln_x", "ln", "ln_read", "scale", "r_k")


def decay_mask(params):
    """True on the matrices that get weight decay: 2-D or larger, not a norm/embedding/scale."""

    def keep(path, leaf) -> bool:
        names = {str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path}
        return leaf.ndim >= 2 and not names.intersection(_NO_DECAY)

    return jax.tree_util.tree_map_with_path(keep, params)


def schedule(train_cfg, stage_cfg) -> optax.Schedule:
    """Linear warmup to ``lr``, then cosine to ``min_lr_ratio * lr``, over optimizer updates."""
    accum = train_cfg.grad_accum
    updates = max(1, -(-stage_cfg.steps // accum))
    warmup = min(stage_cfg.warmup_steps // accum, updates - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=stage_cfg.lr / (warmup + 1),  # the first update already moves
        peak_value=stage_cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(updates, warmup + 1),
        end_value=stage_cfg.lr * train_cfg.min_lr_ratio,
    )


def make_optimizer(train_cfg, stage_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(optimizer, learning-rate schedule)`` for one stage.

    Parameters stay float32 (master weights); the loss casts them to the
    model's compute dtype, so updates are applied in float32.
    """
    lr = schedule(train_cfg, stage_cfg)
    opt = optax.chain(
        optax.clip_by_global_norm(train_cfg.grad_clip),
        optax.adamw(
            lr,
            b1=train_cfg.b1,
            b2=train_cfg.b2,
            eps=train_cfg.eps,
            weight_decay=train_cfg.weight_decay,
            mask=decay_mask,
        ),
    )
    if train_cfg.grad_accum > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=train_cfg.grad_accum)
    return opt, lr
