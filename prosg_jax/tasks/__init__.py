"""Tasks: one module per task, each owning its dataset-name grammar, how a
record becomes prompt and continuation ids, and what its answers are.

``train/`` and the evaluation read tasks through :func:`parse_dataset` and
:func:`get`; a new task is one module here that registers a
:class:`~prosg_jax.tasks.registry.Task` (plus its TFDS builder in ``data/``).
"""

from prosg_jax.tasks import mqar as _mqar  # noqa: F401  registers
from prosg_jax.tasks import prompt_retention as _prompt_retention  # noqa: F401  registers
from prosg_jax.tasks.registry import DatasetSpec, Task, get, names, parse_dataset, register

__all__ = ["DatasetSpec", "Task", "get", "names", "parse_dataset", "register"]
