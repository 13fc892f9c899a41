"""The chunked WKV recurrences against the per-token scan (the oracle).

Relative error here is ``max |got - want| / max |want|`` per array, so that it
does not depend on the scale of a logit, a state or a gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model

import prosg_jax as pj
from prosg_jax.config import RWKVConfig
from prosg_jax.models import wkv
from prosg_jax.models.lm import forward_core

REL_TOL = 1e-4  # fp32 chunked vs scan: outputs, states and gradients
# bf16 compute (activations and matmuls outside the float32 recurrence) makes
# both implementations round the same inputs differently downstream; on the
# tiny models the two stay within 2% of the logits' range.
BF16_REL_TOL = 2e-2


def _rel(got, want) -> float:
    want = np.asarray(want, np.float64)
    scale = np.abs(want).max()
    assert scale > 0, "a comparison against all zeros proves nothing"
    return float(np.abs(np.asarray(got, np.float64) - want).max() / scale)


def _assert_trees_rel(got, want, tol=REL_TOL):
    leaves_got, tree_got = jax.tree.flatten(got)
    leaves_want, tree_want = jax.tree.flatten(want)
    assert tree_got == tree_want
    for i, (g, w) in enumerate(zip(leaves_got, leaves_want, strict=True)):
        err = _rel(g, w)
        assert err <= tol, f"leaf {i} of {tree_want}: relative error {err:.2e} > {tol:.0e}"


def _resets(b, t, seed):
    """Resets at chunk starts, mid-chunk, chunk ends, twice in a row, and at t = 0."""
    reset = np.random.default_rng(seed).random((b, t)) < 0.12
    reset[0, [0, 15, 16, 21, 22]] = True
    reset[-1, :] = False  # one row carries its incoming state all the way
    return jnp.asarray(reset)


def _inputs7(b, t, h=2, n=8, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 8))

    def normal(*shape):
        return jax.random.normal(next(keys), shape, jnp.float32)

    kk = normal(b, t, h, n)
    return dict(
        r=normal(b, t, h, n),
        log_w=-np.exp(-0.5) * jax.nn.sigmoid(2 * normal(b, t, h, n)),  # the model's range
        k=normal(b, t, h, n),
        v=normal(b, t, h, n),
        kk=kk / jnp.linalg.norm(kk, axis=-1, keepdims=True),
        a=jax.nn.sigmoid(normal(b, t, h, n)),
        state=normal(b, h, n, n),
    )


def _inputs4(b, t, c=16, seed=0, k_scale=3.0):
    keys = iter(jax.random.split(jax.random.key(seed), 8))

    def normal(*shape):
        return jax.random.normal(next(keys), shape, jnp.float32)

    # Decays from e^{-e^3} (a channel that forgets at once) to e^{-e^{-3}}.
    log_rate = jnp.linspace(-3.0, 3.0, c)
    return dict(
        decay=-jnp.exp(log_rate),
        first=normal(c),
        k=k_scale * normal(b, t, c),
        v=normal(b, t, c),
        state=(normal(b, c), 1.0 + jnp.abs(normal(b, c)), normal(b, c)),
    )


# Jitted: one compilation costs less than dispatching every op of the chunked form eagerly.
@functools.partial(jax.jit, static_argnames=("impl", "chunk"))
def _run7(inp, reset, impl, chunk=wkv.CHUNK):
    return wkv.rwkv7(**inp, reset=reset, impl=impl, chunk=chunk)


@functools.partial(jax.jit, static_argnames=("impl", "chunk"))
def _run4(inp, reset, impl, chunk=wkv.CHUNK):
    return wkv.rwkv4(**inp, reset=reset, impl=impl, chunk=chunk)


OPS = {7: (_inputs7, _run7), 4: (_inputs4, _run4)}
PER_TOKEN = {7: ("r", "log_w", "k", "v", "kk", "a"), 4: ("k", "v")}


def _slice_time(version, inp, sl, state):
    """The inputs of time steps ``sl``, starting from ``state``."""
    return {
        **inp,
        **{name: inp[name][:, sl] for name in PER_TOKEN[version]},
        "state": state,
    }


@pytest.mark.parametrize("version", [4, 7])
@pytest.mark.parametrize("t", [37, 50])
@pytest.mark.parametrize("with_reset", [False, True], ids=["no_reset", "reset"])
def test_op_chunked_equals_scan(version, t, with_reset):
    make, run = OPS[version]
    inp = make(3, t, seed=t)
    reset = _resets(3, t, seed=t) if with_reset else None
    _assert_trees_rel(run(inp, reset, "chunked"), run(inp, reset, "scan"))


@pytest.mark.parametrize("version", [4, 7])
def test_op_gradients_chunked_equal_scan(version):
    make, run = OPS[version]
    inp = make(3, 37, seed=1)
    reset = _resets(3, 37, seed=1)
    out_ct = jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(9), x.shape), run(inp, reset, "scan")
    )

    def loss(inp, impl):
        out = run(inp, reset, impl)
        return sum(
            jnp.vdot(o, c)
            for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(out_ct), strict=True)
        )

    grads = {impl: jax.grad(loss)(inp, impl) for impl in ("scan", "chunked")}
    _assert_trees_rel(grads["chunked"], grads["scan"])


@pytest.mark.parametrize("version", [4, 7])
def test_op_state_continues_across_implementations(version):
    """A chunked prefix's state, continued by the scan or by single steps, equals one scan."""
    make, run = OPS[version]
    inp = make(2, 50, seed=2)
    reset = _resets(2, 50, seed=2)

    def part(sl, state):
        return _slice_time(version, inp, sl, state)

    y_full, s_full = run(inp, reset, "scan")
    y_a, s_a = run(part(slice(0, 37), inp["state"]), reset[:, :37], "chunked")
    y_b, s_b = run(part(slice(37, 50), s_a), reset[:, 37:], "scan")
    _assert_trees_rel((jnp.concatenate([y_a, y_b], 1), s_b), (y_full, s_full))
    y_c, s_c = run(part(slice(37, 50), s_a), reset[:, 37:], "chunked")
    _assert_trees_rel((y_c, s_c), (y_b, s_b))
    s, ys = s_a, []
    for t in range(37, 40):
        y, s = run(part(slice(t, t + 1), s), reset[:, t : t + 1], "chunked")  # T=1: direct body
        ys.append(y)
    _assert_trees_rel(jnp.concatenate(ys, 1), y_b[:, :3])


