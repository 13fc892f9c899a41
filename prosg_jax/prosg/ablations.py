"""The methods behind ``ProSGConfig.method``, and the one dispatch over them.

- ``none``: the base model alone.
- ``prosg``: synthetic-gradient deltas (:mod:`.sg`, :mod:`.compress`).
- ``true_grad`` (test-time training): ``k`` SGD steps of size ``η`` on each
  prompt's own next-token loss, per example, with real gradients. Each step's
  per-example gradient comes factored from one backward pass
  (:mod:`.grads`); the accumulated update stays factored (its factors are
  concatenated, rank ``k·P``), later steps see it through the model's
  low-rank delta path, and it is truncated to rank r once at the end.
- ``repeat_prompt``: the prompt is read twice ("just read twice"); no deltas.

Axis legend: ``B`` batch, ``P`` prompt length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.lowrank import LowRankDelta, truncate_factored
from prosg_jax.models.layers import Deltas
from prosg_jax.models.lm import check_params, init_state
from prosg_jax.prosg.grads import factored_grads, per_example_ce
from prosg_jax.prosg.sg import check_sg_params, synthetic_deltas
from prosg_jax.prosg.states import (
    PromptTail,
    check_right_padded,
    is_ragged,
    join_rows,
    left_align,
    prompt_states,
    prompt_tail,
    right_padded,
)


def repeat_prompts(
    prompts: Int[Array, "B P"], prompt_lengths: Int[Array, " B"]
) -> tuple[Int[Array, "B 2P"], Int[Array, " B"]]:
    """Right-padded ``p ++ p`` of width ``2P`` and lengths ``2L``."""
    return join_rows(prompts, prompt_lengths, prompts, prompt_lengths)


def true_grad_deltas(
    model_cfg: RWKVConfig,
    params: dict,
    prosg_cfg: ProSGConfig,
    prompts: Int[Array, "B P"],
    *,
    prompt_lengths: Int[Array, " B"],
) -> Deltas:
    """Test-time training: ``k`` SGD steps on each prompt's own next-token loss.

    Each example takes ``true_grad_steps`` steps of size ``true_grad_lr`` on its
    target matrices (per example: examples never share an update); the total
    update is truncated to rank r by randomised subspace iteration.
    """
    lengths = jnp.asarray(prompt_lengths, jnp.int32)
    tokens, positions, mask = left_align(jnp.asarray(prompts, jnp.int32), lengths)
    names = prosg_cfg.targets(model_cfg)
    pairs = mask[:, :-1] & mask[:, 1:]  # real token t predicts real token t+1

    def prompt_losses(logits):
        return per_example_ce(logits[:, :-1], tokens[:, 1:], pairs)

    fresh = init_state(model_cfg, tokens.shape[0])
    # Σ_t (-η δ_t) x_tᵀ over all steps, as [B, k·P, O] and [B, k·P, I] factors.
    errs: dict[str, list] = {n: [] for n in names}
    xs: dict[str, list] = {n: [] for n in names}
    deltas = None
    for step in range(prosg_cfg.true_grad_steps):
        if step:
            deltas = {
                n: LowRankDelta(
                    u=jnp.swapaxes(jnp.concatenate(errs[n], 1), 1, 2),
                    v=jnp.swapaxes(jnp.concatenate(xs[n], 1), 1, 2),
                    scale=jnp.ones((), jnp.float32),
                )
                for n in names
            }
        grads = factored_grads(
            model_cfg,
            params,
            tokens,
            fresh,
            names=names,
            example_losses=prompt_losses,
            deltas=deltas,
            positions=positions,
        )
        for n in names:
            errs[n].append(-prosg_cfg.true_grad_lr * jnp.where(mask[..., None], grads[n].err, 0.0))
            xs[n].append(grads[n].inputs)
    out = {}
    for i, n in enumerate(names):
        u, v = truncate_factored(
            jnp.concatenate(errs[n], 1),
            jnp.concatenate(xs[n], 1),
            prosg_cfg.rank,
            key=jax.random.fold_in(jax.random.key(prosg_cfg.sketch_seed), i),
            iters=prosg_cfg.power_iters,
        )
        out[n] = LowRankDelta(u=u, v=v, scale=jnp.ones((), jnp.float32))
    return out


def _segments_side_by_side(x: Float[Array, "BN M r"], batch: int) -> Float[Array, "B M Nr"]:
    """``[B*n, M, r]`` factors of each row's ``n`` segments → ``[B, M, n*r]``, side by side."""
    n = x.shape[0] // batch
    return x.reshape(batch, n, *x.shape[1:]).transpose(0, 2, 1, 3).reshape(batch, x.shape[1], -1)


