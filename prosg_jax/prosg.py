"""Prompt Synthetic Gradients: prompt states → rank-r synthetic gradients → deltas.

For every target matrix ``W`` (``d_out × d_in``) of the frozen base model:

1. *Prompt states* — one parallel forward over the prompt records ``W``'s
   inputs ``x_t``, the residual stream ``h_t`` entering ``W``'s block and the
   block's final recurrent state ``S_P`` (:func:`prompt_states`).
2. *Synthetic gradient* — the SG module predicts the output-side error
   ``δ̂_t = g_φ(h_t, S_P)``: with ``z_t = LN(h_t)`` and a state read-out
   ``c_t = LN(read(S_P, W_s z_t))``, ``δ̂_t = W_2 gelu(W_1 [z_t; c_t] + b_1)``.
   The read-out is ``S_P q_t`` per head for RWKV-7 (the state queried with
   ``q_t``) and ``(a_P / b_P) ⊙ q_t`` for RWKV-4 (the WKV average).
3. *Rank-r compression* of ``Σ_t δ̂_t x_tᵀ`` with grad-free linear algebra:
   ``"query"``: ``a_{j,t} = softmax_t(q_j · κ(h_t) / √k)`` over real prompt
   positions, ``U_j = Σ_t a_{j,t} δ̂_t``, ``V_j = Σ_t a_{j,t} x_t``;
   ``"sketch"``: ``U = Σ_t δ̂_t s_tᵀ``, ``V = Σ_t x_t s_tᵀ`` with a Gaussian
   ``s_t ~ N(0, I/r)`` drawn from the token's position in its prompt
   (unbiased: ``E[U Vᵀ] = Σ_t δ̂_t x_tᵀ``);
   ``"power"``: the best rank-r truncation by subspace iteration on the
   factored form, never forming ``d_out × d_in``.
4. ``ΔW = s · U Vᵀ`` with a learned per-target scale ``s`` initialised to 0,
   so an untrained SG module is exactly the base model. Deltas apply per
   example in every later token (``x Wᵀ + s (x V) Uᵀ``).

Ablations behind ``ProSGConfig.method``: ``none``, ``prosg``, ``true_grad``
(real per-example gradient steps on the prompt's next-token loss, truncated
to rank r) and ``repeat_prompt`` (the prompt read twice, no deltas).

Prompts are given right-padded with their lengths and left-aligned here, so
that every row's last column is its last real token; pads sit at position 0
and the model's reset rule makes them invisible.

Axis legend: ``B`` batch, ``P`` prompt length, ``K`` continuation length,
``C`` d_model, ``I`` d_in, ``O`` d_out, ``R`` rank, ``V`` vocab.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.lowrank import LowRankDelta, truncate, truncate_factored, weight
from prosg_jax.models.layers import layer_norm, ln_params
from prosg_jax.models.lm import State, check_tokens, forward_core, init_state
from prosg_jax.sampling import check_sampling_args, run_decode, start_state

Deltas = dict[str, LowRankDelta]


class PromptStates(NamedTuple):
    """Everything ProSG reads from one parallel pass over the prompts.

    Attributes:
      inputs: target path → its inputs ``x_t`` ``[B, P, I]``.
      hidden: ``"blocks.i"`` → residual stream entering block i ``[B, P, C]``.
      mask: ``[B, P]`` true at real prompt tokens (left-aligned).
      positions: ``[B, P]`` each token's index within its prompt (pads: 0).
      state: the recurrent state after each prompt.
      logits: ``[B, P, V]`` the base model's logits over the prompt.
    """

    inputs: dict[str, Float[Array, "B P I"]]
    hidden: dict[str, Float[Array, "B P C"]]
    mask: Bool[Array, "B P"]
    positions: Int[Array, "B P"]
    state: State
    logits: Float[Array, "B P V"]


# --------------------------------------------------------------------------- prompts


def _check_sg_params(model_cfg: RWKVConfig, prosg_cfg: ProSGConfig, sg_params) -> None:
    if prosg_cfg.method != "prosg":
        return
    if sg_params is None:
        raise ValueError("method='prosg' needs sg_params from prosg_jax.prosg.init")
    missing = [t for t in prosg_cfg.targets(model_cfg) if t not in sg_params]
    if missing:
        raise ValueError(
            f"sg_params has no entry for target(s) {missing[:3]}: initialise them with the "
            "same ProSGConfig (targets)"
        )


def _check_prompts(cfg: RWKVConfig, prompts, prompt_lengths) -> None:
    check_tokens(cfg, prompts, ndim=2, what="prompts")
    if np.shape(prompt_lengths) != np.shape(prompts)[:1]:
        raise ValueError(
            f"prompt_lengths shape {np.shape(prompt_lengths)} != batch {np.shape(prompts)[:1]}"
        )
    if not isinstance(prompt_lengths, jax.core.Tracer):
        lengths = np.asarray(prompt_lengths)
        width = np.shape(prompts)[1]
        if lengths.min() < 1:
            raise ValueError(f"prompt {int(lengths.argmin())} is empty; prompts need >= 1 token")
        if lengths.max() > width:
            raise ValueError(f"a prompt length {int(lengths.max())} exceeds the width {width}")


def left_align(
    prompts: Int[Array, "B P"], prompt_lengths: Int[Array, " B"]
) -> tuple[Int[Array, "B P"], Int[Array, "B P"], Bool[Array, "B P"]]:
    """Right-padded prompts → ``(left-aligned tokens, positions, mask)``."""
    width = prompts.shape[1]
    t = jnp.arange(width)[None, :]
    shift = width - prompt_lengths[:, None]  # pads in front of each row
    mask = t >= shift
    src = jnp.where(mask, t - shift, 0)
    tokens = jnp.where(mask, jnp.take_along_axis(prompts, src, axis=1), 0)
    return tokens, jnp.where(mask, t - shift, 0).astype(jnp.int32), mask


def prompt_states(
    cfg: RWKVConfig,
    params: dict,
    prompts: Int[Array, "B P"],
    prompt_lengths: Int[Array, " B"],
    targets: tuple[str, ...],
) -> PromptStates:
    """Runs the base model once over the prompts and keeps what ProSG needs."""
    tokens, positions, mask = left_align(
        jnp.asarray(prompts, jnp.int32), jnp.asarray(prompt_lengths, jnp.int32)
    )
    logits, state, taps = forward_core(
        cfg, params, tokens, init_state(cfg, tokens.shape[0]), None, positions, capture=True
    )
    layers = sorted({t.rsplit(".", 2)[0] for t in targets})
    return PromptStates(
        inputs={t: taps[t] for t in targets},
        hidden={b: taps[f"{b}.hidden"] for b in layers},
        mask=mask,
        positions=positions,
        state=state,
        logits=logits,
    )


def _repeat_prompts(prompts, prompt_lengths):
    """Right-padded ``p ++ p`` of width ``2P`` and lengths ``2L``."""
    width = prompts.shape[1]
    t = jnp.arange(2 * width)[None, :]
    length = prompt_lengths[:, None]
    src = jnp.where(t < length, t, t - length)
    src = jnp.clip(src, 0, width - 1)
    doubled = jnp.where(t < 2 * length, jnp.take_along_axis(prompts, src, axis=1), 0)
    return doubled, 2 * prompt_lengths


# --------------------------------------------------------------------------- SG module


def target_shape(cfg: RWKVConfig, name: str) -> tuple[int, int]:
    """``(d_out, d_in)`` of a target path such as ``"blocks.0.ffn.key"``."""
    matrix = name.split(".", 2)[2]
    c, f = cfg.d_model, cfg.d_ffn
    return {"ffn.key": (f, c), "ffn.value": (c, f)}.get(matrix, (c, c))


def init(key: Array, model_cfg: RWKVConfig, prosg_cfg: ProSGConfig) -> dict:
    """SG-module parameters ``φ``: one small predictor and pooler per target.

    The per-target ``scale`` starts at 0, so deltas start as exactly zero; the
    output layer starts small rather than zero so that gradients reach every
    parameter once the scale has moved.
    """
    c, hid, kd = model_cfg.d_model, prosg_cfg.sg_hidden, prosg_cfg.key_dim
    sg = {}
    for i, name in enumerate(prosg_cfg.targets(model_cfg)):
        d_out, _ = target_shape(model_cfg, name)
        k = jax.random.split(jax.random.fold_in(key, i), 5)
        sg[name] = {
            "ln": ln_params(c),
            "ln_read": ln_params(c),
            "w_state": jax.random.normal(k[0], (c, c)) / math.sqrt(c),
            "w_in": jax.random.normal(k[1], (2 * c, hid)) / math.sqrt(2 * c),
            "b_in": jnp.zeros((hid,)),
            "w_out": jax.random.normal(k[2], (hid, d_out)) / math.sqrt(hid),
            "kappa": jax.random.normal(k[3], (c, kd)) / math.sqrt(c),
            "queries": jax.random.normal(k[4], (prosg_cfg.rank, kd)),
            "scale": jnp.zeros(()),
        }
    return sg


def _read_state(cfg: RWKVConfig, layer_state, q: Float[Array, "B P C"]) -> Float[Array, "B P C"]:
    """What the block's final recurrent state says about query ``q_t``."""
    if cfg.version == 7:
        b, p, _ = q.shape
        qh = q.reshape(b, p, cfg.n_head, cfg.head_size)
        return jnp.einsum("bhvk,bphk->bphv", layer_state.wkv, qh).reshape(b, p, -1)
    mean_v = layer_state.att_a / jnp.maximum(layer_state.att_b, 1e-30)  # WKV average
    return mean_v[:, None, :] * q


