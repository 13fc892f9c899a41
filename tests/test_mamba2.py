"""Mamba-2: the reference ``transformers`` model, chunked SSD == scan (values and
gradients), parallel == step-by-step, resets, checkpoints, ProSG end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import assert_joint_steps_learn

import prosg_jax as pj
from prosg_jax import prosg
from prosg_jax.checkpoint import CheckpointError
from prosg_jax.models import mamba2, ssd

TOL = 1e-4
# Shapes no other test uses: 3 layers, 8 heads of 12 in 2 groups, N = 8, K = 3.
SHAPE = dict(vocab_size=67, d_model=48, n_layer=3, head_size=12, d_state=8, n_groups=2, d_conv=3)


def _random_params(cfg, seed=0):
    """Every leaf random (init leaves many at 0 or 1, which would hide wiring errors)."""
    params = pj.init_params(jax.random.key(seed), cfg)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    out = []
    for k, x in zip(keys, leaves, strict=True):
        noise = jax.random.normal(k, x.shape, jnp.float32)
        out.append(x + 0.3 * noise if x.ndim == 1 else 0.5 * noise / np.sqrt(x.shape[-1]))
    return jax.tree.unflatten(treedef, out)


@pytest.fixture(scope="module")
def model():
    cfg = mamba2.preset(**SHAPE)
    return cfg, _random_params(cfg)


def _tokens(rng, batch, length, vocab=67):
    return jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)


def _assert_trees_close(a, b, tol=TOL):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.reference
def test_matches_transformers(model, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers", reason="the torch extra provides it")
    cfg, params = model
    d = mamba2.dims(cfg)
    pj.save_rwkv(tmp_path / "model.safetensors", cfg, params)
    ref_cfg = transformers.Mamba2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layer,
        num_heads=d.heads,
        head_dim=d.head_dim,
        state_size=d.state,
        n_groups=d.groups,
        conv_kernel=cfg.d_conv,
        expand=cfg.d_ffn // cfg.d_model,
        chunk_size=16,  # not ours (64): the two chunkings must agree
        tie_word_embeddings=False,
    )
    ref = transformers.Mamba2ForCausalLM(ref_cfg).eval()
    from safetensors.torch import load_file

    missing, unexpected = ref.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert not missing and not unexpected
    tokens = _tokens(np.random.default_rng(0), 2, 41)  # 41: no multiple of either chunk
    with torch.no_grad():
        out = ref(torch.from_numpy(np.asarray(tokens, np.int64)), use_cache=True)
    logits, state = pj.forward(cfg, params, tokens)
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=TOL, atol=TOL)

    def check_state(cache):
        for i, layer in enumerate(state):
            conv = cache.get_conv_state(i).numpy()  # [B, D, K]: the last K inputs
            np.testing.assert_allclose(layer.conv, conv[:, :, 1:].transpose(0, 2, 1), atol=TOL)
            np.testing.assert_allclose(layer.ssm, cache.get_recurrent_state(i).numpy(), atol=TOL)

    check_state(out.cache)
    cache = out.cache
    for token in _tokens(np.random.default_rng(1), 2, 3).T:  # decode steps
        with torch.no_grad():
            out = ref(torch.from_numpy(np.asarray(token, np.int64))[:, None], cache=cache)
        step_logits, state = pj.step(cfg, params, token, state)
        np.testing.assert_allclose(step_logits, out.logits[:, -1].numpy(), rtol=TOL, atol=TOL)
        check_state(out.cache)


def test_loads_transformers_and_mamba_ssm_names(model, tmp_path):
    from safetensors.numpy import load_file, save_file

    cfg, params = model
    path = pj.save_rwkv(tmp_path / "a.safetensors", cfg, params)
    tensors = load_file(path)
    # transformers' own files carry no header: a config.json beside them gives G.
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"model_type": "mamba2", "n_groups": 2}')
    for name in ("a.safetensors", "model.safetensors"):
        got_cfg, got = pj.load_rwkv(tmp_path / name)
        assert got_cfg == cfg
        _assert_trees_close(got, params, tol=0)
    # mamba_ssm: backbone.embedding.*, the head tied to the embedding.
    ssm = {k.replace("embeddings", "embedding"): v for k, v in tensors.items()}
    ssm.pop("lm_head.weight")
    save_file(ssm, str(tmp_path / "ssm.safetensors"), metadata={"prosg_jax.model": "{}"})
    got_cfg, got = pj.load_rwkv(tmp_path / "ssm.safetensors")
    assert got_cfg == cfg.replace(d_state=16, n_groups=1)  # no G in the file: one group
    np.testing.assert_array_equal(got["head"]["weight"], params["emb"]["weight"])


def test_bad_checkpoints_fail_in_one_line(model, tmp_path):
    from safetensors.numpy import load_file, save_file

    cfg, params = model
    tensors = load_file(pj.save_rwkv(tmp_path / "a.safetensors", cfg, params))
    (tmp_path / "b").mkdir()
    save_file(tensors, str(tmp_path / "b" / "model.safetensors"))
    (tmp_path / "b" / "config.json").write_text('{"n_groups": 2, "time_step_limit": [0.0, 1.0]}')
    with pytest.raises(CheckpointError, match="time_step_limit=.* is not supported"):
        pj.load_rwkv(tmp_path / "b" / "model.safetensors")
    (tmp_path / "b" / "config.json").write_text('{"n_groups": 5}')
    with pytest.raises(CheckpointError, match="do not fit 5 group"):
        pj.load_rwkv(tmp_path / "b" / "model.safetensors")
    extra = {**tensors, "backbone.layers.0.mixer.in_proj.bias": np.zeros(3, np.float32)}
    save_file(extra, str(tmp_path / "c.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        pj.load_rwkv(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="n_groups=2 is not recoverable from a .pth"):
        pj.save_rwkv(tmp_path / "m.pth", cfg, params)


def _ssd_inputs(rng, b=2, t=45, h=4, p=5, n=3):
    def rnd(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    dt = jax.nn.softplus(rnd(b, t, h))
    a = -jnp.exp(rnd(h))
    reset = jnp.zeros((b, t), bool).at[0, 7].set(True).at[1, 16].set(True).at[1, 30].set(True)
    return rnd(b, t, h, p), dt, a, rnd(b, t, h, n), rnd(b, t, h, n), rnd(b, h, p, n), reset


@pytest.mark.parametrize("chunk", [4, 16])
def test_chunked_ssd_equals_the_scan_with_gradients(chunk):
    """T = 45 is no multiple of the chunk; resets at 7, 16 (a chunk start) and 30."""
    args = _ssd_inputs(np.random.default_rng(3))

    def run(impl, *xs):
        y, s = ssd.ssd(*xs, args[-1], impl=impl, chunk=chunk)
        return y, s

    y_scan, s_scan = run("scan", *args[:-1])
    y_chunk, s_chunk = run("chunked", *args[:-1])
    np.testing.assert_allclose(y_chunk, y_scan, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(s_chunk, s_scan, rtol=TOL, atol=TOL)
    w = jnp.asarray(np.random.default_rng(4).standard_normal(y_scan.shape), jnp.float32)

    def loss(impl):
        def f(*xs):
            y, s = run(impl, *xs)
            return jnp.sum(y * w) + jnp.sum(jnp.sin(s))

        return jax.grad(f, argnums=tuple(range(6)))(*args[:-1])

    _assert_trees_close(loss("chunked"), loss("scan"))


def test_parallel_forward_equals_step_by_step_decode(model):
    cfg, params = model
    tokens = _tokens(np.random.default_rng(5), 2, 9)
    logits, final = pj.forward(cfg, params, tokens)
    state = pj.init_state(cfg, 2)
    for t in range(tokens.shape[1]):
        step_logits, state = pj.step(cfg, params, tokens[:, t], state)
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=TOL, atol=TOL)
    _assert_trees_close(state, final)


@pytest.mark.parametrize("impl", ["scan", "chunked"])
def test_a_reset_inside_a_block_equals_a_fresh_start(model, impl):
    """Two sequences packed in one row (positions restart at 0) read as if alone,
    and the state after the row is the second sequence's alone."""
    cfg, params = model
    cfg = cfg.replace(wkv_impl=impl)
    rng = np.random.default_rng(6)
    first, second = _tokens(rng, 1, 70), _tokens(rng, 1, 13)
    packed = jnp.concatenate([first, second], axis=1)
    positions = jnp.concatenate([jnp.arange(70), jnp.arange(13)])[None]
    warm = pj.forward(cfg, params, _tokens(rng, 1, 5))[1]  # a non-empty state to start from
    logits, state = pj.forward(cfg, params, packed, warm, positions=positions)
    alone, alone_state = pj.forward(cfg, params, second)
    np.testing.assert_allclose(logits[:, 70:], alone, rtol=TOL, atol=TOL)
    _assert_trees_close(state, alone_state)


