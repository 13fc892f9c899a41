"""Grain input pipeline: TFDS data source -> fixed-shape, packed LM batches.

Every batch is a dict of numpy arrays, all `[B, T]` (B = per-process batch,
T = `seq_len`):

* `inputs` int32: token ids fed to the model (0 = padding).
* `targets` int32: next-token ids, `inputs` shifted left *within* a segment.
* `loss_mask` float32: 1 where `targets` is scored.
* `segment_ids` int32: 1, 2, 3, ... per packed example in a row; 0 = padding.
* `positions` int32: 0 at the first token of each segment, counting up;
  padding has position 0. Models reset their recurrent state where
  `positions == 0`, so packed neighbours and padding never share state.

Boundary convention: an example of n tokens (EOS included for text) becomes
the segment `inputs = tokens[:-1]`, `targets = tokens[1:]`. So every target is
a real token of the segment's own example, the last input position's target is
that example's final token (EOS for text), and no target ever crosses into the
next segment. Padding has target 0 and loss_mask 0.

Sources: a generated dataset (`prompt_retention/<config>` or `mqar/<config>`,
records with `tokens` and a per-token `loss_mask` of answer tokens), or any
TFDS text dataset prepared locally in array_record format (records with a text
field, tokenized here with `PipelineConfig.tokenizer`, EOS appended; empty
texts are skipped). The example-level `loss_mask` marks answer *tokens*;
aligned with targets it becomes `loss_mask[1:]`.

Multi-host: each process reads a disjoint, equal-sized shard of the source
(`shard_index::shard_count`, defaulting to `jax.process_index()` /
`jax.process_count()`) and yields `batch_size // shard_count` rows.

Resuming: the iterator returned by `make_iterator` has `get_state()` (a
JSON-serialisable dict) and `set_state(state)`; restoring a saved state into a
fresh iterator built from the same config yields the same next batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

# Imported for their side effect: registering the generated builders with tfds.
from prosg_jax.data import mqar, prompt_retention  # noqa: F401
from prosg_jax.data.tokenizers import Tokenizer, get_tokenizer

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
LOSS_ON = ("answers", "all")
TOO_LONG = ("error", "truncate", "drop")
_SEQ_KEYS = ("inputs", "targets", "loss_mask")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """Input pipeline settings.

    Attributes:
      dataset: TFDS name with optional config and version, e.g.
        "prompt_retention/d256_f8", "mqar/l256_kv16" or a real text dataset
        such as "lm1b" that is already prepared (array_record) in `data_dir`.
      split: TFDS split, slicing allowed (e.g. "train[:90%]").
      data_dir: TFDS data directory; None uses TFDS' default.
      seq_len: T, the row length of every batch.
      batch_size: Global batch size; each process yields
        `batch_size // shard_count` rows.
      packing: Pack several examples per row (first fit) instead of one
        example per padded row.
      loss_on: "answers" scores only answer tokens (needs a dataset with a
        `loss_mask` field); "all" scores every real target token.
      text_key: Field holding the text, for text datasets.
      tokenizer: Tokenizer for text datasets, by `tokenizers.get_tokenizer`
        name ("byte" or "world"). Generated datasets are stored pre-tokenized.
      shuffle: Shuffle examples (differently every epoch).
      seed: Shuffle seed.
      num_epochs: Passes over the data; None repeats forever.
      too_long: What to do with an example longer than `seq_len + 1` tokens:
        "error", "truncate" (keep the first `seq_len + 1`) or "drop".
      drop_remainder: Drop a last, incomplete batch.
      num_workers: Grain worker processes (0 = read in this process). Each
        worker packs its own slice of the stream, so the batch order depends
        on this number; for a fixed value it is deterministic and resumable.
      shard_index: This process' shard; None uses `jax.process_index()`.
      shard_count: Number of shards; None uses `jax.process_count()`.
    """

    dataset: str = f"prompt_retention/{prompt_retention.DEFAULT_CONFIG_NAME}"
    split: str = "train"
    data_dir: str | None = None
    seq_len: int = 2048
    batch_size: int = 8
    packing: bool = True
    loss_on: str = "answers"
    text_key: str = "text"
    tokenizer: str = "byte"
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    too_long: str = "error"
    drop_remainder: bool = True
    num_workers: int = 0
    shard_index: int | None = None
    shard_count: int | None = None

    def __post_init__(self):
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {self.loss_on!r}.")
        if self.too_long not in TOO_LONG:
            raise ValueError(f"too_long must be one of {TOO_LONG}, got {self.too_long!r}.")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {self.num_epochs}.")
        if (self.shard_index is None) != (self.shard_count is None):
            raise ValueError("Set both shard_index and shard_count, or neither.")


def load_source(config: PipelineConfig) -> Sequence[dict[str, Any]]:
    """Opens `config.dataset`'s split as a random-access TFDS data source.

    Nothing is downloaded or generated here: build the generated datasets first
    (`python -m prosg_jax.data.build NAME --data_dir DIR`).

    Args:
      config: Pipeline config (uses `dataset`, `split`, `data_dir`).

    Returns:
      A `tfds` `ArrayRecordDataSource`: `len()` and `[i]` give decoded examples.

    Raises:
      FileNotFoundError: If the dataset is not prepared in `data_dir`.
    """
    builder = tfds.builder(config.dataset, data_dir=config.data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"Dataset {config.dataset!r} is not prepared in data_dir={config.data_dir!r}; for the "
            f"generated ones run `python -m prosg_jax.data.build {config.dataset} --data_dir DIR`."
        )
    return builder.as_data_source(split=config.split)


def example_to_sequences(
    example: dict[str, Any],
    *,
    loss_on: str,
    text_key: str = "text",
    tokenizer: Tokenizer | None = None,
) -> dict[str, np.ndarray]:
    """Turns one decoded example into unpadded `inputs`/`targets`/`loss_mask`.

    Args:
      example: A record of a generated dataset (has `tokens` and `loss_mask`)
        or of a text dataset (has `text_key`).
      loss_on: "answers" or "all" (see `PipelineConfig`).
      text_key: Text field of text datasets.
      tokenizer: Encodes text datasets (its `eos_id` is appended); defaults
        to the byte tokenizer.

    Returns:
      1-D `inputs` (int32), `targets` (int32) and `loss_mask` (float32) of
      equal length `n - 1` for an n-token example (empty if n < 2).

    Raises:
      ValueError: For `loss_on="answers"` without a `loss_mask` field, or an
        example that has neither `tokens` nor `text_key`.
    """
    if "tokens" in example:
        tokens = np.asarray(example["tokens"], dtype=np.int32)
        answer_mask = example.get("loss_mask")
    elif text_key in example:
        text = example[text_key]
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        tokenizer = tokenizer or get_tokenizer("byte")
        tokens = np.append(np.asarray(tokenizer.encode(text), dtype=np.int32), tokenizer.eos_id)
        answer_mask = None
    else:
        raise ValueError(
            f"Example has neither 'tokens' nor text field {text_key!r}; fields: {sorted(example)}."
        )
    if loss_on == "answers":
        if answer_mask is None:
            raise ValueError(
                "loss_on='answers' needs a dataset with a per-token 'loss_mask' field; "
                "use loss_on='all' for plain text."
            )
        loss_mask = np.asarray(answer_mask[1:], dtype=np.float32)
    else:
        loss_mask = np.ones(max(len(tokens) - 1, 0), dtype=np.float32)
    return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": loss_mask}


def _fit_length(seqs: dict[str, np.ndarray], seq_len: int, too_long: str) -> dict | None:
    """Applies the too-long policy; None means "drop this example"."""
    n = len(seqs["inputs"])
    if n <= seq_len:
        return seqs
    if too_long == "truncate":
        return {k: v[:seq_len] for k, v in seqs.items()}
    if too_long == "drop":
        return None
    raise ValueError(
        f"Example of {n + 1} tokens does not fit seq_len={seq_len} (needs seq_len >= {n}); "
        "raise seq_len or set too_long='truncate' or 'drop'."
    )


def _pad_row(seqs: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One example per row: pad to `seq_len`, single segment with id 1."""
    n = len(seqs["inputs"])
    row = {k: np.zeros(seq_len, dtype=v.dtype) for k, v in seqs.items()}
    for k, v in seqs.items():
        row[k][:n] = v
    row["segment_ids"] = np.zeros(seq_len, dtype=np.int32)
    row["segment_ids"][:n] = 1
    row["positions"] = np.zeros(seq_len, dtype=np.int32)
    row["positions"][:n] = np.arange(n, dtype=np.int32)
    return row


