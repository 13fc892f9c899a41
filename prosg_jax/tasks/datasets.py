"""The tasks' datasets: where they are generated, how training mixes them,
and how a record becomes a ProSG batch.

Names. A dataset is ``"<task>/<config>"`` (:func:`prosg_jax.tasks.parse_dataset`;
each task's module gives its grammar). Example ``i`` of a split does not
depend on the split sizes, so ``prompt_retention/d1024_f4_n0_val0_t96`` holds
exactly the first 96 test examples of ``prompt_retention/d1024_f4``.

Mixtures and curricula. ``"A:2,B:1"`` draws each batch from dataset A with
probability 2/3 and from B with 1/3 (a missing weight is 1). A curriculum is a
``;``-separated list of phases ``"<first step>=<mixture>"``, e.g.
``"0=A:1;300=A:1,B:1"``; a plain mixture is a one-phase curriculum.

Batches. One example per row, split into prompt and continuation by the task
(:attr:`prosg_jax.tasks.Task.encode`) and padded by :func:`make_prosg_batch`;
training and evaluation both batch records this way.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from prosg_jax import prosg
from prosg_jax.data import build
from prosg_jax.errors import UserError
from prosg_jax.tasks.registry import DatasetSpec, parse_dataset

# Records scanned to size the ProSG batch widths when they are left to the data.
_WIDTH_SAMPLE = 1024
# Batch widths are multiples of this, so nearby lengths share one compiled program.
WIDTH_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class Phase:
    """One curriculum phase: from stage step ``start`` on, batches follow ``mixture``."""

    start: int
    mixture: tuple[tuple[str, float], ...]


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
            return build.build_dataset(spec.task.name, data_dir=directory, config=spec.config)
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


def round_up(n: int, multiple: int = WIDTH_MULTIPLE) -> int:
    """``n`` rounded up to a positive multiple of ``multiple``."""
    return max(multiple, -(-n // multiple) * multiple)


def prosg_widths(source, *, encode: Callable[[dict], dict], prompt_len: int, cont_len: int):
    """``(P, K)``: the configured widths, or sized from records spread over the split (0 = auto).

    ``encode`` turns a record into prompt and continuation ids (the task's).

    Auto widths are the longest sampled prompt/continuation plus 32 tokens,
    rounded up to a multiple of 64; in training a longer prompt is skipped and
    a longer continuation is cut.
    """
    if prompt_len and cont_len:
        return prompt_len, cont_len
    picks = np.unique(np.linspace(0, len(source) - 1, min(len(source), _WIDTH_SAMPLE)).astype(int))
    sample = [encode(source[int(i)]) for i in picks]
    auto_p = round_up(max(len(e["prompt"]) for e in sample) + 32)
    auto_k = round_up(max(len(e["cont"]) for e in sample) + 32)
    return prompt_len or auto_p, cont_len or auto_k
