"""prompt_retention: builds offline, reads back, and keeps its promises."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest

from prosg_jax.data import build, prompt_retention, text_gen
from prosg_jax.data.tokenizers import ByteTokenizer

SPLITS = text_gen.SPLITS
TINY = prompt_retention.PromptRetentionConfig(
    name="tiny", distance=64, num_facts=4, num_train=24, num_validation=12, num_test=12
)


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else x


def _build(data_dir: pathlib.Path):
    return build.build_dataset("prompt_retention", data_dir=data_dir, config=TINY)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny config generated into a temp TFDS data_dir."""
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, _build(data_dir)


def _check_example(ex: dict, distance: int) -> None:
    """Every per-example invariant the dataset promises."""
    prompt, distractor, queries = (_text(ex[k]) for k in ("prompt", "distractor", "queries"))
    tokens = np.asarray(ex["tokens"])
    mask = np.asarray(ex["loss_mask"])
    tok = ByteTokenizer()

    # Layout: exactly D distractor tokens between prompt and queries, then EOS.
    assert len(distractor) == distance
    assert prompt.endswith("\n") and queries.startswith("\nQ: ")
    assert tokens[-1] == ByteTokenizer.EOS_ID and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:-1], tok.encode(prompt + distractor + queries))
    assert (tokens != 0).all()  # Id 0 is padding, never content.

    answers = ex["answers"]
    starts, ends = np.asarray(answers["start"]), np.asarray(answers["end"])
    values = [_text(v) for v in answers["value"]]
    texts = [_text(t) for t in answers["text"]]
    kinds = [_text(k) for k in answers["kind"]]
    assert kinds == ["fact"] * (len(kinds) - 1) + ["closing_word"]

    # The loss mask covers exactly the answer spans, and the spans hold the answers.
    expected = np.zeros_like(mask)
    for s, e, text in zip(starts, ends, texts, strict=True):
        assert tok.decode(tokens[s:e]) == text
        expected[s:e] = 1
    np.testing.assert_array_equal(mask, expected)
    # All answers come after the distractor.
    assert starts.min() >= len(tok.encode(prompt + distractor))

    # Every answer is recallable from the prompt and absent from the distractor.
    for value in values:
        assert value in prompt
        assert value.lower() not in distractor.lower()
    # The answer format and the closing word are the ones the prompt asks for.
    closing = _text(ex["closing_word"])
    assert values[-1] == closing and texts[-1] == closing
    assert f'"{prompt_retention.CLOSING_CUE}" followed by the word {closing}.' in prompt
    fmt = {d: (o, c) for d, o, c in prompt_retention.FORMATS}[_text(ex["answer_format"])]
    for text, value in zip(texts[:-1], values[:-1], strict=True):
        assert text == f"{fmt[0]}{value}{fmt[1]}"
    # Queried facts are facts of this prompt.
    facts = dict(
        zip(map(_text, ex["facts"]["name"]), map(_text, ex["facts"]["value"]), strict=True)
    )
    assert set(values[:-1]) <= set(facts.values())
    assert len(set(facts.values()) | {closing}) == len(facts) + 1  # All distinct.


def test_builds_offline_and_reads_back(built):
    _, builder = built
    sources = builder.as_data_source()
    assert {str(s): len(ds) for s, ds in sources.items()} == TINY.split_sizes()
    for split in SPLITS:
        for i in (0, len(sources[split]) - 1):
            ex = sources[split][i]
            ref = prompt_retention.make_example(TINY, split, i)
            # Record i is example i: it can be regenerated on its own.
            assert ex["index"] == i and ex["seed"] == ref["seed"]
            np.testing.assert_array_equal(ex["tokens"], ref["tokens"])
            np.testing.assert_array_equal(ex["loss_mask"], ref["loss_mask"])
            assert _text(ex["prompt"]) == ref["prompt"]


def test_readable_by_name_with_tfds_data_source(built):
    import tensorflow_datasets as tfds

    data_dir, _ = built
    ds = tfds.data_source("prompt_retention/tiny", split="test", data_dir=data_dir, download=False)
    assert len(ds) == TINY.num_test
    assert _text(ds[5]["split"]) == "test"


def test_every_stored_example_keeps_the_invariants(built):
    _, builder = built
    for split, ds in builder.as_data_source().items():
        for i in range(len(ds)):
            _check_example(ds[i], TINY.distance)
            assert _text(ds[i]["split"]) == str(split)


@pytest.mark.parametrize("name", ["d64_f16", "d1024_f4", "d4096_f8"])
def test_invariants_hold_for_predefined_configs(name):
    config = prompt_retention.get_config(name)
    for split in SPLITS:
        for i in range(3):
            ex = prompt_retention.make_example(config, split, i)
            _check_example(ex, config.distance)
            assert len(ex["answers"]["value"]) == config.num_facts + 1