def test_a_config_checks_its_shape():
    with pytest.raises(ValueError, match="d_ffn .* must be a multiple of head_size"):
        mamba2.preset(vocab_size=8, d_model=8, n_layer=1, head_size=5, d_state=4)
    with pytest.raises(ValueError, match="n_groups .* must divide the 2 heads"):
        mamba2.preset(vocab_size=8, d_model=8, n_layer=1, head_size=8, d_state=4, n_groups=3)
    with pytest.raises(ValueError, match="positive d_state"):
        mamba2.preset(vocab_size=8, d_model=8, n_layer=1, head_size=8, d_state=0)
    with pytest.raises(ValueError, match="RWKV-7 has no d_state"):
        pj.RWKVConfig.from_dict(dict(version=7, vocab_size=8, d_model=64, n_layer=1, d_state=4))
    with pytest.raises(ValueError, match="Mamba-2 has no d_gate_lora"):
        pj.RWKVConfig.from_dict(
            dict(version="mamba2", vocab_size=8, d_model=8, n_layer=1, d_state=4, d_gate_lora=3)
        )


def _batch(rng, batch=3, prompt=7, cont=6, vocab=67):
    prompts = rng.integers(1, vocab, (batch, prompt)).astype(np.int32)
    lengths = np.array([prompt, 4, 2][:batch], np.int32)
    prompts[np.arange(prompt)[None, :] >= lengths[:, None]] = 0
    return prosg.Batch(
        prompts=jnp.asarray(prompts),
        prompt_lengths=jnp.asarray(lengths),
        targets=jnp.asarray(rng.integers(1, vocab, (batch, cont)), jnp.int32),
        loss_mask=jnp.ones((batch, cont), jnp.float32),
    )


