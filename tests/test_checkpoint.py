"""Loading official checkpoints: round trips and every bad-input error."""

from __future__ import annotations

import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from official_ckpt import random_tensors, write_pth

import prosg_jax as pj
from prosg_jax.checkpoint import CheckpointError

torch = pytest.importorskip("torch", reason="the torch extra reads .pth files")


@pytest.fixture(params=[4, 7], ids=["rwkv4", "rwkv7"])
def tensors(request):
    # RWKV-7 keeps the official head size 64, so it needs C >= 128.
    c = 64 if request.param == 4 else 128
    return random_tensors(request.param, vocab=41, c=c, ffn=2 * c, n_layer=2)


def _load_dict(tmp_path, tensors):
    return pj.load_rwkv(write_pth(tensors, tmp_path / "m.pth"))


def test_pth_and_safetensors_agree(tmp_path, tensors):
    from safetensors.numpy import save_file

    cfg, params = _load_dict(tmp_path, tensors)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    cfg2, params2 = pj.load_rwkv(tmp_path / "m.safetensors")
    assert cfg == cfg2
    chex.assert_trees_all_equal(params, params2)
    assert cfg.vocab_size == 41 and cfg.n_layer == 2
    # Every tensor of the file lands in the params (layer-0 v0/v1/v2 of v7 excepted).
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    n_file = sum(v.size for k, v in tensors.items() if k not in unused)
    assert sum(x.size for x in jax.tree.leaves(params)) == n_file


def test_half_precision_file_and_bf16_load(tmp_path, tensors):
    path = tmp_path / "half.pth"
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}, path)
    cfg, params = pj.load_rwkv(path, dtype=jnp.bfloat16)
    assert cfg.dtype == "bfloat16"
    assert params["emb"]["weight"].dtype == jnp.bfloat16


def test_save_round_trip_is_atomic(tmp_path, tensors):
    cfg, params = _load_dict(tmp_path, tensors)
    out = pj.save_rwkv(tmp_path / "out.pth", cfg, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth", "out.pth"]
    cfg2, params2 = pj.load_rwkv(out)
    assert cfg2 == cfg
    chex.assert_trees_all_equal(params2, params)


def test_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        pj.load_rwkv(tmp_path / "nope.pth")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported checkpoint format '.bin'"):
        pj.load_rwkv(tmp_path / "m.bin")


def test_corrupt_files(tmp_path, tensors):
    (tmp_path / "junk.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        pj.load_rwkv(tmp_path / "junk.pth")
    good = write_pth(tensors, tmp_path / "m.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        pj.load_rwkv(tmp_path / "cut.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        pj.load_rwkv(tmp_path / "junk.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        pj.load_rwkv(path)
    assert "code ran" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        pj.load_rwkv(path)


def test_unknown_layouts(tmp_path):
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        _load_dict(tmp_path, {"foo.weight": np.zeros((2, 2), np.float32)})
    torch.save({"state_dict": {"emb.weight": torch.zeros(2, 2)}}, tmp_path / "nested.pth")
    with pytest.raises(CheckpointError, match="flat dict of tensors"):
        pj.load_rwkv(tmp_path / "nested.pth")
    v6 = {
        "emb.weight": np.zeros((4, 4), np.float32),
        "blocks.0.att.time_maa_x": np.zeros((1, 1, 4), np.float32),
    }
    with pytest.raises(CheckpointError, match="RWKV-5/6 checkpoints are not supported"):
        _load_dict(tmp_path, v6)


def test_missing_key(tmp_path, tensors):
    del tensors["blocks.1.ffn.value.weight"]
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\).*blocks.1.ffn.value.weight"):
        _load_dict(tmp_path, tensors)


def test_unexpected_key(tmp_path, tensors):
    tensors["blocks.1.att.extra"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\).*blocks.1.att.extra"):
        _load_dict(tmp_path, tensors)


def test_shape_mismatch(tmp_path, tensors):
    tensors["blocks.1.att.key.weight"] = tensors["blocks.1.att.key.weight"][:, :-1]
    with pytest.raises(CheckpointError, match="shape mismatch for 'blocks.1.att.key.weight'"):
        _load_dict(tmp_path, tensors)


def test_non_finite_weights(tmp_path, tensors):
    tensors["head.weight"][3, 2] = np.nan
    with pytest.raises(CheckpointError, match="'head.weight' has non-finite values"):
        _load_dict(tmp_path, tensors)


def test_integer_tensor(tmp_path, tensors):
    path = tmp_path / "int.pth"
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    state["emb.weight"] = state["emb.weight"].to(torch.int64)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="non-float dtype"):
        pj.load_rwkv(path)


def test_inconsistent_shapes_are_a_checkpoint_error(tmp_path):
    tensors = random_tensors(7, vocab=41, c=128, ffn=256, n_layer=2)
    tensors["blocks.0.att.r_k"] = np.zeros((2, 40), np.float32)  # 128 is no multiple of 40
    with pytest.raises(CheckpointError, match="inconsistent tensor shapes.*head_size"):
        _load_dict(tmp_path, tensors)


def test_stray_block_index_fails_fast(tmp_path, tensors):
    tensors["blocks.100000.att.foo"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match="no block 2, yet 'blocks.100000.att.foo'"):
        _load_dict(tmp_path, tensors)
