"""Sessions (multi-turn memory, save/load), the rank-budgeted sum of deltas, and bake."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prosg_jax as pj
from prosg_jax import lowrank, prosg
from prosg_jax.models.lm import forward_core

CFG = pj.RWKVConfig.rwkv7(vocab_size=260, d_model=32, n_layer=2, head_size=16)
PC = pj.ProSGConfig(rank=2, matrices=("att.value", "ffn.value"), sg_hidden=8, key_dim=4)
PROMPT = [5, 9, 11, 3, 21]  # every turn here is 5 tokens: a few compiled programs


def _sg(cfg, pc, scale=0.7):
    """A random SG module whose deltas move the logits (its init scale is 0)."""
    sg = prosg.init(jax.random.key(1), cfg, pc)
    return {k: {**v, "scale": jnp.float32(scale)} for k, v in sg.items()}


@pytest.fixture(scope="module")
def run():
    params = pj.init_params(jax.random.key(0), CFG)
    return pj.Run(
        model_cfg=CFG, params=params, prosg_cfg=PC, sg_params=_sg(CFG, PC), tokenizer="byte"
    )


def _dense(deltas: dict, b: int = 0) -> dict:
    return {name: np.asarray(lowrank.materialize(d, b)) for name, d in deltas.items()}


# --------------------------------------------------------------------------- lowrank.add


def _random_delta(rng, batch, o, i, r, scale):
    return pj.LowRankDelta(
        u=rng.normal(size=(batch, o, r)).astype(np.float32),
        v=rng.normal(size=(batch, i, r)).astype(np.float32),
        scale=np.asarray(scale, np.float32),
    )


def test_add_is_exact_within_the_budget_and_best_beyond_it():
    rng = np.random.default_rng(0)
    a = _random_delta(rng, 2, 12, 9, 3, [0.5, -2.0])
    b = _random_delta(rng, 2, 12, 9, 2, 1.5)
    dense = [np.asarray(lowrank.materialize(a, k) + lowrank.materialize(b, k)) for k in (0, 1)]
    within = lowrank.add(a, b, max_rank=5)
    assert within.u.shape == (2, 12, 5)
    for k in (0, 1):
        np.testing.assert_allclose(lowrank.materialize(within, k), dense[k], atol=1e-5, rtol=0)
    beyond = lowrank.add(a, b, max_rank=3)
    assert beyond.u.shape == (2, 12, 3) and beyond.v.shape == (2, 9, 3)
    for k in (0, 1):
        x, s, yt = np.linalg.svd(dense[k].astype(np.float64))
        best = (x[:, :3] * s[:3]) @ yt[:3]  # Eckart-Young: the best rank-3 approximation
        np.testing.assert_allclose(lowrank.materialize(beyond, k), best, atol=1e-4, rtol=0)
    alone = lowrank.add(None, b, max_rank=4)
    np.testing.assert_allclose(lowrank.materialize(alone, 1), lowrank.materialize(b, 1), atol=1e-6)
    with pytest.raises(ValueError, match="per-token"):
        lowrank.add(a, b._replace(scale=np.ones((2, 4), np.float32)), max_rank=8)


# --------------------------------------------------------------------------- sessions


def test_one_turn_is_the_prefill_and_generation_of_that_prompt(run):
    session = pj.Session.start(run).feed([PROMPT])
    sampling, _ = pj.prefill(CFG, run.params, [PROMPT], prosg_cfg=PC, sg_params=run.sg_params)
    plain, _ = pj.prefill(CFG, run.params, [PROMPT])
    assert float(jnp.abs(plain.last_logits - sampling.last_logits).max()) > 0.1  # deltas matter
    np.testing.assert_allclose(session.last_logits, sampling.last_logits, atol=1e-5, rtol=0)
    got, after = session.generate(12)
    want = pj.generate(
        CFG, run.params, [PROMPT], prosg_cfg=PC, sg_params=run.sg_params, max_new_tokens=12
    )
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert int(after.positions[0]) == len(PROMPT) + int(got.lengths[0])
    assert int(session.turns) == 1 and int(after.turns) == 1


def test_turns_add_their_deltas_and_are_read_in_order(run):
    turns = [PROMPT, [40, 41, 42, 43, 44], [7, 7, 8, 9, 9]]
    session = pj.Session.start(run, max_rank=3 * PC.rank)
    for t in turns:
        session = session.feed([t])
    assert int(session.turns) == 3 and int(session.positions[0]) == sum(map(len, turns))
    # Within the budget the memory is the exact sum of each turn's own deltas
    # (a one-turn session holds exactly that turn's).
    want = {}
    for t in turns:
        for name, dense in _dense(pj.Session.start(run).feed([t]).deltas).items():
            want[name] = want.get(name, 0) + dense
    for name, dense in _dense(session.deltas).items():
        np.testing.assert_allclose(dense, want[name], atol=1e-5, rtol=0, err_msg=name)
    # Past it the rank stays at the budget.
    for t in turns:
        session = session.feed([t])
    assert {d.u.shape[-1] for d in session.deltas.values()} == {3 * PC.rank}
    # The last turn's last token is read under the memory that includes it: the
    # state after a turn is the one a single forward computes under these deltas,
    # read from the previous turn's state.
    previous = pj.Session.start(run, max_rank=3 * PC.rank)
    for t in turns[:-1]:
        previous = previous.feed([t])
    last = previous.feed([turns[-1]])
    logits, _, _ = forward_core(
        CFG,
        run.params,
        jnp.asarray([turns[-1][-1:]], jnp.int32),
        jax.tree.map(lambda x: x, _state_before_last(previous, turns[-1])),
        deltas=last.deltas,
        positions=jnp.asarray([[int(last.positions[0]) - 1]], jnp.int32),
    )
    np.testing.assert_allclose(logits[:, -1], last.last_logits, atol=1e-5, rtol=0)


def _state_before_last(session, turn):
    """The state after all but ``turn``'s last token, read under the older memory."""
    logits, state = pj.forward(
        CFG,
        session.run.params,
        jnp.asarray([turn[:-1]], jnp.int32),
        session.state,
        deltas=session.deltas,
        positions=session.positions[:, None] + jnp.arange(len(turn) - 1, dtype=jnp.int32),
    )
    del logits
    return state


