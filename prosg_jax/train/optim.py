"""AdamW with warmup, stable and cosine phases, clipping, masked weight decay, accumulation."""

from __future__ import annotations

import jax
import optax

from prosg_jax.errors import UserError

# Path components whose leaves never get weight decay: norms, embeddings, scales.
_NO_DECAY = ("emb", "ln0", "ln1", "ln2", "ln_out", "ln_x", "ln", "ln_read", "scale", "r_k")


def decay_mask(params):
    """True on the matrices that get weight decay: 2-D or larger, not a norm/embedding/scale."""

    def keep(path, leaf) -> bool:
        names = {str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path}
        return leaf.ndim >= 2 and not names.intersection(_NO_DECAY)

    return jax.tree_util.tree_map_with_path(keep, params)


def schedule(train_cfg, stage_cfg) -> optax.Schedule:
    """Linear warmup to ``lr``, a constant stretch, then cosine to ``min_lr_ratio * lr``.

    The cosine covers the last ``decay_frac`` of the updates after warmup: 1.0 is
    the usual warmup + cosine; a smaller fraction is warmup-stable-decay, which
    keeps the learning rate high for longer (recall in the small byte models
    only appears after many updates at a high rate).
    """
    if not 0.0 < train_cfg.decay_frac <= 1.0:
        raise UserError(f"config.train.decay_frac={train_cfg.decay_frac} must be in (0, 1]")
    accum = train_cfg.grad_accum
    updates = max(1, -(-stage_cfg.steps // accum))
    warmup = min(stage_cfg.warmup_steps // accum, updates - 1)
    decay = max(1, round(train_cfg.decay_frac * (updates - warmup)))
    stable = updates - warmup - decay
    return optax.join_schedules(
        [
            # The first update already moves: warmup starts at lr / (warmup + 1).
            optax.linear_schedule(stage_cfg.lr / (warmup + 1), stage_cfg.lr, warmup),
            optax.constant_schedule(stage_cfg.lr),
            optax.cosine_decay_schedule(stage_cfg.lr, decay, alpha=train_cfg.min_lr_ratio),
        ],
        boundaries=[warmup, warmup + stable],
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