@pytest.mark.parametrize("version", [4, 7])
def test_op_single_token_is_the_scan_body(version):
    make, run = OPS[version]
    inp = make(2, 1, seed=3)
    got = run(inp, None, "chunked")
    want = run(inp, None, "scan")
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want
    )


@pytest.mark.parametrize("version", [4, 7])
def test_op_reset_mid_chunk_starts_afresh(version):
    """After a reset at s, outputs and state are those of tokens s.. from an empty state."""
    make, run = OPS[version]
    inp = make(2, 40, seed=4)
    s = 21  # 8 pads go in front, so this is position 13 of the second chunk
    reset = jnp.zeros((2, 40), bool).at[:, s].set(True)
    y, state = run(inp, reset, "chunked")
    empty = (
        jnp.zeros_like(inp["state"])
        if version == 7
        else tuple(
            jnp.full_like(x, v) for x, v in zip(inp["state"], (0, 0, wkv.P_EMPTY), strict=True)
        )
    )
    y_tail, state_tail = run(_slice_time(version, inp, slice(s, None), empty), None, "scan")
    _assert_trees_rel((y[:, s:], state), (y_tail, state_tail))


def test_rwkv4_chunked_is_stable_for_large_keys_and_fast_decays():
    inp = _inputs4(2, 64, c=16, seed=5, k_scale=40.0)  # keys spanning about ±120 nats
    got = _run4(inp, None, "chunked")
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(got))
    _assert_trees_rel(got, _run4(inp, None, "scan"))


def test_rwkv7_chunk_length_is_a_parameter():
    inp = _inputs7(2, 37, seed=6)
    want = _run7(inp, None, "scan")
    for chunk in (4, 32):
        _assert_trees_rel(_run7(inp, None, "chunked", chunk=chunk), want)
    with pytest.raises(ValueError, match="power of two"):
        _run7(inp, None, "chunked", chunk=12)