def test_remember_false_reads_without_adding_to_memory(run):
    session = pj.Session.start(run).feed([PROMPT])
    read = session.feed([[1, 2, 3]], remember=False)
    assert int(read.turns) == 1
    for name in session.deltas:
        np.testing.assert_array_equal(read.deltas[name].u, session.deltas[name].u)
    logits, _ = pj.forward(
        CFG,
        run.params,
        jnp.asarray([[1, 2, 3]], jnp.int32),
        session.state,
        deltas=session.deltas,
        positions=session.positions[:, None] + jnp.arange(3, dtype=jnp.int32),
    )
    np.testing.assert_allclose(read.last_logits, logits[:, -1], atol=1e-5, rtol=0)


def test_batched_rows_equal_one_session_each(run):
    rows = [[3, 4, 5, 6, 7], [9, 8, 7, 6, 5]]
    both = pj.Session.start(run, batch=2).feed(rows)
    both = both.feed([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    for b, row in enumerate(rows):
        one = pj.Session.start(run).feed([row]).feed([[[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]][b]])
        np.testing.assert_allclose(both.last_logits[b], one.last_logits[0], atol=1e-5, rtol=0)
        for name, dense in _dense(one.deltas).items():
            np.testing.assert_allclose(_dense(both.deltas, b)[name], dense, atol=1e-5, rtol=0)


def test_a_saved_session_continues_bit_identically(run, tmp_path):
    session = pj.Session.start(run, key=jax.random.key(7)).feed([PROMPT]).feed([[4, 4, 5, 6, 7]])
    _, session = session.generate(5, temperature=0.9)  # the key has advanced
    path = session.save(tmp_path / "chat.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["chat.safetensors"]  # no temporary left behind
    loaded = pj.Session.load(path, run)
    assert loaded.max_rank == session.max_rank and int(loaded.turns) == 2
    for a, b in zip(jax.tree.leaves(session), jax.tree.leaves(loaded), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want, after_want = session.feed([[9, 10]]).generate(16, temperature=0.8, top_k=20)
    got, after_got = loaded.feed([[9, 10]]).generate(16, temperature=0.8, top_k=20)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(after_got.last_logits, after_want.last_logits)


def test_session_refuses_what_it_cannot_do(run, tmp_path):
    with pytest.raises(ValueError, match="equal lengths"):
        pj.Session.start(run, batch=2).feed([[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="2 row"):
        pj.Session.start(run, batch=2).feed([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"\[0, 260\)"):
        pj.Session.start(run).feed([[1, 999]])
    with pytest.raises(ValueError, match="feed a turn"):
        pj.Session.start(run).generate(3)
    with pytest.raises(ValueError, match="repeat_prompt"):
        pj.Session.start(pj.Run(CFG, run.params, PC.replace(method="repeat_prompt"), None, "byte"))
    with pytest.raises(ValueError, match="max_rank"):
        pj.Session.start(run, max_rank=1)
    path = pj.Session.start(run).feed([PROMPT]).save(tmp_path / "s.safetensors")
    other = pj.Run(CFG, run.params, PC.replace(rank=3), _sg(CFG, PC.replace(rank=3)), "byte")
    with pytest.raises(ValueError, match="another ProSG config"):
        pj.Session.load(path, other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="cannot read session file"):
        pj.Session.load(tmp_path / "junk.safetensors", run)


def test_text_turns_and_a_plain_session(run):
    plain = pj.Run(CFG, run.params, None, None, "byte")
    session = pj.Session.start(plain).feed("The key is 42. ")
    assert session.deltas is None and int(session.turns) == 0
    ids = run.tokenizer.encode("The key is 42. ")
    logits, _ = pj.forward(CFG, run.params, jnp.asarray([ids], jnp.int32))
    np.testing.assert_allclose(session.last_logits, logits[:, -1], atol=1e-5, rtol=0)


def test_segment_len_derives_what_a_session_remembers(run):
    second = [40, 41, 42, 43, 44]
    pc = PC.replace(segment_len=len(PROMPT))  # one segment per 5-token turn
    deltas, _ = prosg.derive_deltas(
        CFG, run.params, run.sg_params, pc, prompts=[PROMPT + second, PROMPT]
    )
    assert {d.u.shape[-1] for d in deltas.values()} == {2 * PC.rank}
    both = pj.Session.start(run).feed([PROMPT]).feed([second])
    first = pj.Session.start(run).feed([PROMPT])
    for b, session in enumerate((both, first)):  # row 1's second segment is empty
        for name, dense in _dense(session.deltas).items():
            np.testing.assert_allclose(_dense(deltas, b)[name], dense, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="segment_len must be an int >= 0"):
        PC.replace(segment_len=-1)


# --------------------------------------------------------------------------- bake


def test_baked_weights_and_state_continue_like_the_deltas(run):
    baked = pj.bake(run, PROMPT)
    sampling, deltas = pj.prefill(CFG, run.params, [PROMPT], prosg_cfg=PC, sg_params=run.sg_params)
    np.testing.assert_allclose(baked.logits, sampling.last_logits[0], atol=1e-6, rtol=0)
    cont = jnp.asarray([[12, 13, 14, 15, 16]], jnp.int32)
    want, _, _ = forward_core(CFG, run.params, cont, sampling.state, deltas=deltas)
    got, _ = pj.forward(CFG, baked.params, cont, baked.state)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


RUNNER = os.path.join(os.path.dirname(__file__), "reference_runner.py")


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 7])
def test_a_baked_checkpoint_runs_in_the_reference_package(tmp_path, version):
    pytest.importorskip("rwkv.model", reason="the torch extra provides the reference package")
    from official_ckpt import random_tensors, write_pth

    path = write_pth(
        random_tensors(version, vocab=260, c=128, ffn=256, n_layer=2, seed=3),
        tmp_path / f"rwkv{version}.pth",
    )
    cfg, params = pj.load_rwkv(path)
    pc = pj.ProSGConfig(rank=4, matrices=("att.value", "ffn.value"), sg_hidden=16, key_dim=8)
    run = pj.Run(cfg, params, pc, _sg(cfg, pc, scale=0.3), "byte")
    prompt = [int(t) for t in np.random.default_rng(1).integers(1, 260, 24)]
    baked = pj.bake(run, prompt)
    pj.save_rwkv(tmp_path / "baked.pth", cfg, baked.params)
    pj.save_state(tmp_path / "baked_state.safetensors", cfg, baked.state)
    cont = np.random.default_rng(2).integers(0, 260, (1, 12)).astype(np.int64)
    np.save(tmp_path / "cont.npy", cont)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    out = tmp_path / "ref.npz"
    args = ["continue", str(version), str(tmp_path / "baked.pth")]
    args += [str(tmp_path / "baked_state.safetensors"), str(tmp_path / "cont.npy"), str(out)]
    proc = subprocess.run(
        [sys.executable, RUNNER, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sampling, deltas = pj.prefill(cfg, params, [prompt], prosg_cfg=pc, sg_params=run.sg_params)
    want, _, _ = forward_core(
        cfg, params, jnp.asarray(cont, jnp.int32), sampling.state, deltas=deltas
    )
    ref = np.load(out)["seq"]
    plain, _ = pj.forward(cfg, params, jnp.asarray(cont, jnp.int32), sampling.state)
    assert np.abs(np.asarray(plain[0]) - ref).max() > 1e-2  # the deltas are in the checkpoint
    np.testing.assert_allclose(ref, np.asarray(want[0]), atol=1e-4, rtol=0)
