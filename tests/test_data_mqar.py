"""mqar: Zoology's multi-query associative recall, built offline, no overwrites."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from prosg_jax.data import build, mqar, text_gen

TINY = mqar.MqarConfig(
    name="tiny",
    vocab_size=512,
    seq_len=64,
    num_kv_pairs=8,
    num_train=32,
    num_validation=8,
    num_test=8,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, build.build_dataset("mqar", data_dir=data_dir, config=TINY)


def _check_example(ex: dict, config: mqar.MqarConfig) -> None:
    tokens = np.asarray(ex["tokens"])
    mask = np.asarray(ex["loss_mask"])
    keys, values = np.asarray(ex["keys"]), np.asarray(ex["values"])
    qpos = np.asarray(ex["query_positions"])
    n, first_value = config.num_kv_pairs, config.first_value_id

    assert tokens.shape == mask.shape == (config.seq_len + config.distance + 1,)
    assert ((tokens > 0) & (tokens < config.vocab_size)).all()  # 0 is padding only.
    # Context: n distinct keys bound to n distinct values.
    np.testing.assert_array_equal(tokens[0 : 2 * n : 2], keys)
    np.testing.assert_array_equal(tokens[1 : 2 * n : 2], values)
    assert len(set(keys.tolist())) == n and len(set(values.tolist())) == n
    assert (keys >= 1).all() and (keys < first_value).all()
    assert (values >= first_value).all()
    # Every key is queried exactly once, after the context, at an even offset.
    assert sorted(tokens[qpos].tolist()) == sorted(keys.tolist())
    first_slot = 2 * n + config.distance
    assert (qpos >= first_slot).all() and ((qpos - first_slot) % 2 == 0).all()
    # No overwrite: a key only ever appears in its pair and its query, and
    # every appearance is followed by the value it was bound to.
    binding = dict(zip(keys.tolist(), values.tolist(), strict=True))
    key_positions = np.flatnonzero(np.isin(tokens, keys))
    assert len(key_positions) == 2 * n
    for p in key_positions:
        assert tokens[p + 1] == binding[int(tokens[p])]
    # The distractor: bindings of unqueried keys; every other key position is one.
    gap = tokens[2 * n : 2 * n + config.distance]
    assert (gap[0::2] < first_value).all() and (gap[1::2] >= first_value).all()
    assert len(np.flatnonzero(tokens < first_value)) == 2 * n + config.distance // 2
    # The loss mask marks exactly the answer (value) tokens of the queries.
    expected = np.zeros_like(mask)
    expected[qpos + 1] = 1
    np.testing.assert_array_equal(mask, expected)


def test_builds_offline_and_reads_back(built):
    _, builder = built
    sources = builder.as_data_source()
    assert {str(s): len(ds) for s, ds in sources.items()} == TINY.split_sizes()
    for split, ds in sources.items():
        for i in range(len(ds)):
            ex = ds[i]
            _check_example(ex, TINY)
            ref = mqar.make_example(TINY, str(split), i)
            np.testing.assert_array_equal(ex["tokens"], ref["tokens"])
            assert ex["seed"] == ref["seed"] and ex["index"] == i


@pytest.mark.parametrize("name", [c.name for c in mqar.BUILDER_CONFIGS[::4]])
def test_predefined_configs_keep_the_invariants(name):
    config = mqar.get_config(name)
    for split in text_gen.SPLITS:
        for i in range(3):
            _check_example(mqar.make_example(config, split, i), config)


def test_same_config_gives_same_bytes(built, tmp_path):
    data_dir, _ = built
    build.build_dataset("mqar", data_dir=tmp_path, config=TINY)
    first = sorted((data_dir / "mqar" / "tiny").rglob("*.array_record*"))
    second = sorted((tmp_path / "mqar" / "tiny").rglob("*.array_record*"))
    assert len(first) == len(text_gen.SPLITS)
    for a, b in zip(first, second, strict=True):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_splits_and_indices_differ():
    a = mqar.make_example(TINY, "train", 0)["tokens"]
    assert not np.array_equal(a, mqar.make_example(TINY, "test", 0)["tokens"])
    assert not np.array_equal(a, mqar.make_example(TINY, "train", 1)["tokens"])
    np.testing.assert_array_equal(a, mqar.make_example(TINY, "train", 0)["tokens"])


def test_power_law_puts_queries_early():
    # Zoology's power_a=0.01 favours short gaps; power_a=1 is uniform.
    def mean_gap(power_a):
        config = mqar.MqarConfig(name="p", seq_len=512, num_kv_pairs=8, power_a=power_a)
        gaps = [mqar.make_example(config, "train", i)["query_positions"] for i in range(50)]
        return float(np.mean(gaps)) - 16

    assert mean_gap(0.01) < 0.5 * mean_gap(1.0)


def test_distance_inserts_filler_and_keeps_the_rest():
    # The same pairs and queries at every distance, D filler tokens later; D=0 is
    # the plain config, and a shorter inserted gap is a prefix of a longer one.
    n = TINY.num_kv_pairs
    plain = mqar.make_example(TINY, "test", 3)
    gaps = {}
    for distance in (0, 6, 300):
        config = dataclasses.replace(TINY, name=f"d{distance}", distance=distance)
        ex = mqar.make_example(config, "test", 3)
        _check_example(ex, config)
        for key in ("keys", "values"):
            np.testing.assert_array_equal(ex[key], plain[key])
        np.testing.assert_array_equal(ex["query_positions"], plain["query_positions"] + distance)
        np.testing.assert_array_equal(ex["tokens"][: 2 * n], plain["tokens"][: 2 * n])
        for key in ("tokens", "loss_mask"):
            np.testing.assert_array_equal(ex[key][2 * n + distance :], plain[key][2 * n :])
        gaps[distance] = ex["tokens"][2 * n : 2 * n + distance]
    np.testing.assert_array_equal(gaps[300][:6], gaps[6])
    assert len(set(gaps[300][0::2].tolist())) > 100  # many distinct distractor keys


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_len": 63}, "even"),
        ({"seq_len": 32, "num_kv_pairs": 16}, "too small for 16 pairs"),
        ({"vocab_size": 16, "num_kv_pairs": 8}, "vocab_size=16 is too small"),
        ({"num_kv_pairs": 0}, "num_kv_pairs"),
        ({"power_a": 0.0}, "power_a"),
        ({"distance": -2}, "distance"),
        ({"distance": 7}, "even"),
        ({"vocab_size": 18, "num_kv_pairs": 8, "distance": 2}, "no unqueried key"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mqar.MqarConfig(name="bad", **kwargs)


def test_unknown_config_name_raises():
    with pytest.raises(ValueError, match="Unknown mqar config"):
        mqar.get_config("l100_kv3")
    with pytest.raises(ValueError, match="Unknown mqar config"):
        build.make_builder("mqar/l100_kv3")
    with pytest.raises(SystemExit):  # The CLI reports it in one line.
        build.main(["mqar/l100_kv3"])