def _from_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames grain's packing outputs to the batch convention."""
    # Grain packs each feature separately but with identical layout, so the
    # inputs' segment ids/positions describe every packed feature.
    return {
        "inputs": row["inputs"],
        "targets": row["targets"],
        "loss_mask": row["loss_mask"],
        "segment_ids": row["inputs_segment_ids"].astype(np.int32),
        "positions": row["inputs_positions"].astype(np.int32),
    }


def _shard(config: PipelineConfig) -> tuple[int, int]:
    if config.shard_count is not None:
        index, count = config.shard_index, config.shard_count
    else:
        import jax  # Only needed to find this process' place in a multi-host run.

        index, count = jax.process_index(), jax.process_count()
    if not 0 <= index < count:
        raise ValueError(f"shard_index must be in [0, {count}), got {index}.")
    if config.batch_size % count:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the {count} shards/processes."
        )
    return index, count


def make_dataset(
    config: PipelineConfig,
    *,
    source: Sequence[dict[str, Any]] | None = None,
    tokenizer: Tokenizer | None = None,
) -> grain.IterDataset:
    """Builds the grain pipeline described in the module docstring.

    Args:
      config: Pipeline settings.
      source: Random-access records to read instead of `load_source(config)`
        (e.g. `builder.as_data_source()["train"]` for a custom config, or a
        list of dicts in tests).
      tokenizer: Tokenizer object for text datasets, overriding
        `config.tokenizer`.

    Returns:
      A `grain.IterDataset` of batch dicts (see `BATCH_KEYS`).

    Raises:
      ValueError: For inconsistent settings (see `PipelineConfig`) or a shard
        with fewer examples than needed.
    """
    shard_index, shard_count = _shard(config)
    if jax.process_count() > 1 and config.num_epochs is not None:
        # Packing, dropped over-long examples and skipped empty texts make the
        # number of batches per shard data-dependent, so with a finite epoch
        # count one host would run dry and hang the others in a collective.
        raise ValueError(
            f"num_epochs must be None with {jax.process_count()} processes: batch counts "
            "per shard differ, so stop training by step count instead."
        )
    local_batch = config.batch_size // shard_count
    tokenizer = tokenizer or get_tokenizer(config.tokenizer)
    if source is None:
        source = load_source(config)

    ds = grain.MapDataset.source(source)
    # Equal-sized, disjoint shards, so every host sees the same number of
    # examples per epoch (batch counts may still differ; see the check above).
    per_shard = len(ds) // shard_count
    if per_shard == 0:
        raise ValueError(f"{len(ds)} examples cannot feed {shard_count} shards.")
    ds = ds[: per_shard * shard_count][shard_index::shard_count]
    if config.shuffle:
        # shuffle-then-repeat reshuffles every epoch (grain re-seeds per epoch).
        ds = ds.shuffle(seed=config.seed)
    ds = ds.repeat(config.num_epochs)

    def to_row(example: dict[str, Any]) -> dict[str, np.ndarray] | None:
        seqs = example_to_sequences(
            example, loss_on=config.loss_on, text_key=config.text_key, tokenizer=tokenizer
        )
        if not len(seqs["inputs"]):
            return None  # E.g. an empty text: nothing to predict.
        return _fit_length(seqs, config.seq_len, config.too_long)

    ds = ds.map(to_row).filter(lambda row: row is not None)

    it_ds = ds.to_iter_dataset()
    if config.packing:
        it_ds = grain.experimental.FirstFitPackIterDataset(
            it_ds,
            length_struct={k: config.seq_len for k in _SEQ_KEYS},
            num_packing_bins=local_batch,
            shuffle_bins=False,
        ).map(_from_packed)
    else:
        it_ds = it_ds.map(lambda seqs: _pad_row(seqs, config.seq_len))
    it_ds = it_ds.batch(local_batch, drop_remainder=config.drop_remainder)
    if config.num_workers > 0:
        # Grain's workers read absl flags; outside `absl.app.run` (notebooks,
        # pytest) they are unparsed, so mark them parsed with their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
    return it_ds


def make_iterator(
    config: PipelineConfig,
    *,
    source: Sequence[dict[str, Any]] | None = None,
    tokenizer: Tokenizer | None = None,
) -> grain.DatasetIterator:
    """Returns a checkpointable iterator over batches (see `make_dataset`).

    Save `it.get_state()` with the model checkpoint (it is JSON-serialisable);
    `it.set_state(state)` on a fresh iterator from the same config resumes at
    the same batch.
    """
    return iter(make_dataset(config, source=source, tokenizer=tokenizer))
