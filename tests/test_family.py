"""The model-family protocol: a family defined here, outside the library, trains,
derives ProSG deltas and generates through the public API unchanged.

The toy family is a diagonal linear RNN: per layer ``u_t = LN(x_t) W_inᵀ``,
``h_t = a ⊙ h_{t-1} + u_t`` (``a = σ(decay)``, reset to 0 at a sequence
start), ``x_t += h_t W_outᵀ``. Its two matrices take deltas.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import assert_joint_steps_learn

import prosg_jax as pj
from prosg_jax import prosg
from prosg_jax.models import family as family_lib
from prosg_jax.models.layers import (
    NO_HOOKS,
    dense,
    layer_norm,
    ln_params,
    orthogonal,
    scan_time,
    time_major,
)

VERSION = "toy-diagonal-rnn"


class ToyState(NamedTuple):
    h: jax.Array  # [B, C]


def toy_init_params(key, cfg):
    c, v = cfg.d_model, cfg.vocab_size
    keys = jax.random.split(key, 2 + 2 * cfg.n_layer)
    blocks = [
        {
            "ln1": ln_params(c),
            "rnn": {
                "decay": jnp.linspace(-1.0, 3.0, c, dtype=jnp.float32),
                "in": {"weight": orthogonal(keys[2 + 2 * i], (c, c), 1.0)},
                "out": {"weight": orthogonal(keys[3 + 2 * i], (c, c), 0.5)},
            },
        }
        for i in range(cfg.n_layer)
    ]
    return {
        "emb": {"weight": 0.5 * jax.random.normal(keys[0], (v, c), jnp.float32)},
        "ln0": ln_params(c),
        "blocks": blocks,
        "ln_out": ln_params(c),
        "head": {"weight": orthogonal(keys[1], (v, c), 1.0)},
    }


def toy_init_layer_state(cfg, batch):
    return ToyState(jnp.zeros((batch, cfg.d_model), jnp.float32))


def toy_block(cfg, i, p, x, state, *, reset=None, hooks=NO_HOOKS, v_first=None):
    name = f"blocks.{i}.rnn"
    u = dense(layer_norm(x, p["ln1"]), p["rnn"]["in"]["weight"], f"{name}.in", hooks)
    a = jax.nn.sigmoid(p["rnn"]["decay"])
    if reset is None:
        reset = jnp.zeros(x.shape[:2], bool)

    def body(h, inputs):
        u_t, r_t = inputs
        h = jnp.where(r_t[:, None], 0.0, h) * a + u_t
        return h, h

    h, hs = scan_time(body, state.h, (time_major(u.astype(jnp.float32)), time_major(reset)))
    y = dense(
        jnp.swapaxes(hs, 0, 1).astype(x.dtype), p["rnn"]["out"]["weight"], f"{name}.out", hooks
    )
    return x + y, ToyState(h), v_first


TOY = family_lib.Family(
    version=VERSION,
    name="toy diagonal RNN",
    init_params=toy_init_params,
    init_layer_state=toy_init_layer_state,
    block=toy_block,
    targets=("rnn.in", "rnn.out"),
    target_shape=lambda cfg, matrix: (cfg.d_model, cfg.d_model),
    read_state=lambda cfg, state, q: state.h[:, None, :] * q,
    matmul_weights=(("rnn", "in", "weight"), ("rnn", "out", "weight")),
)


@pytest.fixture(scope="module")
def toy():
    family_lib.register(TOY)
    cfg = pj.RWKVConfig(version=VERSION, vocab_size=40, d_model=16, n_layer=2, d_ffn=16)
    params = pj.init_params(jax.random.key(0), cfg)
    pc = pj.ProSGConfig(method="prosg", rank=2, matrices=("rnn.in", "rnn.out"), sg_hidden=8)
    sg = prosg.init(jax.random.key(1), cfg, pc)
    sg = {name: {**leaves, "scale": jnp.float32(0.5)} for name, leaves in sg.items()}
    return cfg, params, pc, sg


def _batch(rng, batch=4, prompt=6, cont=5, vocab=40):
    prompts = rng.integers(1, vocab, (batch, prompt)).astype(np.int32)
    lengths = np.array([prompt, prompt - 2, 3, prompt][:batch], np.int32)
    prompts[np.arange(prompt)[None, :] >= lengths[:, None]] = 0
    targets = rng.integers(1, vocab, (batch, cont)).astype(np.int32)
    return prosg.Batch(
        prompts=jnp.asarray(prompts),
        prompt_lengths=jnp.asarray(lengths),
        targets=jnp.asarray(targets),
        loss_mask=jnp.ones((batch, cont), jnp.float32),
    )


def test_registry_knows_the_family_and_refuses_a_second_one(toy):
    cfg, *_ = toy
    assert pj.models.model_family(cfg) is TOY
    assert VERSION in family_lib.versions() and 4 in family_lib.versions()
    assert pj.target_names(cfg) == (
        "blocks.0.rnn.in",
        "blocks.0.rnn.out",
        "blocks.1.rnn.in",
        "blocks.1.rnn.out",
    )
    with pytest.raises(ValueError, match="already toy diagonal RNN"):
        family_lib.register(family_lib.Family(**{**TOY.__dict__, "name": "another"}))
    with pytest.raises(
        ValueError, match="version must be 4 or 7 or .mamba2. or a registered .* got .nope."
    ):
        pj.RWKVConfig(version="nope", vocab_size=4, d_model=4, n_layer=1, d_ffn=4)


def test_decode_steps_equal_the_parallel_forward(toy):
    cfg, params, *_ = toy
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (3, 7)), jnp.int32)
    logits, _ = pj.forward(cfg, params, tokens)
    state = pj.init_state(cfg, 3)
    for t in range(tokens.shape[1]):
        step_logits, state = pj.step(cfg, params, tokens[:, t], state)
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-5)


def test_a_joint_training_step_lowers_the_loss(toy):
    cfg, params, pc, sg = toy
    batch = _batch(np.random.default_rng(1))
    assert_joint_steps_learn(cfg, params, sg, pc, batch, lr=1e-2, steps=20)


@pytest.mark.parametrize("method", ["prosg", "true_grad"])
def test_deltas_are_derived_for_the_family_targets(toy, method):
    cfg, params, pc, sg = toy
    batch = _batch(np.random.default_rng(2))
    deltas, tail = prosg.derive_deltas(
        cfg,
        params,
        sg if method == "prosg" else None,
        pc.replace(method=method),
        prompts=batch.prompts,
        prompt_lengths=batch.prompt_lengths,
    )
    assert sorted(deltas) == sorted(pj.target_names(cfg))
    for d in deltas.values():
        assert d.u.shape == (4, 16, 2) and d.v.shape == (4, 16, 2)
        assert float(jnp.max(jnp.abs(d.u))) > 0 and bool(jnp.isfinite(d.u).all())
    np.testing.assert_array_equal(
        tail.token, [batch.prompts[b, n - 1] for b, n in enumerate(batch.prompt_lengths)]
    )


def test_generate_with_and_without_deltas(toy):
    cfg, params, pc, sg = toy
    prompts = [[3, 5, 7, 9], [2, 4], [11, 13, 17]]
    plain = pj.generate(cfg, params, prompts, max_new_tokens=6, method="none")
    # Greedy decoding equals re-reading prompt + generated tokens with the forward.
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for _ in range(6):
            logits, _ = pj.forward(cfg, params, jnp.asarray([seq], jnp.int32))
            seq.append(int(jnp.argmax(logits[0, -1])))
        assert list(np.asarray(plain.tokens[row])) == seq[len(prompt) :]
    # Zero-scale deltas change nothing; the trained scale reaches the tokens' logits.
    off = {n: {**leaves, "scale": jnp.float32(0.0)} for n, leaves in sg.items()}
    same = pj.generate(cfg, params, prompts, max_new_tokens=6, prosg_cfg=pc, sg_params=off)
    np.testing.assert_array_equal(same.tokens, plain.tokens)
    _, deltas = pj.prefill(cfg, params, prompts, prosg_cfg=pc, sg_params=sg)
    state, _ = pj.prefill(cfg, params, prompts, prosg_cfg=pc, sg_params=off)
    with_deltas, _ = pj.prefill(cfg, params, prompts, prosg_cfg=pc, sg_params=sg)
    assert float(jnp.max(jnp.abs(with_deltas.last_logits - state.last_logits))) > 1e-3
    assert set(deltas) == set(pj.target_names(cfg))


def test_a_family_without_an_official_format_is_refused_by_save_rwkv(toy, tmp_path):
    cfg, params, *_ = toy
    with pytest.raises(ValueError, match="toy diagonal RNN models have no official checkpoint"):
        pj.save_rwkv(tmp_path / "toy.safetensors", cfg, params)