@pytest.fixture(scope="module")
def with_sg(model):
    cfg, params = model
    pc = pj.ProSGConfig(method="prosg", rank=2, matrices=("mixer.in_proj", "mixer.out_proj"))
    sg = prosg.init(jax.random.key(2), cfg, pc)
    sg = {name: {**leaves, "scale": jnp.float32(0.5)} for name, leaves in sg.items()}
    return cfg, params, pc, sg


@pytest.mark.parametrize("method", ["prosg", "true_grad", "repeat_prompt", "none"])
def test_every_method_generates(with_sg, method):
    cfg, params, pc, sg = with_sg
    prompts = [[3, 5, 7, 9], [2, 4], [11, 13, 17]]
    out = pj.generate(
        cfg,
        params,
        prompts,
        max_new_tokens=4,
        prosg_cfg=pc.replace(method=method),
        sg_params=sg if method == "prosg" else None,
    )
    assert out.tokens.shape == (3, 4)
    if method in ("prosg", "true_grad"):
        _, deltas = pj.prefill(
            cfg,
            params,
            prompts,
            prosg_cfg=pc.replace(method=method),
            sg_params=sg if method == "prosg" else None,
        )
        assert set(deltas) == set(pj.target_names(cfg))
        for name, d in deltas.items():
            d_out, d_in = pj.models.family.target_shape(cfg, name)
            assert d.u.shape == (3, d_out, 2) and d.v.shape == (3, d_in, 2)
            assert bool(jnp.isfinite(d.u).all()) and float(jnp.abs(d.u).max()) > 0


def test_a_joint_step_trains_base_and_sg_module(with_sg):
    cfg, params, pc, sg = with_sg
    batch = _batch(np.random.default_rng(7))
    assert_joint_steps_learn(cfg, params, sg, pc, batch, lr=3e-3, steps=15)


def test_train_and_eval_run_a_mamba2_model_unchanged(tmp_path):
    import ml_collections
    from train_fixtures import tiny_config

    from prosg_jax.eval import evaluation
    from prosg_jax.train import trainer

    config = tiny_config()
    config.model = ml_collections.ConfigDict(
        {**config.model.to_dict(), "version": "mamba2", "d_state": 8}  # C 32, heads of 16
    )
    config.prosg.matrices = "mixer.in_proj,mixer.out_proj"
    config.eval.methods = "none,repeat_prompt,true_grad,prosg"
    config.eval.distances = ""  # MQAR only: enough to run every method
    trainer.train(config, tmp_path)
    run = pj.load_run(tmp_path)
    assert run.model_cfg.version == "mamba2" and run.model_cfg.d_state == 8
    assert sorted(run.sg_params) == sorted(pj.target_names(run.model_cfg))
    results = evaluation.evaluate(config, tmp_path)
    for method in ("none", "repeat_prompt", "true_grad", "prosg"):
        assert 0.0 <= results["mqar"][method]["l32_kv4_voc64"] <= 1.0
