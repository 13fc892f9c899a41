"""Training and evaluation data: dataset names, mixtures, curricula and batches.

Names. A dataset is ``"<dataset>/<config>"`` for one of the generated datasets.
A predefined config name (``prompt_retention/d256_f8``, ``mqar/l256_kv16``) is
used as is; any other name is parsed into a custom builder config and
generated on the fly (deterministically) into the data dir:

* ``prompt_retention/d{distance}_f{facts}`` plus optional ``_n{num_train}``,
  ``_val{num_validation}``, ``_t{num_test}``, ``_q{num_queries}``, ``_s{seed}``,
  ``_b{percent}`` (that share of distractor sentences are facts about other
  names, e.g. ``prompt_retention/d1024_f4_b50``);
* ``mqar/l{seq_len}_kv{pairs}`` plus optional ``_voc{vocab_size}``,
  ``_d{distance}`` (filler between the pairs and the queries), ``_k{tokens}``
  (tokens per key, e.g. ``mqar/l128_kv8_voc20_k3``), ``_g{tokens}`` (filler
  between each key and its value), ``_n``, ``_val``, ``_t``, ``_s``.

Example ``i`` of a split does not depend on the split sizes, so
``prompt_retention/d1024_f4_n0_val0_t96`` holds exactly the first 96 test
examples of ``prompt_retention/d1024_f4``.

Mixtures and curricula. ``"A:2,B:1"`` draws each batch from dataset A with
probability 2/3 and from B with 1/3 (a missing weight is 1). A curriculum is a
``;``-separated list of phases ``"<first step>=<mixture>"``, e.g.
``"0=A:1;300=A:1,B:1"``; a plain mixture is a one-phase curriculum.

Batches. The ``base`` stage reads packed rows through
:mod:`prosg_jax.data.pipeline`. The ``prosg``/``joint`` stages read one
example per row, split into prompt and continuation by
:func:`encode_record` and padded by :func:`make_prosg_batch`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from prosg_jax import prosg
from prosg_jax.data import build, mqar, prompt_retention
from prosg_jax.data.pipeline import PipelineConfig, make_dataset
from prosg_jax.data.tokenizers import Tokenizer
from prosg_jax.errors import UserError

_PR_BASE = re.compile(r"^d(\d+)_f(\d+)")
_MQAR_BASE = re.compile(r"^l(\d+)_kv(\d+)")
_EXTRA = re.compile(r"_([a-z]+)(\d+)")
_PR_EXTRA = {
    "n": "num_train",
    "val": "num_validation",
    "t": "num_test",
    "q": "num_queries",
    "s": "seed",
    "b": "distractor_facts",
}
_MQAR_EXTRA = {
    "voc": "vocab_size",
    "d": "distance",
    "k": "key_tokens",
    "g": "value_gap",
    "n": "num_train",
    "val": "num_validation",
    "t": "num_test",
    "s": "seed",
}
# Records scanned to size the ProSG batch widths when they are left to the data.
_WIDTH_SAMPLE = 1024
_WIDTH_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A generated dataset: its TFDS name and the builder config to generate it."""

    name: str  # "prompt_retention/d64_f4_n4000"
    dataset: str  # "prompt_retention" or "mqar"
    config: tfds.core.BuilderConfig

    @property
    def vocab_size(self) -> int | None:
        """Token ids the records use directly (MQAR), or None for text (tokenized)."""
        return self.config.vocab_size if self.dataset == "mqar" else None


@dataclasses.dataclass(frozen=True)
class Phase:
    """One curriculum phase: from stage step ``start`` on, batches follow ``mixture``."""

    start: int
    mixture: tuple[tuple[str, float], ...]


