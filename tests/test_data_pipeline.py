"""Grain pipeline: packing never mixes segments, shards are disjoint, resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from prosg_jax.data import build, mqar, pipeline, prompt_retention
from prosg_jax.data.tokenizers import ByteTokenizer, get_tokenizer

SEQ_LEN = 48


def _toy_source(n: int = 40, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random "generated-style" records of varied length, all distinct."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, SEQ_LEN + 2))
        tokens = rng.integers(2, 258, size=length).astype(np.int32)
        tokens[0] = 2 + i  # Makes every record distinct.
        out.append({"tokens": tokens, "loss_mask": rng.integers(0, 2, size=length, dtype=np.uint8)})
    return out


def _config(**overrides) -> pipeline.PipelineConfig:
    kwargs = dict(
        dataset="unused",
        seq_len=SEQ_LEN,
        batch_size=4,
        shard_index=0,
        shard_count=1,
        num_epochs=1,
        drop_remainder=False,
    )
    kwargs.update(overrides)
    return pipeline.PipelineConfig(**kwargs)


def _segments(batch: dict[str, np.ndarray]):
    """Yields (row, segment id, slice) for every segment, checking the row layout."""
    for r in range(batch["inputs"].shape[0]):
        seg, pos = batch["segment_ids"][r], batch["positions"][r]
        n_real = int((seg > 0).sum())
        # Segments are consecutive runs 1, 2, ..., k followed only by padding.
        assert (seg[:n_real] > 0).all() and (seg[n_real:] == 0).all()
        assert (np.diff(seg[:n_real]) >= 0).all() and (np.diff(seg[:n_real]) <= 1).all()
        if n_real:
            assert seg[0] == 1
        # Padding: id 0 everywhere, position 0, nothing scored.
        for key in ("inputs", "targets", "loss_mask", "positions"):
            assert (batch[key][r, n_real:] == 0).all(), key
        for s in range(1, int(seg.max(initial=0)) + 1):
            idx = np.flatnonzero(seg == s)
            # Positions restart at 0 at each segment: the recurrent state resets.
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
            yield r, s, slice(idx[0], idx[-1] + 1)


def _reconstruct(batch):
    """Each segment back as (tokens, per-token loss mask[1:])."""
    out = []
    for r, _, sl in _segments(batch):
        inputs, targets = batch["inputs"][r, sl], batch["targets"][r, sl]
        # Targets are inputs shifted left within the segment ...
        np.testing.assert_array_equal(targets[:-1], inputs[1:])
        # ... and the last target is the example's own final token.
        out.append((np.append(inputs, targets[-1]), batch["loss_mask"][r, sl]))
    return out


def _key(tokens) -> tuple[int, ...]:
    return tuple(int(t) for t in tokens)


@pytest.mark.parametrize("packing", [True, False])
def test_every_segment_is_exactly_one_example(packing):
    source = _toy_source()
    by_key = {_key(ex["tokens"]): ex for ex in source}
    seen = []
    for batch in pipeline.make_dataset(_config(packing=packing), source=source):
        assert set(batch) == set(pipeline.BATCH_KEYS)
        for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("loss_mask", np.float32)]:
            assert batch[key].dtype == dtype and batch[key].shape[1] == SEQ_LEN
        assert batch["segment_ids"].dtype == batch["positions"].dtype == np.int32
        for tokens, loss_mask in _reconstruct(batch):
            ex = by_key[_key(tokens)]  # KeyError = a segment mixing two examples.
            np.testing.assert_array_equal(loss_mask, ex["loss_mask"][1:])
            seen.append(_key(tokens))
        if not packing:
            assert batch["segment_ids"].max() <= 1
    # One epoch yields every example exactly once.
    assert sorted(seen) == sorted(by_key)


def test_packing_puts_several_examples_in_a_row():
    batches = list(pipeline.make_dataset(_config(packing=True), source=_toy_source()))
    assert max(int(b["segment_ids"].max()) for b in batches) >= 2


def test_loss_on_all_scores_every_real_target():
    for batch in pipeline.make_dataset(_config(loss_on="all"), source=_toy_source()):
        np.testing.assert_array_equal(batch["loss_mask"], (batch["segment_ids"] > 0))


def test_resumes_at_the_same_batch_from_a_saved_state():
    config = _config(shuffle=True, seed=3, num_epochs=None, drop_remainder=True)
    source = _toy_source(n=12)  # Small, so 6 batches cross epoch boundaries.
    it = pipeline.make_iterator(config, source=source)
    for _ in range(6):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # As a checkpoint would store it.
    expected = [next(it) for _ in range(4)]

    resumed = pipeline.make_iterator(config, source=source)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in pipeline.BATCH_KEYS:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_epochs_are_reshuffled():
    config = _config(shuffle=True, packing=False, batch_size=1, num_epochs=2)
    source = _toy_source(n=10)
    firsts = [int(b["inputs"][0, 0]) for b in pipeline.make_dataset(config, source=source)]
    assert sorted(firsts[:10]) == sorted(firsts[10:]) and firsts[:10] != firsts[10:]


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_are_disjoint_and_cover_the_data(shuffle):
    source = _toy_source(n=41)
    per_shard = []
    for index in range(2):
        config = _config(shard_index=index, shard_count=2, shuffle=shuffle, batch_size=4)
        keys = set()
        for batch in pipeline.make_dataset(config, source=source):
            assert batch["inputs"].shape[0] <= 2  # Global batch 4 over 2 processes.
            keys |= {_key(t) for t, _ in _reconstruct(batch)}
        per_shard.append(keys)
    assert not per_shard[0] & per_shard[1]
    assert len(per_shard[0]) == len(per_shard[1]) == 20  # Equal shards; 1 dropped.
    assert per_shard[0] | per_shard[1] <= {_key(ex["tokens"]) for ex in source}


def test_too_long_policies():
    long = {"tokens": np.arange(2, 2 + SEQ_LEN + 5, dtype=np.int32)}
    long["loss_mask"] = np.ones_like(long["tokens"], dtype=np.uint8)
    source = [long, *_toy_source(n=3)]
    with pytest.raises(ValueError, match="does not fit seq_len"):
        list(pipeline.make_dataset(_config(shuffle=False), source=source))
    batches = list(pipeline.make_dataset(_config(too_long="drop"), source=source))
    assert sum(len(_reconstruct(b)) for b in batches) == 3
    batches = list(
        pipeline.make_dataset(_config(too_long="truncate", packing=False), source=source)
    )
    rows = [t for b in batches for t, _ in _reconstruct(b)]
    assert any(len(t) == SEQ_LEN + 1 and t[0] == 2 for t in rows)


def _first_batch(data_dir, builder: str, cfg, *, seq_len: int, batch_size: int):
    """Builds ``cfg`` as ``<builder>/<cfg.name>`` in ``data_dir``; the pipeline's first batch."""
    build.build_dataset(builder, data_dir=data_dir, config=cfg)
    config = pipeline.PipelineConfig(
        dataset=f"{builder}/{cfg.name}",
        data_dir=str(data_dir),
        seq_len=seq_len,
        batch_size=batch_size,
        shard_index=0,
        shard_count=1,
    )
    return next(pipeline.make_iterator(config))


