"""True per-example gradients, their rank-r truncation, and the poolings that
compress predicted errors (prosg_jax.prosg.grads / compress, prosg_jax.lowrank)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_prompts as _prompts
from conftest import tiny_model

import prosg_jax as pj
from prosg_jax import prosg
from prosg_jax.config import ProSGConfig
from prosg_jax.lowrank import materialize, merge, truncate_operator


def _sg(cfg, pc, scale=0.5, seed=0):
    sg = prosg.init(jax.random.key(seed), cfg, pc)
    return {n: {**p, "scale": jnp.float32(scale)} for n, p in sg.items()}


def _target_weight_holder(params, name):
    node = params
    for part in name.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def _with_dense(params, dense):
    """``params`` with ``W + ΔW`` at the given targets (one example's dense deltas)."""
    out = jax.tree.map(lambda x: x, params)  # new containers, shared leaves
    for name, d in dense.items():
        holder = _target_weight_holder(out, name)
        holder["weight"] = holder["weight"] + d
    return out


def _prompt_loss(cfg, params, tokens):
    """Mean next-token loss of one unpadded prompt ``[1, L]``."""
    logits, _ = pj.forward(cfg, params, tokens)
    n = tokens.shape[1] - 1
    return prosg.masked_cross_entropy(logits[:, :-1], tokens[:, 1:], jnp.ones((1, max(n, 0))))


@pytest.mark.parametrize("version", [4, 7])
def test_factored_per_example_grads_equal_dense_vmap_grad(version):
    cfg, params = tiny_model(version, c=64, ffn=128)
    names = ("blocks.0.att.value", "blocks.1.ffn.key", "blocks.1.ffn.value")
    prompts, lengths = _prompts(b=2, p=7)
    tokens, positions, mask = prosg.left_align(prompts, lengths)
    pairs = mask[:, :-1] & mask[:, 1:]
    grads = prosg.factored_grads(
        cfg,
        params,
        tokens,
        pj.init_state(cfg, 2),
        names=names,
        example_losses=lambda lg: prosg.per_example_ce(lg[:, :-1], tokens[:, 1:], pairs),
        positions=positions,
    )

    def dense_grad(b):  # one backward pass per example over dense weights: the oracle
        row = prompts[b : b + 1, : int(lengths[b])]
        zero = {n: jnp.zeros_like(prosg.weight(params, n)) for n in names}
        return jax.grad(lambda d: _prompt_loss(cfg, _with_dense(params, d), row))(zero)

    for b in range(2):
        want = dense_grad(b)
        for n in names:
            got = jnp.einsum("to,ti->oi", grads[n].err[b], grads[n].inputs[b])
            scale = float(jnp.abs(want[n]).max())
            assert scale > 1e-4
            # Relative to the gradient's size: the two sides differ only by
            # float32 rounding (padded batch vs one row), which RWKV-7's
            # per-head GroupNorm amplifies up to ~40x (see test_models.FP32_TOL).
            np.testing.assert_allclose(np.asarray(got), np.asarray(want[n]), atol=1e-5 * scale)


@pytest.mark.parametrize("version", [4, 7])
def test_power_at_full_rank_equals_dense_sum_on_non_square_targets(version):
    cfg, params = tiny_model(version, c=64, ffn=128)
    p = 6  # rank >= prompt length: Σ_t δ̂_t x_tᵀ has rank <= P, so the truncation is exact
    pc = ProSGConfig(rank=p, pooling="power", matrices=("ffn.key", "ffn.value"), power_iters=2)
    sg = _sg(cfg, pc)
    prompts, lengths = _prompts(b=2, p=p)
    deltas, _ = prosg.derive_deltas(cfg, params, sg, pc, prompts=prompts, prompt_lengths=lengths)
    states = prosg.prompt_states(cfg, params, prompts, lengths, targets=pc.targets(cfg))
    for name in pc.targets(cfg):
        block = name.rsplit(".", 2)[0]
        layer = int(block.split(".")[1])
        d_hat, _ = prosg.predict_errors(cfg, sg[name], states.hidden[block], states.state[layer])
        m = np.asarray(states.mask, np.float64)[..., None]
        dense = np.einsum(
            "bto,bti->boi",
            np.asarray(d_hat, np.float64) * m,
            np.asarray(states.inputs[name], np.float64) * m,
        )
        assert dense.shape[1] != dense.shape[2]  # a non-square target: no U/V swap passes
        for b in range(2):
            got = np.asarray(materialize(deltas[name], b), np.float64) / 0.5  # scale 0.5
            tol = 1e-5 * np.abs(dense[b]).max()
            np.testing.assert_allclose(got, dense[b], atol=tol, rtol=0)


def test_query_pool_matches_its_formula_in_numpy(model):
    cfg, params = model
    pc = ProSGConfig(rank=3, pooling="query", key_dim=8, matrices=("ffn.key",), layers=(1,))
    sg = _sg(cfg, pc, scale=1.0)
    prompts, lengths = _prompts()
    name = "blocks.1.ffn.key"
    states = prosg.prompt_states(cfg, params, prompts, lengths, targets=(name,))
    d_hat, z = prosg.predict_errors(cfg, sg[name], states.hidden["blocks.1"], states.state[1])
    u, v = prosg.compress(
        pc, sg[name], d_hat, states.inputs[name], z=z, mask=states.mask, positions=states.positions
    )
    d_hat, z, x = (np.asarray(a, np.float64) for a in (d_hat, z, states.inputs[name]))
    q, kappa = (np.asarray(sg[name][k], np.float64) for k in ("queries", "kappa"))
    for b in range(3):
        real = np.asarray(states.mask[b])
        # a_{j,t} = softmax over real t of q_j · κ(z_t) / √k
        scores = q @ (z[b][real] @ kappa).T / np.sqrt(kappa.shape[1])
        a = np.exp(scores - scores.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        np.testing.assert_allclose(np.asarray(u[b]), (a @ d_hat[b][real]).T, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(v[b]), (a @ x[b][real]).T, atol=1e-5, rtol=1e-5)


def test_sketch_is_unbiased_over_many_seeds(model):
    cfg, params = model
    rank, seeds = 4, 256
    pc = ProSGConfig(rank=rank, pooling="sketch", matrices=("ffn.value",), layers=(0,))
    sg = _sg(cfg, pc, scale=1.0)
    prompts, lengths = _prompts()
    name = "blocks.0.ffn.value"
    states = prosg.prompt_states(cfg, params, prompts, lengths, targets=(name,))
    d_hat, z = prosg.predict_errors(cfg, sg[name], states.hidden["blocks.0"], states.state[0])
    x = states.inputs[name]
    mask, pos = states.mask, states.positions
    # compress() is exactly the einsum of the sketch matrix for its seed ...
    u0, v0 = prosg.compress(pc, sg[name], d_hat, x, z=z, mask=mask, positions=pos)
    s0 = prosg.sketch_matrix(pos, mask, rank, 0)
    np.testing.assert_allclose(u0, jnp.einsum("bpo,bpr->bor", d_hat, s0), atol=1e-6, rtol=0)
    np.testing.assert_allclose(v0, jnp.einsum("bpi,bpr->bir", x, s0), atol=1e-6, rtol=0)

    # ... and over many seeds U Vᵀ averages to Σ_t δ̂_t x_tᵀ (row 0: 7 real tokens).
    def one(seed):
        s = prosg.sketch_matrix(pos, mask, rank, seed)[0]
        return jnp.einsum("po,pr,qi,qr->oi", d_hat[0], s, x[0], s)

    samples = np.asarray(jax.lax.map(one, jnp.arange(seeds)), np.float64)
    m = np.asarray(mask[0], np.float64)[:, None]
    exact = (np.asarray(d_hat[0]) * m).T @ (np.asarray(x[0]) * m)
    err_sq = ((samples.mean(0) - exact) ** 2).sum()
    # E‖mean − G‖² = E‖M − G‖² / N for N independent seeds; the per-seed term
    # is estimated from the samples. By Markov's inequality a 9x excess (3x in
    # norm) has probability <= 1/9 for an unbiased sketch, whereas a biased one
    # (e.g. a lost 1/√r) misses by a constant that does not shrink with N.
    per_seed = ((samples - exact) ** 2).sum((1, 2)).mean()
    print(
        f"sketch: relative error of the mean {np.sqrt(err_sq) / np.linalg.norm(exact):.3f}, "
        f"per seed {np.sqrt(per_seed) / np.linalg.norm(exact):.3f}"
    )
    assert err_sq <= 9 * per_seed / seeds
    assert np.sqrt(err_sq) < 0.2 * np.linalg.norm(exact)


def test_true_grad_full_rank_equals_one_sgd_step():
    cfg, params = tiny_model(7, c=128, ffn=128, n_layer=2)
    pc = ProSGConfig(
        method="true_grad",
        rank=128,
        matrices=("att.value", "ffn.value"),
        layers=(1,),
        true_grad_lr=0.5,
    )
    prompts, lengths = _prompts(b=1, p=10)
    deltas, _ = prosg.derive_deltas(cfg, params, None, pc, prompts=prompts, prompt_lengths=lengths)
    grads = jax.grad(lambda p: _prompt_loss(cfg, p, prompts))(params)
    for name in pc.targets(cfg):
        want = -0.5 * prosg.weight(grads, name)
        got = materialize(deltas[name], 0)
        assert float(jnp.abs(want).max()) > 1e-4
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)
    stepped = merge(params, deltas, 0)
    assert float(_prompt_loss(cfg, stepped, prompts)) < float(_prompt_loss(cfg, params, prompts))


@pytest.mark.parametrize("version", [4, 7])
def test_true_grad_two_steps_on_padded_prompts_match_dense_sgd(version):
    cfg, params = tiny_model(version, c=64, ffn=128)
    lr = 0.7
    pc = ProSGConfig(
        method="true_grad",
        rank=64,  # >= min(O, I) of every target: the truncation is exact
        matrices=("att.key", "ffn.value"),
        true_grad_steps=2,
        true_grad_lr=lr,
    )
    prompts, lengths = _prompts(b=2, p=9)  # lengths 9 and 4: row 1 is padded
    deltas, _ = prosg.derive_deltas(cfg, params, None, pc, prompts=prompts, prompt_lengths=lengths)
    names = pc.targets(cfg)
    for b in range(2):
        row = prompts[b : b + 1, : int(lengths[b])]
        dense = {n: jnp.zeros_like(prosg.weight(params, n)) for n in names}
        for _ in range(2):  # plain SGD on this example alone, dense weights
            g = jax.grad(lambda d, row=row: _prompt_loss(cfg, _with_dense(params, d), row))(dense)
            dense = {n: dense[n] - lr * g[n] for n in names}
        for n in names:
            got = np.asarray(materialize(deltas[n], b))
            want = np.asarray(dense[n])
            assert np.abs(want).max() > 1e-4
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def truncate(g, rank, *, key, iters=2):
    """Rank-``rank`` factors of dense matrices ``g`` by the library's subspace iteration."""
    omega = jax.random.normal(key, (g.shape[-1], rank), g.dtype)
    gt = jnp.swapaxes(g, -1, -2)
    return truncate_operator(lambda z: g @ z, lambda y: gt @ y, omega, iters)


def test_truncate_is_exact_at_full_rank_and_optimal_below():
    g = jax.random.normal(jax.random.key(0), (2, 24, 16))
    u, v = truncate(g, 16, key=jax.random.key(1))
    chex.assert_trees_all_close(u @ jnp.swapaxes(v, -1, -2), g, atol=1e-5, rtol=0)
    u, v = truncate(g, 5, key=jax.random.key(1), iters=20)
    s = np.linalg.svd(np.asarray(g[0]), compute_uv=False)
    best = np.sqrt((s[5:] ** 2).sum())
    np.testing.assert_allclose(float(jnp.linalg.norm(u[0] @ v[0].T - g[0])), best, rtol=1e-4)
