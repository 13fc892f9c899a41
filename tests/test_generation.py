"""Generation: one prefill (deltas from the first generated token), while-loop decode,
teacher-forced completion, and their input checks."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model

import prosg_jax as pj
from prosg_jax import decode, prosg, sampling
from prosg_jax.config import METHODS, ProSGConfig

ROWS = [[5, 6, 7, 8, 9], list(range(10, 22)), [40, 41, 42]]


def _sg(cfg, pc, scale=0.5):
    sg = prosg.init(jax.random.key(0), cfg, pc)
    return {n: {**p, "scale": jnp.float32(scale)} for n, p in sg.items()}


def _setup(cfg, method, scale=0.5):
    pc = ProSGConfig(method=method, rank=4, matrices=("att.value", "ffn.value"))
    return pc, _sg(cfg, pc, scale) if method == "prosg" else None


def _greedy(cfg, params, deltas, logits, state, n, stop=()):
    """Step-by-step greedy decoding from ``logits`` [B, V] (the oracle loop)."""
    out, tok = [], jnp.argmax(logits, -1)
    for _ in range(n):
        out.append(tok)
        logits, state = pj.step(cfg, params, tok, state, deltas=deltas)
        tok = jnp.argmax(logits, -1)
    out = np.stack([np.asarray(t) for t in out], 1)
    if stop:
        return [row[: next((i + 1 for i, t in enumerate(row) if t in stop), n)] for row in out]
    return out


def _replay(cfg, params, tail, deltas, context=None):
    tokens = tail.token[:, None]
    if context is not None:
        tokens = jnp.concatenate([tokens, jnp.asarray(context, jnp.int32)[None]], 1)
    positions = tail.position[:, None] + jnp.arange(tokens.shape[1])[None]
    logits, state = pj.forward(cfg, params, tokens, tail.state, deltas=deltas, positions=positions)
    return logits[:, -1], state


@pytest.mark.parametrize("method", METHODS)
def test_generate_equals_prompt_deltas_replay_greedy_loop(model, method):
    cfg, params = model
    pc, sg = _setup(cfg, method)
    got = pj.generate(cfg, params, ROWS, max_new_tokens=4, prosg_cfg=pc, sg_params=sg)
    prompts, lengths = prosg.right_padded(cfg, ROWS)
    deltas, tail = prosg.derive_deltas(cfg, params, sg, pc, prompts=prompts, prompt_lengths=lengths)
    logits, state = _replay(cfg, params, tail, deltas)
    np.testing.assert_array_equal(
        np.asarray(got.tokens), _greedy(cfg, params, deltas, logits, state, 4)
    )
    np.testing.assert_array_equal(np.asarray(got.lengths), [4, 4, 4])
    assert not np.asarray(got.stopped).any()


def test_deltas_change_the_first_generated_token(model):
    cfg, params = model
    pc = ProSGConfig(rank=4, matrices=("att.value", "att.output", "ffn.value"))
    sg = _sg(cfg, pc, scale=50.0)
    base = pj.generate(cfg, params, ROWS, max_new_tokens=1)
    got = pj.generate(cfg, params, ROWS, max_new_tokens=1, prosg_cfg=pc, sg_params=sg)
    assert (np.asarray(got.tokens[:, 0]) != np.asarray(base.tokens[:, 0])).any()


@pytest.mark.parametrize("method", ["prosg", "true_grad"])
def test_ragged_batch_equals_each_prompt_alone(model, method):
    cfg, params = model
    pc, sg = _setup(cfg, method)
    got = pj.generate(cfg, params, ROWS, max_new_tokens=5, prosg_cfg=pc, sg_params=sg)
    for i, row in enumerate(ROWS):
        alone = pj.generate(cfg, params, [row], max_new_tokens=5, prosg_cfg=pc, sg_params=sg)
        np.testing.assert_array_equal(np.asarray(got.tokens[i]), np.asarray(alone.tokens[0]))
    # The same prompts as a right-padded array with extra padding (another bucket).
    prompts, lengths = prosg.right_padded(cfg, ROWS)
    wide = np.pad(prompts, ((0, 0), (0, 30)))
    again = pj.generate(cfg, params, wide, lengths, max_new_tokens=5, prosg_cfg=pc, sg_params=sg)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(got.tokens))


def test_stop_tokens_per_row_end_rows_early(model):
    cfg, params = model
    free = np.asarray(pj.generate(cfg, params, ROWS, max_new_tokens=6).tokens)
    stops = [[int(free[0, 1])], [int(free[1, 3]), int(free[1, 4])], []]
    got = pj.generate(cfg, params, ROWS, max_new_tokens=6, stop_tokens=stops)
    for i, row in enumerate(free):
        n = next((t + 1 for t, tok in enumerate(row) if tok in stops[i]), 6)
        assert int(got.lengths[i]) == n
        assert bool(got.stopped[i]) == (n < 6 or row[5] in stops[i])
        np.testing.assert_array_equal(np.asarray(got.tokens[i, :n]), row[:n])
        assert (np.asarray(got.tokens[i, n:]) == 0).all()


def test_decode_loop_exits_once_every_row_has_stopped(model):
    cfg, params = model
    first = np.asarray(pj.generate(cfg, params, ROWS, max_new_tokens=1).tokens[:, 0])
    key = jax.random.key(7)
    state, deltas = pj.prefill(cfg, params, ROWS, stop_tokens=[[int(t)] for t in first], key=key)
    tokens, state = pj.decode_chunk(cfg, params, state, deltas, n=50, unroll=4)
    np.testing.assert_array_equal(np.asarray(tokens[:, 0]), first)
    assert (np.asarray(tokens[:, 1:]) == 0).all()
    np.testing.assert_array_equal(np.asarray(state.lengths), [1, 1, 1])
    # The loop splits the key once per live token: one split means one token ran.
    np.testing.assert_array_equal(
        jax.random.key_data(state.key), jax.random.key_data(jax.random.split(key)[0])
    )


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_decoding_in_chunks_equals_one_call(model, temperature):
    cfg, params = model
    pc, sg = _setup(cfg, "prosg")
    key = jax.random.key(3)
    args = dict(prosg_cfg=pc, sg_params=sg, key=key)
    whole = pj.generate(cfg, params, ROWS, max_new_tokens=7, temperature=temperature, **args)
    state, deltas = pj.prefill(cfg, params, ROWS, **args)
    a, state = pj.decode_chunk(cfg, params, state, deltas, n=3, temperature=temperature)
    b, state = pj.decode_chunk(cfg, params, state, deltas, n=4, temperature=temperature)
    np.testing.assert_array_equal(np.concatenate([a, b], 1), np.asarray(whole.tokens))
    np.testing.assert_array_equal(np.asarray(state.lengths), [7, 7, 7])


def test_unrolled_decode_equals_one_token_per_iteration(model):
    """Tokens, stops, lengths, key and state match for any unroll, also when n is
    not a multiple of it and rows stop inside an unrolled iteration."""
    cfg, params = model
    pc, sg = _setup(cfg, "prosg")
    temperature = 0.8
    free = np.asarray(
        pj.generate(
            cfg,
            params,
            ROWS,
            max_new_tokens=7,
            temperature=temperature,
            key=jax.random.key(3),
            prosg_cfg=pc,
            sg_params=sg,
        ).tokens
    )
    args = dict(
        prosg_cfg=pc,
        sg_params=sg,
        key=jax.random.key(3),
        stop_tokens=[[int(free[0, 2])], [], [int(free[2, 4])]],
    )

    def run(unroll):
        state, deltas = pj.prefill(cfg, params, ROWS, **args)
        a, state = pj.decode_chunk(
            cfg, params, state, deltas, n=7, temperature=temperature, unroll=unroll
        )
        b, state = pj.decode_chunk(
            cfg, params, state, deltas, n=2, temperature=temperature, unroll=unroll
        )
        return np.concatenate([a, b], 1), state

    want, want_state = run(1)
    assert want.shape == (3, 9)
    got, state = run(3)  # n = 7 is not a multiple of 3: a guarded tail; n = 2 < 3: clamped
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(state.lengths), np.asarray(want_state.lengths))
    np.testing.assert_array_equal(np.asarray(state.done), np.asarray(want_state.done))
    np.testing.assert_array_equal(
        jax.random.key_data(state.key), jax.random.key_data(want_state.key)
    )
    # Same arithmetic, but another XLA program: fusion may round differently.
    for x, y in zip(jax.tree.leaves(state.state), jax.tree.leaves(want_state.state), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="unroll"):
        pj.decode_chunk(cfg, params, run(1)[1], None, n=2, unroll=0)


def test_decode_from_a_sampling_state_built_from_init_state(model):
    """A hand-made state decodes (init_state's fields are separate buffers, so the
    donating loop accepts them) and matches the step-by-step loop."""
    cfg, params = model
    logits = jnp.zeros((2, cfg.vocab_size), jnp.float32).at[:, 7].set(1.0)
    state = pj.SamplingState(
        last_logits=jnp.copy(logits),  # donated
        state=pj.init_state(cfg, 2),
        done=jnp.zeros((2,), bool),
        lengths=jnp.zeros((2,), jnp.int32),
        stop_ids=jnp.full((2, 4), -1, jnp.int32),
        key=jax.random.key(0),
    )
    tokens, _ = pj.decode_chunk(cfg, params, state, None, n=3)
    want = _greedy(cfg, params, None, logits, pj.init_state(cfg, 2), 3)
    np.testing.assert_array_equal(np.asarray(tokens), want)


@pytest.mark.parametrize("version", [4, 7])
def test_weights_cast_once_for_compute_give_the_same_logits(version):
    """The decode loop's one-off cast of the matrices is exact in bfloat16: the
    forward casts exactly those leaves itself."""
    cfg, params = tiny_model(version)
    cfg = cfg.replace(dtype="bfloat16")
    cast = pj.models.lm.cast_for_compute(cfg, params)
    narrowed = [
        path
        for path, leaf in jax.tree_util.tree_leaves_with_path(cast)
        if leaf.dtype == jnp.bfloat16
    ]
    assert len(narrowed) == 1 + cfg.n_layer * len(pj.models.model_family(cfg).matmul_weights) - (
        2 if version == 7 else 0  # block 0 has no value-residual LoRA
    )
    tokens = jnp.asarray([ROWS[1]], jnp.int32)
    want, want_state = pj.forward(cfg, params, tokens)
    got, got_state = pj.forward(cfg, cast, tokens)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for x, y in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_prompt_widths_within_a_bucket_share_one_compiled_prefill(model):
    cfg, params = model
    rng = np.random.default_rng(0)

    def run(width):
        rows = [list(rng.integers(1, 97, width)), list(rng.integers(1, 97, 9))]
        return pj.generate(cfg, params, rows, max_new_tokens=2)

    run(9)  # widths 9..16 pad to 16
    size = sampling._prefill._cache_size()
    for width in (10, 13, 16):
        run(width)
    assert sampling._prefill._cache_size() == size
    run(17)  # the next bucket compiles once more
    assert sampling._prefill._cache_size() == size + 1


def test_sampling_options(model):
    cfg, params = model
    key = jax.random.key(3)
    greedy = np.asarray(pj.generate(cfg, params, ROWS, max_new_tokens=6).tokens)
    for opts in (dict(top_k=1), dict(top_p=1e-6), dict(top_k=5, top_p=1e-6)):
        got = pj.generate(cfg, params, ROWS, max_new_tokens=6, temperature=0.7, key=key, **opts)
        np.testing.assert_array_equal(np.asarray(got.tokens), greedy)
    # Temperature and top_p are traced: new values do not recompile.
    pj.generate(cfg, params, ROWS, max_new_tokens=6, temperature=0.5, top_p=0.9, key=key)
    size = sampling._decode._cache_size()
    for t, p in ((0.6, 0.5), (0.9, 0.95), (1.3, 0.7)):
        pj.generate(cfg, params, ROWS, max_new_tokens=6, temperature=t, top_p=p, key=key)
    assert sampling._decode._cache_size() == size


def test_top_k_keeps_exactly_k_candidates_on_ties():
    logits = jnp.asarray([[5.0, 5.0, 5.0, 1.0]] * 2000)
    picks = decode.pick(logits, jax.random.key(0), 1.0, 1.0, greedy=False, top_k=2, nucleus=False)
    assert set(np.asarray(picks).tolist()) <= {0, 1, 2} and len(set(np.asarray(picks))) == 2


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    picks = np.asarray(
        decode.pick(logits, jax.random.key(1), 1.0, 0.7, greedy=False, top_k=0, nucleus=True)
    )
    # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: tokens 0 and 1, renormalised to 5/8 and 3/8.
    assert set(picks.tolist()) == {0, 1}
    assert abs(np.mean(picks == 0) - 0.625) < 0.03  # 4000 draws: std 0.008


# --------------------------------------------------------------------------- completion


@pytest.fixture(scope="module")
def byte_model():
    cfg, params = tiny_model(7, vocab=258)
    return cfg, params, pj.get_tokenizer("byte")


def test_run_has_the_agreed_fields():
    names = [f.name for f in dataclasses.fields(pj.Run)]
    assert names == ["model_cfg", "params", "prosg_cfg", "sg_params", "tokenizer"]


def test_complete_equals_manual_prompt_deltas_context_greedy_loop(byte_model):
    cfg, params, tok = byte_model
    pc, sg = _setup(cfg, "prosg", scale=2.0)
    run = pj.Run(cfg, params, pc, sg, tok)
    prompts = ["The door code is 4417.", "Bob likes tea."]
    contexts = [" Filler text here. Q: code? A:", ""]
    got = pj.complete(run, prompts, contexts, max_new_tokens=8)
    stop = (tok.eos_id, int(tok.encode("\n")[0]))
    for i, (p, c) in enumerate(zip(prompts, contexts, strict=True)):
        ids = tok.encode(p)
        deltas, tail = prosg.derive_deltas(cfg, params, sg, pc, prompts=[ids])
        logits, state = _replay(cfg, params, tail, deltas, tok.encode(c))
        (want,) = _greedy(cfg, params, deltas, logits, state, 8, stop=stop)
        want = [int(t) for t in want if t not in stop]
        assert got[i] == tok.decode(want, errors="replace")


def test_complete_ids_ragged_contexts_equal_each_example_alone(byte_model):
    cfg, params, tok = byte_model
    pc, sg = _setup(cfg, "prosg")
    prompts = [[70, 71, 72, 73], [80, 81], list(range(90, 101))]
    contexts = [[5, 6, 7], [], list(range(20, 33))]
    kw = dict(max_new_tokens=5, prosg_cfg=pc, sg_params=sg, stop_tokens=())
    got = pj.complete_ids((cfg, params, tok), prompts, contexts, **kw)
    for p, c, g in zip(prompts, contexts, got, strict=True):
        assert pj.complete_ids((cfg, params, tok), [p], [c], **kw) == [g]
    # An empty context is exactly plain generation after the prompt.
    alone = pj.generate(cfg, params, [prompts[1]], max_new_tokens=5, prosg_cfg=pc, sg_params=sg)
    assert got[1] == np.asarray(alone.tokens[0]).tolist()


def test_complete_ids_stop_tokens_are_cut(byte_model):
    cfg, params, tok = byte_model
    prompts, contexts = [[70, 71, 72], [80, 81]], [[5], [6, 7]]
    free = pj.complete_ids((cfg, params, tok), prompts, contexts, max_new_tokens=6, stop_tokens=())
    stop = free[0][2]
    got = pj.complete_ids(
        (cfg, params, tok), prompts, contexts, max_new_tokens=6, stop_tokens=[stop]
    )
    for f, g in zip(free, got, strict=True):
        cut = f.index(stop) if stop in f else len(f)
        assert g == f[:cut]


def test_complete_method_override_and_run_vs_triple(byte_model):
    cfg, params, tok = byte_model
    pc, sg = _setup(cfg, "prosg", scale=2.0)
    run = pj.Run(cfg, params, pc, sg, tok)
    args = (["Alice has a cat."], [" Q: pet? A:"])
    via_run = pj.complete(run, *args, max_new_tokens=6)
    via_triple = pj.complete(
        (cfg, params, tok), *args, max_new_tokens=6, prosg_cfg=pc, sg_params=sg
    )
    assert via_run == via_triple
    plain = pj.complete((cfg, params, tok), *args, max_new_tokens=6)
    assert pj.complete(run, *args, max_new_tokens=6, method="none") == plain
    with pytest.raises(ValueError, match="method='prosg' needs sg_params"):
        pj.complete(pj.Run(cfg, params, None, None, tok), *args, max_new_tokens=6, method="prosg")
    with pytest.raises(ValueError, match="a Run carries its own prosg_cfg"):
        pj.complete(run, *args, max_new_tokens=6, prosg_cfg=pc)
    with pytest.raises(ValueError, match="run_or_model must be a prosg_jax.Run"):
        pj.complete((cfg, params), *args, max_new_tokens=6)
    with pytest.raises(ValueError, match="prompts must be a sequence of strings"):
        pj.complete(run, "Alice has a cat.", [""], max_new_tokens=6)


# --------------------------------------------------------------------------- bad input


class TestBadInput:
    def test_array_prompts_need_lengths(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match="prompt_lengths is required when prompts is an array"):
            pj.generate(cfg, params, jnp.ones((2, 4), jnp.int32), max_new_tokens=2)

    def test_flat_list_of_ids(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match="prompts must be a list of id lists"):
            pj.generate(cfg, params, [1, 2, 3], max_new_tokens=2)

    def test_left_padded_prompts(self, model):
        cfg, params = model
        left = np.asarray([[0, 0, 5, 6], [7, 8, 9, 10]], np.int32)
        with pytest.raises(ValueError, match=r"prompts\[0\] has id 5 at column 2, beyond its"):
            pj.generate(cfg, params, left, [2, 4], max_new_tokens=2)

    def test_float_lengths_and_counts(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match="prompt_lengths must be integers"):
            pj.generate(cfg, params, np.ones((1, 3), np.int32), [3.0], max_new_tokens=2)
        with pytest.raises(
            ValueError, match=r"max_new_tokens must be an int in \[1, 16,777,216\], got 2.0"
        ):
            pj.generate(cfg, params, ROWS, max_new_tokens=2.0)
        with pytest.raises(ValueError, match="max_new_tokens must be an int in"):
            pj.generate(cfg, params, ROWS, max_new_tokens=0)

    def test_sampling_arguments(self, model):
        cfg, params = model
        key = jax.random.key(0)
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got nan"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, temperature=float("nan"), key=key)
        with pytest.raises(ValueError, match="needs a PRNG key"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, temperature=1.0)
        with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, top_p=0.0)
        with pytest.raises(ValueError, match=r"top_k must be an int in \[0, 97\]"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, top_k=1000)

    def test_stop_tokens(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match="stop token 1000 is outside the vocabulary"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, stop_tokens=[1000])
        with pytest.raises(ValueError, match=r"stop_tokens must be one collection .* \(3 rows\)"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, stop_tokens=[[1], [2]])

    def test_empty_prompt_and_contexts(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
            pj.generate(cfg, params, [[1, 2], []], max_new_tokens=2)
        with pytest.raises(ValueError, match="contexts has 1 rows, prompts 3"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, contexts=[[1]])

    def test_mismatched_params_and_sg_params(self, model):
        cfg, params = model
        with pytest.raises(ValueError, match=r"params\['emb'\]\['weight'\] has shape"):
            pj.generate(cfg.replace(vocab_size=258), params, ROWS, max_new_tokens=2)
        pc, _ = _setup(cfg, "prosg")
        wrong = prosg.init(jax.random.key(0), cfg, pc.replace(rank=2))
        with pytest.raises(ValueError, match="built for another config"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, prosg_cfg=pc, sg_params=wrong)
        with pytest.raises(ValueError, match="sg_params given without a ProSG method"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, sg_params=wrong)
        with pytest.raises(ValueError, match="method must be None or one of"):
            pj.generate(cfg, params, ROWS, max_new_tokens=2, method="magic")