@functools.cache
def parse_dataset(name: str) -> DatasetSpec:
    """Parses ``"<dataset>/<config>"`` (see the module docstring).

    Raises:
      UserError: an unknown dataset, or a config name that is not predefined
        and does not follow the grammar.
    """
    dataset, _, config_name = name.strip().partition("/")
    if dataset not in build.BUILDERS:
        raise UserError(f"unknown dataset {name!r}: use prompt_retention/<config> or mqar/<config>")
    module = prompt_retention if dataset == "prompt_retention" else mqar
    for predefined in module.BUILDER_CONFIGS:
        if predefined.name == config_name:
            return DatasetSpec(name=f"{dataset}/{config_name}", dataset=dataset, config=predefined)
    base_re, extras = (
        (_PR_BASE, _PR_EXTRA) if dataset == "prompt_retention" else (_MQAR_BASE, _MQAR_EXTRA)
    )
    grammar = (
        "d<distance>_f<facts>[_n<train>][_val<n>][_t<test>][_q<queries>][_s<seed>][_b<percent>]"
        if dataset == "prompt_retention"
        else "l<seq_len>_kv<pairs>[_voc<vocab>][_d<distance>][_k<key tokens>][_g<gap>][_n<train>]"
        "[_val<n>][_t<test>][_s<seed>]"
    )
    m = base_re.match(config_name)
    rest = config_name[m.end() :] if m else ""
    if not m or _EXTRA.sub("", rest):
        raise UserError(f"cannot parse dataset {name!r}: expected {dataset}/{grammar}")
    kwargs = {}
    for key, value in _EXTRA.findall(rest):
        if key not in extras:
            raise UserError(
                f"cannot parse dataset {name!r}: unknown part _{key}; expected {grammar}"
            )
        kwargs[extras[key]] = int(value)
    a, b = int(m.group(1)), int(m.group(2))
    try:
        if dataset == "prompt_retention":
            config = prompt_retention.PromptRetentionConfig(
                name=config_name, distance=a, num_facts=b, **kwargs
            )
        else:
            config = mqar.MqarConfig(name=config_name, seq_len=a, num_kv_pairs=b, **kwargs)
    except ValueError as e:
        raise UserError(f"dataset {name!r}: {e}") from e
    return DatasetSpec(name=f"{dataset}/{config_name}", dataset=dataset, config=config)


