"""Invariants of the RWKV forward/step functions and per-example deltas."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model

import prosg_jax as pj
from prosg_jax.lowrank import LowRankDelta

# Equal computations reached through differently shaped matmuls (T=11 vs T=30,
# or T=1 in decode) differ by float32 rounding (~1e-7 relative); RWKV-7's
# per-head GroupNorm (eps 64e-5) can amplify that ~40x on a low-variance head.
# 1e-4 max-abs is the fp32 agreement bound used against the reference, too.
FP32_TOL = 1e-4


def _tokens(cfg, b=2, t=24, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (b, t)), jnp.int32)


def _random_deltas(cfg, params, batch, rank=3, scale=0.5, seed=0):
    """A random LowRankDelta for every target, shaped from the weights."""
    rng = np.random.default_rng(seed)
    deltas = {}
    for name in pj.target_names(cfg):
        w = params
        for part in name.split("."):
            w = w[int(part)] if part.isdigit() else w[part]
        d_out, d_in = w["weight"].shape
        deltas[name] = LowRankDelta(
            u=jnp.asarray(rng.normal(0, 0.3, (batch, d_out, rank)), jnp.float32),
            v=jnp.asarray(rng.normal(0, 0.3, (batch, d_in, rank)), jnp.float32),
            scale=jnp.float32(scale),
        )
    return deltas


def test_forward_equals_step_by_step(model):
    cfg, params = model
    tokens = _tokens(cfg)
    logits, state = pj.forward(cfg, params, tokens)
    s = pj.init_state(cfg, tokens.shape[0])
    outs = []
    for t in range(tokens.shape[1]):
        lg, s = pj.step(cfg, params, tokens[:, t], s)
        outs.append(lg)
    chex.assert_trees_all_close(jnp.stack(outs, 1), logits, atol=FP32_TOL, rtol=0)
    chex.assert_trees_all_close(s, state, atol=FP32_TOL, rtol=0)


def test_chunked_prefill_carries_state(model):
    cfg, params = model
    tokens = _tokens(cfg, t=30)
    full, full_state = pj.forward(cfg, params, tokens)
    a, state = pj.forward(cfg, params, tokens[:, :11])
    b, state = pj.forward(cfg, params, tokens[:, 11:], state)
    chex.assert_trees_all_close(jnp.concatenate([a, b], 1), full, atol=FP32_TOL, rtol=0)
    chex.assert_trees_all_close(state, full_state, atol=FP32_TOL, rtol=0)


def test_causality(model):
    cfg, params = model
    tokens = _tokens(cfg)
    changed = tokens.at[:, 13:].set((tokens[:, 13:] + 7) % cfg.vocab_size)
    a, _ = pj.forward(cfg, params, tokens)
    b, _ = pj.forward(cfg, params, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :13]), np.asarray(b[:, :13]))
    assert not np.allclose(a[:, 13:], b[:, 13:])  # the change does reach later positions


def test_reset_at_segment_start_equals_fresh_state(model):
    cfg, params = model
    first, second = _tokens(cfg, b=1, t=7, seed=1), _tokens(cfg, b=1, t=9, seed=2)
    packed = jnp.concatenate([first, second], 1)
    positions = jnp.asarray([list(range(7)) + list(range(9))], jnp.int32)
    logits, state = pj.forward(cfg, params, packed, positions=positions)
    alone_1, _ = pj.forward(cfg, params, first)
    alone_2, state_2 = pj.forward(cfg, params, second)
    chex.assert_trees_all_close(logits[:, :7], alone_1, atol=FP32_TOL, rtol=0)
    chex.assert_trees_all_close(logits[:, 7:], alone_2, atol=FP32_TOL, rtol=0)
    chex.assert_trees_all_close(state, state_2, atol=FP32_TOL, rtol=0)


def test_reset_also_clears_a_carried_state(model):
    cfg, params = model
    tokens = _tokens(cfg, b=2, t=6)
    _, dirty = pj.forward(cfg, params, _tokens(cfg, b=2, t=5, seed=3))
    positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), tokens.shape)
    got, _ = pj.forward(cfg, params, tokens, dirty, positions=positions)
    fresh, _ = pj.forward(cfg, params, tokens)
    chex.assert_trees_all_close(got, fresh, atol=FP32_TOL, rtol=0)


def test_left_padding_is_invisible(model):
    cfg, params = model
    rows = [np.arange(3, 8), np.arange(10, 22), np.arange(40, 49)]
    tokens = np.zeros((3, 12), np.int32)
    positions = np.zeros((3, 12), np.int32)  # pads at position 0: the state resets there
    for i, row in enumerate(rows):
        tokens[i, 12 - len(row) :] = row
        positions[i, 12 - len(row) :] = np.arange(len(row))
    logits, state = pj.forward(cfg, params, tokens, positions=positions)
    for i, row in enumerate(rows):
        alone, alone_state = pj.forward(cfg, params, jnp.asarray(row)[None])
        chex.assert_trees_all_close(logits[i, -len(row) :], alone[0], atol=FP32_TOL, rtol=0)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i : i + 1], state), alone_state, atol=FP32_TOL, rtol=0
        )


def test_zero_scale_delta_is_bit_identical(model):
    cfg, params = model
    tokens = _tokens(cfg)
    deltas = _random_deltas(cfg, params, tokens.shape[0], scale=0.0)
    base, base_state = pj.forward(cfg, params, tokens)
    got, got_state = pj.forward(cfg, params, tokens, deltas=deltas)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(base))
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        got_state,
        base_state,
    )


def test_delta_equals_materialised_weight(model):
    """x (W + s U Vᵀ)ᵀ computed in low-rank form equals the dense update."""
    cfg, params = model
    tokens = _tokens(cfg, b=1)
    deltas = _random_deltas(cfg, params, 1, scale=0.7)
    got, _ = pj.forward(cfg, params, tokens, deltas=deltas)
    merged = jax.tree.map(lambda x: x, params)
    for name, d in deltas.items():
        w = merged
        for part in name.split("."):
            w = w[int(part)] if part.isdigit() else w[part]
        w["weight"] = w["weight"] + d.scale * d.u[0] @ d.v[0].T
    want, _ = pj.forward(cfg, merged, tokens)
    assert float(jnp.abs(got - pj.forward(cfg, params, tokens)[0]).max()) > 1e-2
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=0)


def test_delta_of_one_example_never_touches_another(model):
    cfg, params = model
    tokens = _tokens(cfg, b=3)
    deltas = _random_deltas(cfg, params, 3, seed=1)
    other = {
        k: d._replace(u=d.u.at[0].multiply(-2.0), v=d.v.at[0].add(1.0)) for k, d in deltas.items()
    }
    a, _ = pj.forward(cfg, params, tokens, deltas=deltas)
    b, _ = pj.forward(cfg, params, tokens, deltas=other)
    np.testing.assert_array_equal(np.asarray(a[1:]), np.asarray(b[1:]))
    assert not np.allclose(a[0], b[0])


def test_per_example_scale(model):
    cfg, params = model
    tokens = _tokens(cfg, b=2)
    deltas = _random_deltas(cfg, params, 2)
    per_example = {
        k: d._replace(scale=jnp.asarray([0.0, 0.5], jnp.float32)) for k, d in deltas.items()
    }
    got, _ = pj.forward(cfg, params, tokens, deltas=per_example)
    base, _ = pj.forward(cfg, params, tokens)
    full, _ = pj.forward(cfg, params, tokens, deltas=deltas)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(base[0]))
    chex.assert_trees_all_close(got[1], full[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("version", [4, 7])
def test_bfloat16_close_to_float32(version):
    # Stated tolerance: bf16 compute keeps logits within 0.15 (max-abs) of fp32
    # on this model, whose logits span about +-4.
    cfg32, p32 = tiny_model(version)
    cfg16, p16 = tiny_model(version, dtype="bfloat16")
    tokens = _tokens(cfg32, t=32)
    a, _ = pj.forward(cfg32, p32, tokens)
    b, state = pj.forward(cfg16, p16, tokens)
    assert b.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))
    err = float(jnp.abs(a - b).max())
    assert err < 0.15, err
    assert float(jnp.abs(a).max()) > 1.0


def test_fresh_init_runs_and_round_trips(tmp_path):
    for cfg in (
        pj.RWKVConfig.rwkv4(vocab_size=50, d_model=32, n_layer=2),
        pj.RWKVConfig.rwkv7(vocab_size=50, d_model=64, n_layer=2, head_size=32),
    ):
        params = pj.init_params(jax.random.key(0), cfg)
        logits, _ = pj.forward(cfg, params, _tokens(cfg, t=5))
        assert bool(jnp.isfinite(logits).all())
        path = pj.save_rwkv(tmp_path / f"m{cfg.version}.safetensors", cfg, params)
        cfg2, params2 = pj.load_rwkv(path)
        assert cfg2 == cfg
        chex.assert_trees_all_equal(params2, params)


def test_forward_under_jit_and_vmap(model):
    cfg, params = model
    tokens = _tokens(cfg)
    want = pj.forward(cfg, params, tokens)[0]
    jitted = jax.jit(lambda p, t: pj.forward(cfg, p, t)[0])
    chex.assert_trees_all_close(jitted(params, tokens), want, atol=1e-6, rtol=0)
    # vmap over an extra leading axis (e.g. several batches of prompts).
    stacked = jnp.stack([tokens, tokens[::-1]])
    got = jax.vmap(lambda t: pj.forward(cfg, params, t)[0])(stacked)
    chex.assert_trees_all_close(got[0], want, atol=FP32_TOL, rtol=0)
    chex.assert_trees_all_close(got[1], want[::-1], atol=FP32_TOL, rtol=0)


def test_bfloat16_head_logits_are_not_rounded_to_bfloat16():
    cfg, params = tiny_model(7, dtype="bfloat16")
    logits, _ = pj.forward(cfg, params, _tokens(cfg, t=8))
    rounded = logits.astype(jnp.bfloat16).astype(jnp.float32)
    # float32 accumulation keeps ~7 significant digits; bf16 would keep ~3.
    assert float(jnp.mean(logits != rounded)) > 0.9


def test_step_in_a_python_loop_traces_no_state_shapes(model, monkeypatch):
    cfg, params = model
    state = pj.init_state(cfg, 2)
    _, state = pj.step(cfg, params, jnp.asarray([1, 2]), state)  # caches shapes and compiles
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: pytest.fail("eval_shape per call"))
    for t in range(3):
        _, state = pj.step(cfg, params, jnp.asarray([t, t + 1]), state)


def test_rectangular_lists_are_accepted_as_tokens(model):
    cfg, params = model
    a, _ = pj.forward(cfg, params, [[1, 2, 3], [4, 5, 6]])
    b, _ = pj.forward(cfg, params, jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class TestBadInput:
    def test_token_out_of_range(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match=r"id 97, outside the vocabulary \[0, 97\)"):
            pj.forward(cfg, params, jnp.asarray([[1, 97]]))
        with pytest.raises(ValueError, match=r"id -1, outside"):
            pj.step(cfg, params, jnp.asarray([-1]), pj.init_state(cfg, 1))

    def test_wrong_token_shape_and_dtype(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match=r"shape \[B, T\]"):
            pj.forward(cfg, params, jnp.asarray([1, 2, 3]))
        with pytest.raises(ValueError, match="integer token ids"):
            pj.forward(cfg, params, jnp.ones((1, 3), jnp.float32))
        with pytest.raises(ValueError, match="must not be empty"):
            pj.forward(cfg, params, jnp.zeros((1, 0), jnp.int32))

    def test_state_batch_mismatch(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match=r"expected .*\(batch 2\)"):
            pj.forward(cfg, params, _tokens(cfg, b=2), pj.init_state(cfg, 3))

    def test_positions_shape(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match="positions shape"):
            pj.forward(cfg, params, _tokens(cfg), positions=jnp.zeros((2, 3), jnp.int32))

    def test_unknown_delta_target(self, model):
        cfg, params = model
        d = LowRankDelta(jnp.zeros((2, 4, 1)), jnp.zeros((2, 4, 1)), jnp.float32(1))
        with pytest.raises(ValueError, match="unknown target"):
            pj.forward(cfg, params, _tokens(cfg), deltas={"blocks.0.att.nope": d})

    def test_delta_shape_mismatch(self, model):
        cfg, params = model
        good = _random_deltas(cfg, params, 2)
        bad = {
            "blocks.0.att.key": good["blocks.0.att.key"]._replace(
                v=jnp.zeros((2, 5, 3), jnp.float32)
            )
        }
        with pytest.raises(ValueError, match=r"the target is 128x128"):
            pj.forward(cfg, params, _tokens(cfg), deltas=bad)

    def test_ragged_list_of_tokens(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match=r"rectangular \[B, T\] array of ids"):
            pj.forward(cfg, params, [[1, 2, 3], [4]])

    def test_negative_or_float_positions(self, model):
        cfg, params = model
        tokens = _tokens(cfg, t=3)
        with pytest.raises(ValueError, match="positions must be >= 0, got -1"):
            pj.forward(cfg, params, tokens, positions=jnp.asarray([[0, 1, 2], [-1, 0, 1]]))
        with pytest.raises(ValueError, match="positions must be integer indices"):
            pj.forward(cfg, params, tokens, positions=jnp.zeros((2, 3), jnp.float32))

    def test_params_of_another_vocabulary(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match=r"params\['emb'\]\['weight'\] has shape \(97, 128\)"):
            pj.forward(cfg.replace(vocab_size=258), params, _tokens(cfg))

    def test_params_of_another_version_or_depth(self, model):
        cfg, params = model
        other, other_params = tiny_model(11 - cfg.version)  # 4 <-> 7
        with pytest.raises(ValueError, match=f"params do not match the RWKV-{cfg.version} config"):
            pj.forward(cfg, other_params, _tokens(cfg))
        with pytest.raises(ValueError, match=r"\(3 layers\): missing \[\"\['blocks'\]\[2\]"):
            pj.forward(cfg.replace(n_layer=3), params, _tokens(cfg))

    def test_params_of_another_width(self, model):
        cfg, params = model
        narrow = jax.tree.map(lambda x: x, params)
        narrow["blocks"][1]["ffn"]["key"] = {"weight": jnp.zeros((64, 128), jnp.float32)}
        with pytest.raises(ValueError, match=r"\['key'\]\['weight'\] has shape \(64, 128\)"):
            pj.forward(cfg, narrow, _tokens(cfg))