def test_prompt_retention_batches_score_only_answers(tmp_path):
    cfg = prompt_retention.PromptRetentionConfig(
        name="tiny", distance=64, num_facts=4, num_train=6, num_validation=1, num_test=1
    )
    batch = _first_batch(tmp_path, "prompt_retention", cfg, seq_len=1024, batch_size=2)
    assert batch["inputs"].shape == (2, 1024)
    examples = [prompt_retention.make_example(cfg, "train", i) for i in range(cfg.num_train)]
    by_key = {_key(ex["tokens"]): ex for ex in examples}
    tok = ByteTokenizer()
    segments = 0
    for r, _, sl in _segments(batch):
        tokens = np.append(batch["inputs"][r, sl], batch["targets"][r, sl][-1])
        ex = by_key[_key(tokens)]
        # Exactly the answers are scored, in order: formatted values, closing word.
        scored = tok.decode(batch["targets"][r, sl][batch["loss_mask"][r, sl] > 0])
        assert scored == "".join(ex["answers"]["text"])
        segments += 1
    assert segments >= 2


def test_mqar_batches_fill_seq_len_exactly(tmp_path):
    cfg = mqar.MqarConfig(
        name="tiny", seq_len=64, num_kv_pairs=8, num_train=8, num_validation=1, num_test=1
    )
    batch = _first_batch(tmp_path, "mqar", cfg, seq_len=64, batch_size=4)
    assert (batch["segment_ids"] == 1).all()  # One example per row, no padding.
    np.testing.assert_array_equal(batch["loss_mask"].sum(axis=1), [8] * 4)
    # Every scored target is a value (the answer to the key just read).
    scored = batch["loss_mask"] > 0
    assert (batch["targets"][scored] >= cfg.first_value_id).all()
    assert (batch["inputs"][scored] < cfg.first_value_id).all()


class PipelineToyText(tfds.core.GeneratorBasedBuilder):
    """A tiny local text dataset standing in for a real one (e.g. lm1b)."""

    VERSION = tfds.core.Version("1.0.0")
    TEXTS = ("hello world", "a second, longer line of text", "héllo ünïcode", "", "short")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, text in enumerate(self.TEXTS):
            yield i, {"text": text}


@pytest.mark.parametrize("tokenizer", ["byte", "world"])
def test_text_dataset_named_in_config(tmp_path, tokenizer):
    PipelineToyText(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    config = _config(
        dataset="pipeline_toy_text", data_dir=str(tmp_path), loss_on="all", tokenizer=tokenizer
    )
    tok = get_tokenizer(tokenizer)
    texts = []
    for batch in pipeline.make_dataset(config):
        assert batch["inputs"].max() < tok.vocab_size
        for tokens, _ in _reconstruct(batch):
            assert tokens[-1] == tok.eos_id
            texts.append(tok.decode(tokens[:-1]))
    # The empty text has nothing to predict and is skipped.
    assert sorted(texts) == sorted(t for t in PipelineToyText.TEXTS if t)

    with pytest.raises(ValueError, match="loss_on='all'"):
        next(
            iter(
                pipeline.make_dataset(_config(dataset="pipeline_toy_text", data_dir=str(tmp_path)))
            )
        )


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prosg_jax.data.build"):
        pipeline.load_source(_config(dataset="mqar/l64_kv4", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_dataset(_config(shard_index=0, shard_count=3), source=_toy_source())
    with pytest.raises(ValueError, match="loss_on"):
        _config(loss_on="answer")
    with pytest.raises(ValueError, match="too_long"):
        _config(too_long="clip")
    with pytest.raises(ValueError, match="both"):
        _config(shard_index=None)


def test_finite_epochs_refused_with_several_processes(monkeypatch):
    # Packed batch counts per shard are data-dependent, so a finite epoch count
    # would let one host run dry while the others wait in a collective.
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 4)
    with pytest.raises(ValueError, match="num_epochs must be None with 4 processes"):
        pipeline.make_dataset(
            _config(shard_index=0, shard_count=4, num_epochs=1), source=_toy_source(n=64)
        )