def parse_mixture(text: str) -> tuple[tuple[str, float], ...]:
    """``"A:2,B"`` → ``(("A", 2.0), ("B", 1.0))``, each name validated."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, weight = item.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"mixture weight of {name!r} is not a number: {weight!r}") from None
        if not (w > 0 and math.isfinite(w)):
            raise UserError(f"mixture weight of {name!r} must be positive, got {weight!r}")
        parse_dataset(name)
        out.append((name.strip(), w))
    if not out:
        raise UserError(f"empty dataset mixture {text!r}")
    return tuple(out)


def parse_curriculum(text: str) -> tuple[Phase, ...]:
    """``"0=A:1;300=A:1,B:1"`` (or a plain mixture) → phases sorted by start step."""
    phases = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        start, sep, mixture = part.partition("=")
        if not sep:
            start, mixture = "0", part
        try:
            first = int(start)
        except ValueError:
            raise UserError(f"curriculum phase {part!r} must start with '<step>='") from None
        phases.append(Phase(start=first, mixture=parse_mixture(mixture)))
    if not phases:
        raise UserError(f"empty curriculum {text!r}")
    phases.sort(key=lambda p: p.start)
    if phases[0].start != 0 or len({p.start for p in phases}) != len(phases):
        raise UserError(f"curriculum {text!r}: phases need distinct start steps, the first at 0")
    return tuple(phases)


def phase_index(phases: Sequence[Phase], step: int) -> int:
    """Index of the phase that feeds stage step ``step``."""
    return max(i for i, p in enumerate(phases) if p.start <= step)


def data_dir(config, workdir: str | os.PathLike) -> str:
    """``config.data.data_dir``, or ``<workdir>/tfds`` when it is empty."""
    return config.data.data_dir or os.path.join(os.fspath(workdir), "tfds")


def prepare(spec: DatasetSpec, directory: str) -> tfds.core.DatasetBuilder:
    """Generates the dataset into ``directory`` unless it is there already.

    In a multi-process run process 0 generates first; the others then find it
    (shared file system) or generate their own identical copy.
    """

    def _build():
        # tfds warns "Using custom data configuration" for every custom name: expected here.
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)
        try:
            return build.build_dataset(spec.dataset, data_dir=directory, config=spec.config)
        finally:
            absl_logging.set_verbosity(verbosity)

    if jax.process_count() == 1:
        return _build()
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        builder = _build()
    multihost_utils.sync_global_devices(f"prepare {spec.name}")
    if jax.process_index() != 0:
        builder = _build()
    return builder


def load_split(spec: DatasetSpec, directory: str, split: str):
    """A random-access source over ``split`` of a prepared dataset."""
    return prepare(spec, directory).as_data_source(split=split)


def check_vocab(spec: DatasetSpec, vocab_size: int) -> None:
    """MQAR ids are fed to the model as they are: they must fit its vocabulary."""
    if spec.vocab_size is not None and spec.vocab_size > vocab_size:
        raise UserError(
            f"dataset {spec.name} uses {spec.vocab_size} token ids but the model has "
            f"{vocab_size}: add _voc{vocab_size // 2 * 2} to its name (e.g. "
            f"mqar/l128_kv8_voc{min(256, vocab_size // 2 * 2)})"
        )


# --------------------------------------------------------------------------- records


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _split_tokenized(record, n: int, starts, ends, is_fact) -> dict:
    """A stored-token record cut after its ``n`` prompt tokens (spans shifted into ``cont``)."""
    tokens = np.asarray(record["tokens"], np.int32)
    return {
        "prompt": tokens[:n],
        "cont": tokens[n:],
        "answer_mask": np.asarray(record["loss_mask"], np.int32)[n:],
        "answer_start": starts - n,
        "answer_end": ends - n,
        "answer_is_fact": is_fact,
    }


def encode_record(record: dict[str, Any], *, dataset: str, tokenizer: Tokenizer) -> dict:
    """Splits one record into prompt and continuation token ids.

    Returns a dict of numpy arrays: ``prompt`` ``[n_p]``; ``cont`` ``[n_c]``
    (everything after the prompt: distractor and queries, EOS included);
    ``answer_mask`` ``[n_c]`` (1 on answer tokens); ``answer_start`` /
    ``answer_end`` (each answer's span in ``cont``); ``answer_is_fact``
    (per answer: a fact of the prompt rather than the closing word; every
    MQAR answer is a fact).

    ``prompt_retention`` records are stored byte-tokenized; with another
    tokenizer their text pieces are re-encoded (so answer spans stay exact).
    For ``mqar`` the prompt is the key-value context.
    """
    if dataset == "mqar":
        # A query's value sits a fixed offset after its first key token (key_tokens
        # + value_gap); a pair, like a query, is that offset + 1 tokens long.
        queries = np.asarray(record["query_positions"], np.int32)
        offset = int(np.flatnonzero(record["loss_mask"])[0]) - int(queries.min())
        n = (offset + 1) * len(record["values"])
        starts = queries + offset
        return _split_tokenized(record, n, starts, starts + 1, np.ones(len(starts), bool))
    prompt_text = _text(record["prompt"])
    is_fact = np.asarray([_text(k) == "fact" for k in record["answers"]["kind"]], bool)
    if type(tokenizer).__name__ == "ByteTokenizer":
        return _split_tokenized(
            record,
            len(prompt_text.encode("utf-8")),
            np.asarray(record["answers"]["start"], np.int32),
            np.asarray(record["answers"]["end"], np.int32),
            is_fact,
        )
    # Re-encode piece by piece: distractor, then queries split around each answer.
    queries = _text(record["queries"])
    pieces = [tokenizer.encode(_text(record["distractor"]))]
    flags = [False]
    cursor = 0
    for answer in (_text(a) for a in record["answers"]["text"]):
        at = queries.index(answer, cursor)
        pieces += [tokenizer.encode(queries[cursor:at]), tokenizer.encode(answer)]
        flags += [False, True]
        cursor = at + len(answer)
    pieces += [tokenizer.encode(queries[cursor:]), np.asarray([tokenizer.eos_id], np.int32)]
    flags += [False, False]
    lengths = np.asarray([len(p) for p in pieces])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cont = np.concatenate(pieces).astype(np.int32)
    mask = np.zeros(len(cont), np.int32)
    starts, ends = [], []
    for i, flag in enumerate(flags):
        if flag:
            mask[offsets[i] : offsets[i + 1]] = 1
            starts.append(offsets[i])
            ends.append(offsets[i + 1])
    return {
        "prompt": np.asarray(tokenizer.encode(prompt_text), np.int32),
        "cont": cont,
        "answer_mask": mask,
        "answer_start": np.asarray(starts, np.int32),
        "answer_end": np.asarray(ends, np.int32),
        "answer_is_fact": is_fact,
    }


def make_prosg_batch(
    examples: Sequence[dict],
    *,
    prompt_len: int,
    cont_len: int,
    loss_on: str,
    answer_weight: float,
) -> dict[str, np.ndarray]:
    """Pads encoded examples into one ProSG batch (numpy; see :func:`to_batch`).

    The prompt is right-padded to ``prompt_len``. The continuation ``c`` is
    scored as next-token prediction after the prompt, its first token
    included (predicted by the prompt's last token, replayed under the
    deltas): ``targets = c``, right-padded to ``cont_len`` (a longer
    continuation is cut). ``loss_mask`` weights the targets: answer tokens only
    (``loss_on="answers"``) or every real token with answers weighted
    ``answer_weight`` (``"all"``). ``answer_mask`` marks answer targets.

    This is the one place that fixes how a record becomes a
    :class:`prosg_jax.prosg.Batch`.
    """
    b = len(examples)
    out = {
        "prompts": np.zeros((b, prompt_len), np.int32),
        "prompt_lengths": np.zeros((b,), np.int32),
        "targets": np.zeros((b, cont_len), np.int32),
        "loss_mask": np.zeros((b, cont_len), np.float32),
        "answer_mask": np.zeros((b, cont_len), np.float32),
        "cont_lengths": np.zeros((b,), np.int32),
    }
    for i, ex in enumerate(examples):
        prompt = ex["prompt"]
        if len(prompt) > prompt_len:
            raise UserError(
                f"a prompt of {len(prompt)} tokens does not fit data.prompt_len={prompt_len}; "
                "raise it (0 sizes it from the data)"
            )
        out["prompts"][i, : len(prompt)] = prompt
        out["prompt_lengths"][i] = len(prompt)
        cont = ex["cont"][:cont_len]
        answers = np.asarray(ex["answer_mask"][:cont_len], np.float32)
        n = len(cont)
        out["targets"][i, :n] = cont
        out["answer_mask"][i, :n] = answers
        out["loss_mask"][i, :n] = (
            answers if loss_on == "answers" else 1 + (answer_weight - 1) * answers
        )
        out["cont_lengths"][i] = n
    return out


def to_batch(arrays: dict) -> prosg.Batch:
    """The :class:`prosg_jax.prosg.Batch` fields of a :func:`make_prosg_batch` dict."""
    return prosg.Batch(*(arrays[f] for f in prosg.Batch._fields))


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def prosg_widths(source, *, dataset: str, tokenizer: Tokenizer, prompt_len: int, cont_len: int):
    """``(P, K)``: the configured widths, or sized from records spread over the split (0 = auto).

    Auto widths are the longest sampled prompt/continuation plus 32 tokens,
    rounded up to a multiple of 64; in training a longer prompt is skipped and
    a longer continuation is cut.
    """
    if prompt_len and cont_len:
        return prompt_len, cont_len
    picks = np.unique(np.linspace(0, len(source) - 1, min(len(source), _WIDTH_SAMPLE)).astype(int))
    sample = [encode_record(source[int(i)], dataset=dataset, tokenizer=tokenizer) for i in picks]
    auto_p = _round_up(max(len(e["prompt"]) for e in sample) + 32, _WIDTH_MULTIPLE)
    auto_k = _round_up(max(len(e["cont"]) for e in sample) + 32, _WIDTH_MULTIPLE)
    return prompt_len or auto_p, cont_len or auto_k


# --------------------------------------------------------------------------- iterators


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
    if type(settings.tokenizer).__name__ != "ByteTokenizer" and spec.dataset == "prompt_retention":
        raise UserError(
            "the base stage reads prompt_retention's stored byte tokens: use tokenizer='byte'"
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
    encode = functools.partial(encode_record, dataset=spec.dataset, tokenizer=settings.tokenizer)
    p, k = prosg_widths(
        source,
        dataset=spec.dataset,
        tokenizer=settings.tokenizer,
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