def segment_deltas(
    model_cfg: RWKVConfig,
    params: dict,
    sg_params: dict,
    prosg_cfg: ProSGConfig,
    *,
    prompts: Int[Array, "B P"],
    prompt_lengths: Int[Array, " B"],
) -> Deltas:
    """SG deltas of each ``segment_len``-token segment of the prompts, summed.

    Each segment is read alone from a fresh state, as a session derives a
    turn; the sum is the concatenation of the segments' factors (rank
    ``segments × r``), which is what :func:`prosg_jax.lowrank.add` keeps
    within a session's budget. Segments past a prompt's end add nothing.
    """
    width = prosg_cfg.segment_len
    batch, p = prompts.shape
    n = -(-p // width)
    segments = jnp.pad(prompts, ((0, 0), (0, n * width - p))).reshape(batch * n, width)
    lengths = jnp.clip(prompt_lengths[:, None] - jnp.arange(n) * width, 0, width).reshape(-1)
    states = prompt_states(
        model_cfg,
        params,
        segments,
        jnp.maximum(lengths, 1),  # an empty segment is read as one pad, then dropped
        targets=prosg_cfg.targets(model_cfg),
    )
    real = (lengths > 0).astype(jnp.float32)[:, None, None]
    out = {}
    for name, d in synthetic_deltas(model_cfg, sg_params, prosg_cfg, states).items():
        u = d.u * real
        out[name] = LowRankDelta(
            u=_segments_side_by_side(u, batch), v=_segments_side_by_side(d.v, batch), scale=d.scale
        )
    return out


def derive(
    model_cfg: RWKVConfig,
    params: dict,
    sg_params: dict | None,
    prosg_cfg: ProSGConfig,
    *,
    prompts: Int[Array, "B P"],
    prompt_lengths: Int[Array, " B"],
) -> tuple[Deltas | None, PromptTail]:
    """:func:`derive_deltas` without the input checks (for use under ``jit``)."""
    prompts = jnp.asarray(prompts, jnp.int32)
    lengths = jnp.asarray(prompt_lengths, jnp.int32)
    if prosg_cfg.method == "repeat_prompt":
        prompts, lengths = repeat_prompts(prompts, lengths)
    if prosg_cfg.method in ("none", "repeat_prompt"):
        return None, prompt_tail(model_cfg, params, prompts, lengths)
    if prosg_cfg.method == "prosg" and prosg_cfg.segment_len:
        deltas = segment_deltas(
            model_cfg, params, sg_params, prosg_cfg, prompts=prompts, prompt_lengths=lengths
        )
        return deltas, prompt_tail(model_cfg, params, prompts, lengths)
    if prosg_cfg.method == "prosg":
        states = prompt_states(
            model_cfg, params, prompts, lengths, targets=prosg_cfg.targets(model_cfg)
        )
        return synthetic_deltas(model_cfg, sg_params, prosg_cfg, states), states.tail
    deltas = true_grad_deltas(model_cfg, params, prosg_cfg, prompts, prompt_lengths=lengths)
    return deltas, prompt_tail(model_cfg, params, prompts, lengths)


#: :func:`derive` compiled once per model and ProSG config (its static arguments).
derive_compiled = jax.jit(derive, static_argnames=("model_cfg", "prosg_cfg"))


def derive_deltas(
    model_cfg: RWKVConfig,
    params: dict,
    sg_params: dict | None,
    prosg_cfg: ProSGConfig,
    *,
    prompts,
    prompt_lengths=None,
) -> tuple[Deltas | None, PromptTail]:
    """Per-example deltas for the prompts, and where reading resumes after them.

    Args:
      model_cfg, params: the (frozen) base model.
      sg_params: SG-module parameters from :func:`init` (``method="prosg"``
        only; ignored otherwise).
      prosg_cfg: method, rank, targets and pooling.
      prompts: ``int32[B, P]`` right-padded prompts, or a list of id lists.
      prompt_lengths: ``int32[B]`` real lengths, each in ``[1, P]`` (with an
        array only).

    Returns:
      ``(deltas, tail)``: ``deltas`` maps target path → :class:`LowRankDelta`
      (``None`` for ``none`` and ``repeat_prompt``). ``tail`` holds the base
      model's state before each prompt's last token and that token: replaying
      it under the deltas (``forward(cfg, params, tail.token[:, None],
      tail.state, deltas=deltas, positions=tail.position[:, None])``) gives
      the logits for the first token after the prompt. For ``prosg`` no
      gradient is taken anywhere.
    """
    check_params(model_cfg, params)
    if is_ragged(prompts):
        prompts, prompt_lengths = right_padded(model_cfg, prompts, prompt_lengths)
    else:
        check_right_padded(model_cfg, prompts, prompt_lengths)
    check_sg_params(model_cfg, prosg_cfg, sg_params)
    return derive(
        model_cfg, params, sg_params, prosg_cfg, prompts=prompts, prompt_lengths=prompt_lengths
    )
