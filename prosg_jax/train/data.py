"""Training batch iterators over the tasks' datasets.

The ``base`` stage reads packed rows through :mod:`prosg_jax.data.pipeline`;
the ``prosg``/``joint`` stages read one example per row
(:func:`prosg_jax.tasks.datasets.make_prosg_batch`). Every process builds the
same global batch and keeps its own rows.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import jax
import numpy as np

from prosg_jax.data.pipeline import PipelineConfig, make_dataset
from prosg_jax.data.tokenizers import ByteTokenizer, Tokenizer
from prosg_jax.errors import UserError
from prosg_jax.tasks import parse_dataset
from prosg_jax.tasks.datasets import Phase, load_split, make_prosg_batch, prosg_widths


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """What the batch iterators of one stage need besides the dataset names."""

    directory: str
    tokenizer: Tokenizer
    batch_size: int  # global
    seq_len: int
    prompt_len: int
    cont_len: int
    loss_on: str
    answer_weight: float
    seed: int
    num_workers: int = 0


def _base_rows(batch: dict, loss_on: str, answer_weight: float) -> dict[str, np.ndarray]:
    answers = batch["loss_mask"].astype(np.float32)
    real = (batch["segment_ids"] > 0).astype(np.float32)
    weights = answers if loss_on == "answers" else real * (1 + (answer_weight - 1) * answers)
    return {
        "inputs": batch["inputs"],
        "targets": batch["targets"],
        "positions": batch["positions"],
        "loss_mask": weights,
        "answer_mask": answers,
        "num_tokens": real.sum(axis=1).astype(np.int32),
    }


def _process_slice(batch_size: int) -> slice:
    """This process' rows of a global batch: contiguous, in process order.

    Every process builds the same global batch and keeps its slice, so a run's
    batches — and its parameters — do not depend on how many processes share it
    (the devices of a mesh are ordered by process, and each process' rows land
    on its own devices).
    """
    index, count = jax.process_index(), jax.process_count()
    if batch_size % count:
        raise UserError(f"batch size {batch_size} is not divisible by {count} processes")
    per = batch_size // count
    return slice(index * per, (index + 1) * per)


def _rows(batch: dict, cut: slice) -> dict:
    return {k: v[cut] for k, v in batch.items()}


def base_dataset(name: str, settings: DataSettings, seed: int) -> grain.IterDataset:
    """Packed LM rows of one dataset (answer tokens marked for the loss weighting)."""
    spec = parse_dataset(name)
    source = load_split(spec, settings.directory, "train")
    if spec.task.base_needs_byte_tokens and not isinstance(settings.tokenizer, ByteTokenizer):
        raise UserError(
            f"the base stage reads {spec.task.name}'s stored byte tokens: use tokenizer='byte'"
        )
    ds = make_dataset(
        PipelineConfig(
            dataset=spec.name,
            data_dir=settings.directory,
            seq_len=settings.seq_len,
            batch_size=settings.batch_size,
            loss_on="answers",
            seed=seed,
            too_long="truncate",
            num_workers=settings.num_workers,
            shard_index=0,  # the global batch on every process; _process_slice keeps ours
            shard_count=1,
        ),
        source=source,
        tokenizer=settings.tokenizer,
    )
    rows = functools.partial(
        _base_rows, loss_on=settings.loss_on, answer_weight=settings.answer_weight
    )
    return ds.map(rows).map(functools.partial(_rows, cut=_process_slice(settings.batch_size)))


def prosg_dataset(name: str, settings: DataSettings, seed: int) -> grain.IterDataset:
    """One example per row, as :func:`make_prosg_batch` dicts."""
    spec = parse_dataset(name)
    source = load_split(spec, settings.directory, "train")
    encode = functools.partial(spec.task.encode, tokenizer=settings.tokenizer)
    p, k = prosg_widths(
        source,
        encode=encode,
        prompt_len=settings.prompt_len,
        cont_len=settings.cont_len,
    )
    cut = _process_slice(settings.batch_size)
    ds = grain.MapDataset.source(source)
    if len(ds) < 1:
        raise UserError(f"dataset {name} has no training examples")
    ds = ds.shuffle(seed=seed).repeat(None).map(encode)
    # Widths sized from a sample: a rare longer prompt is skipped, never a crash mid-run.
    ds = ds.filter(lambda ex: len(ex["prompt"]) <= p)
    batches = ds.to_iter_dataset().batch(
        settings.batch_size,
        drop_remainder=True,
        batch_fn=functools.partial(
            make_prosg_batch,
            prompt_len=p,
            cont_len=k,
            loss_on=settings.loss_on,
            answer_weight=settings.answer_weight,
        ),
    )
    return batches.map(functools.partial(_rows, cut=cut))


def phase_iterator(stage: str, phase: Phase, phase_number: int, settings: DataSettings):
    """A checkpointable iterator over one phase's batches (batch-level mixture)."""
    make = base_dataset if stage == "base" else prosg_dataset
    parts = [
        make(name, settings, seed=settings.seed + 1000 * phase_number + i)
        for i, (name, _) in enumerate(phase.mixture)
    ]
    if len(parts) == 1:
        return iter(parts[0])
    return iter(grain.IterDataset.mix(parts, [w for _, w in phase.mixture]))