def predict_errors(
    cfg: RWKVConfig, sg: dict, h: Float[Array, "B P C"], layer_state
) -> tuple[Float[Array, "B P O"], Float[Array, "B P C"]]:
    """``(δ̂_t, z_t)``: the predicted output-side errors and the normalised hiddens."""
    z = layer_norm(h.astype(jnp.float32), sg["ln"])
    read = layer_norm(_read_state(cfg, layer_state, z @ sg["w_state"]), sg["ln_read"])
    hidden = jax.nn.gelu(jnp.concatenate([z, read], -1) @ sg["w_in"] + sg["b_in"])
    return hidden @ sg["w_out"], z


def _sketch(positions, mask, rank: int, seed: int) -> Float[Array, "B P R"]:
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
    z: Float[Array, "B P C"],
    mask: Bool[Array, "B P"],
    positions: Int[Array, "B P"],
) -> tuple[Float[Array, "B O R"], Float[Array, "B I R"]]:
    """Rank-r factors ``(U, V)`` of ``Σ_t δ̂_t x_tᵀ`` over real prompt positions."""
    x = x.astype(jnp.float32)
    if prosg_cfg.pooling == "query":
        kappa = z @ sg["kappa"]
        scores = jnp.einsum("rk,bpk->brp", sg["queries"], kappa) / math.sqrt(kappa.shape[-1])
        scores = jnp.where(mask[:, None, :], scores, -jnp.inf)  # padding never contributes
        attn = jax.nn.softmax(scores, axis=-1)
        return jnp.einsum("brp,bpo->bor", attn, delta_hat), jnp.einsum("brp,bpi->bir", attn, x)
    m = mask[..., None]
    if prosg_cfg.pooling == "sketch":
        s = _sketch(positions, mask, prosg_cfg.rank, prosg_cfg.sketch_seed)
        return jnp.einsum("bpo,bpr->bor", delta_hat, s), jnp.einsum("bpi,bpr->bir", x, s)
    return truncate_factored(
        jnp.where(m, delta_hat, 0.0),
        jnp.where(m, x, 0.0),
        prosg_cfg.rank,
        key=jax.random.key(prosg_cfg.sketch_seed),
        iters=prosg_cfg.power_iters,
    )


