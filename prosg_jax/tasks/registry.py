"""The task protocol, the registry and the dataset-name grammar.

A task is a generated dataset the library trains and evaluates on. Its
module (``tasks/mqar.py``, ``tasks/prompt_retention.py``) owns how its
dataset names read, how a record becomes prompt and continuation ids, and
what its answers are; ``train/`` and ``eval/`` ask the task rather than
test its name. A new task is one module that builds a :class:`Task` and
passes it to :func:`register` (plus its TFDS builder in ``data/``).

Names. A dataset is ``"<task>/<config>"``. A predefined config name
(``prompt_retention/d256_f8``, ``mqar/l256_kv16``) is used as is; any other
name is parsed by the task's grammar (a base such as ``l128_kv8`` and
optional ``_<key><int>`` parts) into a custom builder config, generated on
the fly and deterministically into the data dir.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from prosg_jax.data.tokenizers import Tokenizer
from prosg_jax.errors import UserError

_EXTRA = re.compile(r"_([a-z]+)(\d+)")
# The name parts every generated dataset takes: its split sizes and seed.
SPLIT_EXTRAS = {"n": "num_train", "val": "num_validation", "t": "num_test", "s": "seed"}


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """What one task provides.

    Attributes:
      name: the dataset name's first part (``"mqar"``).
      builder: its TFDS builder class (``data/``); a parsed name becomes a
        config of the class of its predefined ones,
        ``config_class(name=..., **fields)``.
      base: the regex of a config name's required start; each named group
        matches an integer and fills the config field of its name.
      extras: ``_<key><int>`` suffix key → config field.
      grammar: the config-name grammar, for messages.
      encode: ``(record, tokenizer) -> dict`` of numpy arrays: ``prompt``,
        ``cont`` (everything after the prompt), ``answer_mask`` (1 on answer
        tokens of ``cont``), ``answer_start`` / ``answer_end`` (each answer's
        span in ``cont``) and ``answer_is_fact`` (per answer).
      token_ids: the records hold token ids fed to the model as they are
        (their vocabulary must fit the model's), rather than text.
      spare_answer_tokens: generated tokens allowed beyond the longest answer
        when answers are generated (text may split differently).
      base_needs_byte_tokens: the base stage reads the records' stored byte
        tokens, so it needs ``tokenizer="byte"``.
      non_fact_answers: some answers are not facts of the prompt (a closing
        word), so the evaluation also reports facts-only accuracy.
    """

    name: str
    builder: type[tfds.core.GeneratorBasedBuilder]
    base: re.Pattern
    extras: Mapping[str, str]
    grammar: str
    encode: Callable[[dict[str, Any], Tokenizer], dict]
    token_ids: bool = False
    spare_answer_tokens: int = 0
    base_needs_byte_tokens: bool = False
    non_fact_answers: bool = False

    @property
    def config_class(self) -> type[tfds.core.BuilderConfig]:
        """The builder's config class."""
        return type(self.predefined[0])

    @property
    def predefined(self) -> tuple[tfds.core.BuilderConfig, ...]:
        """The builder's named configs."""
        return tuple(self.builder.BUILDER_CONFIGS)


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Makes ``task`` the one that ``"<task.name>/..."`` dataset names select."""
    known = _TASKS.get(task.name)
    if known is not None and known is not task:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def get(name: str) -> Task:
    """The task named ``name``.

    Raises:
      UserError: no task has that name.
    """
    if name not in _TASKS:
        raise UserError(f"unknown task {name!r}; known: {sorted(_TASKS)}")
    return _TASKS[name]


def names() -> tuple[str, ...]:
    """Every registered task's name."""
    return tuple(_TASKS)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A generated dataset: its name, its task and the builder config to generate it."""

    name: str  # "prompt_retention/d64_f4_n4000"
    task: Task
    config: tfds.core.BuilderConfig

    @property
    def vocab_size(self) -> int | None:
        """Token ids the records use directly, or None for text (tokenized)."""
        return self.config.vocab_size if self.task.token_ids else None


@functools.cache
def parse_dataset(name: str) -> DatasetSpec:
    """Parses ``"<task>/<config>"`` (see the module docstring).

    Raises:
      UserError: an unknown task, or a config name that is not predefined and
        does not follow the task's grammar.
    """
    task_name, _, config_name = name.strip().partition("/")
    if task_name not in _TASKS:
        known = " or ".join(f"{t}/<config>" for t in _TASKS)
        raise UserError(f"unknown dataset {name!r}: use {known}")
    task = _TASKS[task_name]
    full = f"{task_name}/{config_name}"
    for predefined in task.predefined:
        if predefined.name == config_name:
            return DatasetSpec(name=full, task=task, config=predefined)
    m = task.base.match(config_name)
    rest = config_name[m.end() :] if m else ""
    if not m or _EXTRA.sub("", rest):
        raise UserError(f"cannot parse dataset {name!r}: expected {task_name}/{task.grammar}")
    fields = {field: int(value) for field, value in m.groupdict().items()}
    for key, value in _EXTRA.findall(rest):
        if key not in task.extras:
            raise UserError(
                f"cannot parse dataset {name!r}: unknown part _{key}; expected {task.grammar}"
            )
        fields[task.extras[key]] = int(value)
    try:
        config = task.config_class(name=config_name, **fields)
    except ValueError as e:
        raise UserError(f"dataset {name!r}: {e}") from e
    return DatasetSpec(name=full, task=task, config=config)


def split_tokenized(record, n: int, starts, ends, *, is_fact) -> dict:
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
