"""mqar: Zoology's multi-query associative recall, built offline, no overwrites."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from prosg_jax import tasks
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
    k, span = config.key_tokens, config.pair_len
    value_at = k + config.value_gap
    keys = np.asarray(ex["keys"]).reshape(-1, k)
    values = np.asarray(ex["values"])
    qpos = np.asarray(ex["query_positions"])
    n, first_value = config.num_kv_pairs, config.first_value_id
    key_set = {tuple(key) for key in keys.tolist()}

    assert tokens.shape == mask.shape == (config.seq_len + config.distance + 1,)
    assert ((tokens > 0) & (tokens < config.vocab_size)).all()  # 0 is padding only.
    # Context: n distinct keys bound to n distinct values.
    context = tokens[: span * n].reshape(n, span)
    np.testing.assert_array_equal(context[:, :k], keys)
    np.testing.assert_array_equal(context[:, value_at], values)
    assert len(key_set) == n and len(set(values.tolist())) == n
    assert (keys >= 1).all() and (keys < first_value).all()
    assert (values >= first_value).all()
    # Every key is queried exactly once, after the context, at a whole number of pairs.
    queried = tokens[qpos[:, None] + np.arange(k)]
    assert sorted(map(tuple, queried.tolist())) == sorted(key_set)
    first_slot = span * n + config.distance
    assert (qpos >= first_slot).all() and ((qpos - first_slot) % span == 0).all()
    # No overwrite: key ids only ever appear in the pairs, the queries and the
    # distractor's pairs; every queried key's appearances are its pair and its
    # query, each followed by the value it was bound to.
    binding = dict(zip(map(tuple, keys.tolist()), values.tolist(), strict=True))
    pair_starts = np.concatenate(
        [np.arange(0, span * n + config.distance, span), qpos]
    )  # context, distractor, queries
    is_key_id = tokens < first_value
    expected_key_ids = np.zeros_like(is_key_id)
    expected_key_ids[pair_starts[:, None] + np.arange(k)] = True
    np.testing.assert_array_equal(is_key_id, expected_key_ids)
    seen = [tuple(tokens[p : p + k].tolist()) for p in pair_starts]
    for p, key in zip(pair_starts, seen, strict=True):
        if key in binding:
            assert tokens[p + value_at] == binding[key]
    assert sum(key in binding for key in seen) == 2 * n  # distractor keys are never queried
    # The loss mask marks exactly the answer (value) tokens of the queries.
    expected = np.zeros_like(mask)
    expected[qpos + value_at] = 1
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


MULTI = mqar.MqarConfig(
    name="k3", vocab_size=20, seq_len=128, num_kv_pairs=8, key_tokens=3, distance=400
)


def test_multi_token_keys_keep_the_invariants():
    for split in text_gen.SPLITS:
        for i in range(20):
            _check_example(mqar.make_example(MULTI, split, i), MULTI)
    plain = dataclasses.replace(MULTI, name="k3d0", distance=0)
    for i in range(5):
        _check_example(mqar.make_example(plain, "test", i), plain)


def test_multi_token_keys_share_their_tokens():
    # With 9 key ids no single key position names the key: two of the 8 keys
    # almost always share their last id (all distinct has probability 0.8%).
    shared = 0
    for i in range(50):
        keys = mqar.make_example(MULTI, "train", i)["keys"].reshape(-1, 3)
        shared += len(set(keys[:, -1].tolist())) < len(keys)
    assert shared >= 45
    # The distractor's keys are uniform over the unqueried ones: all 9 ids in every slot.
    ex = mqar.make_example(MULTI, "train", 0)
    distractor = ex["tokens"][32 : 32 + MULTI.distance].reshape(-1, 4)
    for slot in range(3):
        assert set(distractor[:, slot].tolist()) == set(range(1, 10))


GAPPED = dataclasses.replace(MULTI, name="k3g4", seq_len=192, value_gap=4, distance=400)


def test_value_gap_keeps_the_invariants():
    for split in text_gen.SPLITS:
        for i in range(20):
            _check_example(mqar.make_example(GAPPED, split, i), GAPPED)
    one_token = mqar.MqarConfig(name="g2", vocab_size=64, seq_len=96, num_kv_pairs=8, value_gap=2)
    for i in range(5):
        _check_example(mqar.make_example(one_token, "test", i), one_token)
    # The gap holds filler (value ids), drawn afresh in every pair and query.
    ex = mqar.make_example(GAPPED, "test", 0)
    pairs = ex["tokens"][: 8 * GAPPED.num_kv_pairs].reshape(-1, 8)
    assert (pairs[:, 3:7] >= GAPPED.first_value_id).all()
    assert len({tuple(row) for row in pairs[:, 3:7].tolist()}) == GAPPED.num_kv_pairs


@pytest.mark.parametrize(
    "config", [TINY, MULTI, GAPPED], ids=["one-token", "three-token", "three-token-gap"]
)
def test_encode_record_cuts_after_the_pairs(config):
    # The ProSG and eval paths: the prompt is the pairs, each answer the value after its query.
    from prosg_jax import tasks
    from prosg_jax.data.tokenizers import ByteTokenizer

    ex = mqar.make_example(config, "validation", 1)
    out = tasks.get("mqar").encode(ex, ByteTokenizer())
    span = config.pair_len
    np.testing.assert_array_equal(out["prompt"], ex["tokens"][: span * config.num_kv_pairs])
    answers = out["cont"][out["answer_start"]]
    np.testing.assert_array_equal(np.sort(answers), np.sort(ex["values"]))
    np.testing.assert_array_equal(out["answer_end"] - out["answer_start"], 1)
    np.testing.assert_array_equal(np.flatnonzero(out["answer_mask"]), np.sort(out["answer_start"]))


def test_one_token_keys_keep_their_examples():
    # key_tokens=1 is the layout from before key_tokens existed: these digests
    # pin its examples (and so every dataset already built or trained on).
    import hashlib

    digests = {}
    for config in (TINY, dataclasses.replace(TINY, name="d", distance=300)):
        ex = mqar.make_example(config, "test", 3)
        digests[config.name] = hashlib.sha256(ex["tokens"].tobytes()).hexdigest()[:16]
    assert digests == {"tiny": "3c262581b31a130d", "d": "7756f16c6aac6247"}


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
        ({"key_tokens": 0}, "key_tokens"),
        ({"key_tokens": 3, "seq_len": 130}, "multiple of the pair length"),
        ({"value_gap": -1}, "value_gap"),
        ({"key_tokens": 3, "value_gap": 4, "seq_len": 128}, r"need seq_len >= 16 \* num_kv"),
        ({"value_gap": 1, "seq_len": 130}, "multiple of the pair length"),
        ({"key_tokens": 3, "seq_len": 120, "num_kv_pairs": 16}, "too small for 16 pairs"),
        ({"key_tokens": 2, "vocab_size": 8, "num_kv_pairs": 10, "seq_len": 120}, "9 keys"),
        ({"key_tokens": 2, "vocab_size": 12, "num_kv_pairs": 10, "seq_len": 120}, "6 value ids"),
        ({"key_tokens": 3, "distance": 6}, "multiple >= 0 of the pair length"),
        ({"value_gap": 2, "distance": 6}, "multiple >= 0 of the pair length"),
        ({"key_tokens": 7, "vocab_size": 2**20, "seq_len": 256}, "int64"),
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


def test_generation_prints_our_line_not_tfds_unknown_sizes(tmp_path, capfd):
    from prosg_jax.tasks import datasets

    name = "mqar/l64_kv4_voc128_n16_val4_t0"
    spec = tasks.parse_dataset(name)
    datasets.prepare(spec, str(tmp_path))
    out, err = capfd.readouterr()
    where = tmp_path / name / "1.0.0"
    assert f"Generating {name} (train 16 / validation 4 examples) into {where}" in err.splitlines()
    assert "Unknown size" not in out + err
    assert "downloaded and prepared" not in out + err
    datasets.prepare(spec, str(tmp_path))  # Already on disk: reused, silently.
    out, err = capfd.readouterr()
    assert "Generating" not in out + err


def test_build_survives_a_concurrent_build_of_the_same_dataset(tmp_path, monkeypatch):
    """Two processes generating one dataset into one data_dir: the slower one reuses it."""

    spec = tasks.parse_dataset("mqar/l64_kv4_voc128_n16_val4_t0")
    calls = []

    def lose_the_race(self, **kwargs):
        # What TFDS raises when the other process renamed its copy into place first.
        calls.append(kwargs)
        if len(calls) == 1:
            monkeypatch.undo()
            build.build_dataset(spec.task.name, data_dir=str(tmp_path), config=spec.config)
        raise FileExistsError("Destination ... already exists.")

    builder_cls = type(
        build.make_builder(spec.task.name, data_dir=str(tmp_path), config=spec.config)
    )
    monkeypatch.setattr(builder_cls, "download_and_prepare", lose_the_race)
    builder = build.build_dataset(spec.task.name, data_dir=str(tmp_path), config=spec.config)
    assert builder.is_prepared() and len(builder.as_data_source()["train"]) == 16
    # Without a finished copy beside it, the error is real and is not swallowed.
    other = tasks.parse_dataset("mqar/l64_kv4_voc128_n8_val4_t0")
    builder_cls = type(
        build.make_builder(other.task.name, data_dir=str(tmp_path), config=other.config)
    )
    monkeypatch.setattr(builder_cls, "download_and_prepare", lose_the_race)
    with pytest.raises(FileExistsError):
        build.build_dataset(other.task.name, data_dir=str(tmp_path), config=other.config)