def synthetic_deltas(
    model_cfg: RWKVConfig, sg_params: dict, prosg_cfg: ProSGConfig, states: PromptStates
) -> Deltas:
    """Per-example ``ΔW = s U Vᵀ`` for every target, from prompt states (no gradients)."""
    deltas = {}
    for name in prosg_cfg.targets(model_cfg):
        block = name.rsplit(".", 2)[0]
        layer = int(block.split(".")[1])
        sg = sg_params[name]
        delta_hat, z = predict_errors(model_cfg, sg, states.hidden[block], states.state[layer])
        u, v = compress(
            prosg_cfg, sg, delta_hat, states.inputs[name], z, states.mask, states.positions
        )
        deltas[name] = LowRankDelta(u=u, v=v, scale=sg["scale"])
    return deltas


# --------------------------------------------------------------------------- true gradient


def _with_dense_deltas(params: dict, dense: dict[str, Array]) -> dict:
    """``params`` with ``W + ΔW`` at the targets (for one example, inside vmap)."""
    out = jax.tree.map(lambda x: x, params)  # new containers, shared leaves
    for name, d in dense.items():
        node = out
        for part in name.split(".")[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        holder = dict(node[name.split(".")[-1]])
        holder["weight"] = holder["weight"] + d.astype(holder["weight"].dtype)
        node[name.split(".")[-1]] = holder
    return out


def masked_cross_entropy(logits, targets, mask) -> Float[Array, ""]:
    """Mean next-token cross-entropy over ``mask`` (0 when the mask is empty)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def per_example_grads(
    cfg: RWKVConfig, params: dict, dense: dict[str, Array], loss_one
) -> dict[str, Array]:
    """``∂ loss_b / ∂W`` for every target and example, evaluated at ``W + ΔW_b``.

    Args:
      dense: target → per-example dense deltas ``[B, O, I]``.
      loss_one: ``(params, b) -> scalar`` loss of example ``b`` alone.
    """

    def one(dense_b, b):
        return jax.grad(lambda d: loss_one(_with_dense_deltas(params, d), b))(dense_b)

    batch = next(iter(dense.values())).shape[0]
    return jax.vmap(one)(dense, jnp.arange(batch))


def true_grad_deltas(
    model_cfg: RWKVConfig, params: dict, prosg_cfg: ProSGConfig, tokens, positions, mask
) -> Deltas:
    """Test-time training: ``k`` SGD steps on each prompt's own next-token loss.

    Each example takes ``true_grad_steps`` steps of size ``true_grad_lr`` on its
    target matrices (per example, so examples never share an update); the total
    update is then truncated to rank r by randomised subspace iteration.
    """
    targets = prosg_cfg.targets(model_cfg)
    pair_mask = mask[:, :-1] & mask[:, 1:]  # predict real token t+1 from real token t

    def loss_one(p, b):
        logits, _, _ = forward_core(
            model_cfg,
            p,
            tokens[b][None],
            init_state(model_cfg, 1),
            None,
            positions[b][None],
            capture=False,
        )
        return masked_cross_entropy(logits[:, :-1], tokens[b][None, 1:], pair_mask[b][None])

    batch = tokens.shape[0]
    dense = {n: jnp.zeros((batch, *weight(params, n).shape), jnp.float32) for n in targets}
    for _ in range(prosg_cfg.true_grad_steps):
        grads = per_example_grads(model_cfg, params, dense, loss_one)
        dense = {n: dense[n] - prosg_cfg.true_grad_lr * grads[n] for n in targets}
    deltas = {}
    for i, n in enumerate(targets):
        u, v = truncate(
            dense[n],
            prosg_cfg.rank,
            key=jax.random.fold_in(jax.random.key(prosg_cfg.sketch_seed), i),
            iters=prosg_cfg.power_iters,
        )
        deltas[n] = LowRankDelta(u=u, v=v, scale=jnp.ones((), jnp.float32))
    return deltas


# --------------------------------------------------------------------------- entry points


def _derive(model_cfg, params, sg_params, prosg_cfg, prompts, prompt_lengths):
    """``(deltas | None, state after the prompt, last prompt logits [B, V])``."""
    prompts = jnp.asarray(prompts, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    if prosg_cfg.method == "repeat_prompt":
        prompts, prompt_lengths = _repeat_prompts(prompts, prompt_lengths)
    if prosg_cfg.method in ("none", "repeat_prompt"):
        tokens, positions, _ = left_align(prompts, prompt_lengths)
        logits, state, _ = forward_core(
            model_cfg,
            params,
            tokens,
            init_state(model_cfg, tokens.shape[0]),
            None,
            positions,
            capture=False,
        )
        return None, state, logits[:, -1]
    targets = prosg_cfg.targets(model_cfg)
    states = prompt_states(model_cfg, params, prompts, prompt_lengths, targets)
    if prosg_cfg.method == "prosg":
        deltas = synthetic_deltas(model_cfg, sg_params, prosg_cfg, states)
    else:  # true_grad
        tokens, positions, mask = left_align(prompts, prompt_lengths)
        deltas = true_grad_deltas(model_cfg, params, prosg_cfg, tokens, positions, mask)
    return deltas, states.state, states.logits[:, -1]


def derive_deltas(
    model_cfg: RWKVConfig,
    params: dict,
    sg_params: dict | None,
    prosg_cfg: ProSGConfig,
    prompts: Int[Array, "B P"],
    prompt_lengths: Int[Array, " B"],
) -> tuple[Deltas | None, State]:
    """Per-example deltas for the prompts and the recurrent state after them.

    Args:
      model_cfg, params: the (frozen) base model.
      sg_params: SG-module parameters from :func:`init` (``method="prosg"``
        only; ignored otherwise).
      prosg_cfg: method, rank, targets and pooling.
      prompts: ``int32[B, P]`` right-padded prompts.
      prompt_lengths: ``int32[B]`` real lengths, each in ``[1, P]``.

    Returns:
      ``(deltas, state)``: ``deltas`` maps target path → :class:`LowRankDelta`
      (``None`` for ``none`` and ``repeat_prompt``); ``state`` is what the
      generation continues from. For ``prosg`` no gradient is taken anywhere.
    """
    _check_prompts(model_cfg, prompts, prompt_lengths)
    _check_sg_params(model_cfg, prosg_cfg, sg_params)
    deltas, state, _ = _derive(model_cfg, params, sg_params, prosg_cfg, prompts, prompt_lengths)
    return deltas, state


@functools.partial(jax.jit, static_argnames=("model_cfg", "prosg_cfg"))
def prefill(model_cfg, params, sg_params, prosg_cfg, prompts, prompt_lengths, key):
    """``(SamplingState after the prompts, deltas)``, jitted; see :func:`generate`."""
    deltas, state, last = _derive(model_cfg, params, sg_params, prosg_cfg, prompts, prompt_lengths)
    return start_state(last, state, key), deltas


def generate(
    model_cfg: RWKVConfig,
    params: dict,
    sg_params: dict | None,
    prosg_cfg: ProSGConfig,
    prompts: Int[Array, "B P"],
    prompt_lengths: Int[Array, " B"],
    *,
    max_new_tokens: int,
    key: Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    eos_id: int | None = None,
) -> Int[Array, "B G"]:
    """Jitted batch generation under ``prosg_cfg.method``, with per-example deltas.

    The prompt is read once by the base model (twice for ``repeat_prompt``);
    its deltas then apply to every generated token. Arguments as in
    :func:`derive_deltas` and :func:`prosg_jax.generate`.
    """
    _check_prompts(model_cfg, prompts, prompt_lengths)
    check_sampling_args(model_cfg, max_new_tokens, temperature, top_k, key, eos_id)
    _check_sg_params(model_cfg, prosg_cfg, sg_params)
    sampling, deltas = prefill(
        model_cfg,
        params,
        sg_params,
        prosg_cfg,
        jnp.asarray(prompts, jnp.int32),
        jnp.asarray(prompt_lengths, jnp.int32),
        jax.random.key(0) if key is None else key,
    )
    return run_decode(
        model_cfg,
        params,
        sampling,
        deltas,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
    )


class Batch(NamedTuple):
    """A ProSG training batch: prompts, then the continuation to score.

    Attributes:
      prompts: ``int32[B, P]`` right-padded; prompt_lengths ``int32[B]``.
      inputs: ``int32[B, K]`` continuation tokens fed after the prompt.
      targets: ``int32[B, K]`` next-token ids; loss_mask ``float32[B, K]``.
    """

    prompts: Int[Array, "B P"]
    prompt_lengths: Int[Array, " B"]
    inputs: Int[Array, "B K"]
    targets: Int[Array, "B K"]
    loss_mask: Float[Array, "B K"]


def _continuation_ce(model_cfg, params, deltas, state, batch: Batch):
    logits, _, _ = forward_core(model_cfg, params, batch.inputs, state, deltas, None, False)
    return masked_cross_entropy(logits, batch.targets, batch.loss_mask)


def sg_match_loss(
    model_cfg: RWKVConfig,
    params: dict,
    prosg_cfg: ProSGConfig,
    deltas: Deltas,
    state,
    batch: Batch,
) -> Float[Array, ""]:
    """Pulls each ``ΔW = s U Vᵀ`` toward the rank-r true update ``-η ∂L_cont/∂W``.

    The true per-example gradient is taken at the current deltas and held
    fixed (training-time only; Jaderberg et al. 2016). Normalised squared
    Frobenius error, averaged over targets and examples.
    """
    state = jax.lax.stop_gradient(state)
    names = tuple(deltas)
    # The synthetic updates keep their gradient; the point where the true
    # gradient is evaluated does not.
    dense = {
        n: jnp.einsum("bor,bir->boi", d.u, d.v) * jnp.reshape(d.scale, (-1, 1, 1))
        for n, d in deltas.items()
    }

    def loss_one(p, b):
        one = Batch(*(x[b][None] for x in batch))
        st = jax.tree.map(lambda x: x[b][None], state)
        return _continuation_ce(model_cfg, p, None, st, one)

    grads = jax.lax.stop_gradient(
        per_example_grads(model_cfg, params, jax.lax.stop_gradient(dense), loss_one)
    )
    total = 0.0
    for i, n in enumerate(names):
        u, v = truncate(
            -prosg_cfg.sg_match_lr * grads[n],
            prosg_cfg.rank,
            key=jax.random.fold_in(jax.random.key(prosg_cfg.sketch_seed), i),
            iters=prosg_cfg.power_iters,
        )
        target = jnp.einsum("bor,bir->boi", u, v)
        err = jnp.square(dense[n] - target).sum((1, 2))
        total = total + (err / (jnp.square(target).sum((1, 2)) + 1e-12)).mean()
    return total / len(names)


def continuation_loss(
    model_cfg: RWKVConfig,
    params: dict,
    sg_params: dict | None,
    prosg_cfg: ProSGConfig,
    batch: Batch,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """LM loss on the continuation with the prompt's deltas applied.

    The base model is frozen (``stop_gradient``) unless ``prosg_cfg.train_base``.
    With ``sg_match_weight > 0`` the synthetic-gradient matching loss is added.

    Returns:
      ``(loss, metrics)`` with metrics ``ce`` and ``sg_match``.
    """
    if not prosg_cfg.train_base:
        params = jax.lax.stop_gradient(params)
    deltas, state, _ = _derive(
        model_cfg, params, sg_params, prosg_cfg, batch.prompts, batch.prompt_lengths
    )
    ce = _continuation_ce(model_cfg, params, deltas, state, batch)
    match = jnp.zeros(())
    if prosg_cfg.sg_match_weight > 0 and deltas is not None and prosg_cfg.method == "prosg":
        match = sg_match_loss(model_cfg, params, prosg_cfg, deltas, state, batch)
    return ce + prosg_cfg.sg_match_weight * match, {"ce": ce, "sg_match": match}