def test_same_config_gives_same_bytes(built, tmp_path):
    data_dir, _ = built
    _build(tmp_path)
    first = sorted((data_dir / "prompt_retention" / "tiny").rglob("*.array_record*"))
    second = sorted((tmp_path / "prompt_retention" / "tiny").rglob("*.array_record*"))
    assert [p.name for p in first] == [p.name for p in second] and len(first) == len(SPLITS)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_seed_depends_on_split_index_and_config_seed():
    a = prompt_retention.make_example(TINY, "train", 0)
    assert prompt_retention.make_example(TINY, "train", 0)["prompt"] == a["prompt"]
    assert prompt_retention.make_example(TINY, "train", 1)["prompt"] != a["prompt"]
    reseeded = prompt_retention.PromptRetentionConfig(name="tiny_s1", num_facts=4, seed=1)
    assert prompt_retention.make_example(reseeded, "train", 0)["prompt"] != a["prompt"]


def test_distance_only_changes_the_distractor():
    short = prompt_retention.make_example(prompt_retention.get_config("d64_f8"), "test", 7)
    long = prompt_retention.make_example(prompt_retention.get_config("d1024_f8"), "test", 7)
    assert short["prompt"] == long["prompt"] and short["queries"] == long["queries"]
    assert long["distractor"].startswith(short["distractor"])
    assert len(long["tokens"]) - len(short["tokens"]) == 1024 - 64


def _bound(config, distance, share):
    return dataclasses.replace(
        config, name=f"{config.name}_b{share}", distance=distance, distractor_facts=share
    )


@pytest.mark.parametrize("share", [30, 100])
def test_distractor_facts_only_change_the_distractor(share):
    base = prompt_retention.get_config("d64_f8")
    for split in SPLITS:
        for i in range(3):
            plain = prompt_retention.make_example(base, split, i)
            short = prompt_retention.make_example(_bound(base, 300, share), split, i)
            long = prompt_retention.make_example(_bound(base, 2000, share), split, i)
            _check_example(long, 2000)
            assert short["prompt"] == plain["prompt"] and short["queries"] == plain["queries"]
            np.testing.assert_array_equal(short["loss_mask"][-80:], plain["loss_mask"][-80:])
            assert long["distractor"].startswith(short["distractor"])
            # No prompt name (nor value, checked above) is mentioned in the distractor.
            for name in long["facts"]["name"]:
                assert name.lower() not in long["distractor"].lower()
            # The distractor states facts about other names with the prompt's attributes
            # (a sentence cut by the distance limit may be partial).
            sentences = long["distractor"].split(". ")[:-1]
            facts = [s for s in sentences if any(a in s for a, _ in prompt_retention.ATTRIBUTES)]
            if share == 100:
                assert len(facts) == len(sentences) > 30
            else:
                assert 0.15 < len(facts) / len(sentences) < 0.45


def test_zero_distractor_facts_keep_the_predefined_examples():
    config = prompt_retention.get_config("d256_f4")
    explicit = dataclasses.replace(config, name="d256_f4_b0", distractor_facts=0)
    for i in range(3):
        a = prompt_retention.make_example(config, "train", i)
        b = prompt_retention.make_example(explicit, "train", i)
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        assert set(a["distractor"]) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .")


def test_split_pools_are_disjoint():
    pools = {split: text_gen.invented_pools(split) for split in SPLITS}
    for field in ("names", "words", "codes"):
        sets = [set(getattr(pools[s], field)) for s in SPLITS]
        assert all(sets), field
        assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2], field


def test_built_splits_share_no_names_or_values(built):
    _, builder = built
    seen = {}
    for split, ds in builder.as_data_source().items():
        items = set()
        for i in range(len(ds)):
            ex = ds[i]
            items |= {_text(x) for x in ex["facts"]["name"]}
            items |= {_text(x) for x in ex["facts"]["value"]}
            items.add(_text(ex["closing_word"]))
        seen[str(split)] = items
    assert not seen["train"] & seen["test"]
    assert not seen["train"] & seen["validation"]
    assert not seen["validation"] & seen["test"]


def test_filler_text_has_no_answer_characters():
    text = text_gen.filler_text(np.random.default_rng(0), 5000)
    assert len(text) == 5000
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .")
    # Not trivially compressible: many distinct words.
    assert len(set(text.split())) > 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"distance": -1},
        {"num_facts": 0},
        {"num_facts": prompt_retention.MAX_FACTS + 1},
        {"num_facts": 4, "num_queries": 5},
        {"num_train": -1},
        {"distractor_facts": -1},
        {"distractor_facts": 101},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        prompt_retention.PromptRetentionConfig(name="bad", **kwargs)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="Unknown prompt_retention config"):
        prompt_retention.get_config("d65_f8")
    with pytest.raises(ValueError, match="Unknown split"):
        prompt_retention.make_example(TINY, "dev", 0)
    with pytest.raises(ValueError, match="Unknown generated dataset"):
        build.make_builder("prompt_retentio/d64_f4")