def test_impl_is_validated():
    with pytest.raises(ValueError, match="wkv_impl must be one of"):
        pj.RWKVConfig.rwkv4(vocab_size=10, d_model=8, n_layer=1, wkv_impl="pallas")
    with pytest.raises(ValueError, match="wkv impl must be one of"):
        _run7(_inputs7(1, 3), None, "fast")


def test_wkv_impl_is_a_runtime_choice(tmp_path):
    d = dict(version=7, vocab_size=50, d_model=64, n_layer=1, head_size=32, wkv_impl="scan")
    assert RWKVConfig.from_dict(d).wkv_impl == "scan"
    assert RWKVConfig.from_dict({**d, "wkv_impl": "chunked"}).wkv_impl == "chunked"
    # Checkpoints hold tensors only: a loaded model starts at "auto".
    cfg, params = tiny_model(4)
    path = pj.save_rwkv(tmp_path / "m.safetensors", cfg.replace(wkv_impl="scan"), params)
    loaded, _ = pj.load_rwkv(path)
    assert loaded == cfg
    assert loaded.wkv_impl == "auto"


def _model_case(version, t=37):
    """Two rows: one left-padded (every pad is a reset), one packed, restarting mid-chunk."""
    cfg, params = tiny_model(version)
    rng = np.random.default_rng(version)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, t)), jnp.int32)
    pad = np.zeros(t, np.int32)
    pad[11:] = np.arange(t - 11)
    packed = np.concatenate([np.arange(3, 3 + 13), np.arange(10), np.arange(t - 23)])
    positions = jnp.asarray(np.stack([pad, packed]), jnp.int32)
    _, state = pj.forward(cfg, params, tokens[:, ::-1][:, :5])  # a carried-in state
    return cfg, params, tokens, positions, state


@pytest.mark.parametrize("version", [4, 7])
def test_model_chunked_equals_scan_with_gradients(version):
    cfg, params, tokens, positions, state = _model_case(version)
    ct = jax.random.normal(jax.random.key(2), tokens.shape + (cfg.vocab_size,))

    def run(impl):
        c = cfg.replace(wkv_impl=impl)

        def loss(params, state):
            logits, new_state, _ = forward_core(c, params, tokens, state, positions=positions)
            s_sum = sum(jnp.sum(jnp.tanh(x)) for x in jax.tree.leaves(new_state))
            return jnp.vdot(logits, ct) + s_sum, (logits, new_state)

        (_, aux), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            params, state
        )
        return aux, grads

    (logits, new_state), grads = run("chunked")
    (logits_s, new_state_s), grads_s = run("scan")
    _assert_trees_rel(logits, logits_s)
    _assert_trees_rel(new_state, new_state_s)
    _assert_trees_rel(grads, grads_s)


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 7])
def test_model_chunked_prefix_then_scan_and_steps(version):
    cfg, params, tokens, positions, state = _model_case(version, t=50)
    chunked, scan = cfg.replace(wkv_impl="chunked"), cfg.replace(wkv_impl="scan")
    full, full_state = pj.forward(scan, params, tokens, state, positions=positions)
    a, s = pj.forward(chunked, params, tokens[:, :37], state, positions=positions[:, :37])
    b, s_b = pj.forward(scan, params, tokens[:, 37:], s, positions=positions[:, 37:])
    _assert_trees_rel((jnp.concatenate([a, b], 1), s_b), (full, full_state))
    steps = []
    for t in range(37, 40):
        lg, s = pj.step(chunked, params, tokens[:, t], s)
        steps.append(lg)
    _assert_trees_rel(jnp.stack(steps, 1), full[:, 37:40])


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 7])
def test_model_bfloat16_chunked_close_to_scan(version):
    cfg, params = tiny_model(version, dtype="bfloat16")
    _, _, tokens, positions, _ = _model_case(version)
    got, state = pj.forward(cfg.replace(wkv_impl="chunked"), params, tokens, positions=positions)
    want, _ = pj.forward(cfg.replace(wkv_impl="scan"), params, tokens, positions=positions)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))
    assert _rel(got, want) <= BF16_REL_TOL
