"""Generates the synthetic datasets locally (no downloads, no TensorFlow).

`tfds build` cannot be used for this: its CLI imports TensorFlow at start-up
(tfds 4.9.x). This module is the TensorFlow-free equivalent::

    python -m prosg_jax.data.build prompt_retention/d256_f8 mqar/l256_kv16 \\
        --data_dir ~/tensorflow_datasets

or from Python::

    from prosg_jax.data.build import build_dataset
    build_dataset("prompt_retention/d256_f8", data_dir="/tmp/tfds")

Output is array_record, read back with `tfds.data_source(name, data_dir=...)`
(after importing `prosg_jax.data.prompt_retention` / `mqar`, which registers
the builders) or with `prosg_jax.data.pipeline`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds

from prosg_jax.data import mqar, prompt_retention

# The generating module of each dataset: its builder class and get_config().
_MODULES = {"prompt_retention": prompt_retention, "mqar": mqar}
BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "prompt_retention": prompt_retention.PromptRetention,
    "mqar": mqar.Mqar,
}


def make_builder(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    config: tfds.core.BuilderConfig | None = None,
) -> tfds.core.GeneratorBasedBuilder:
    """Returns the builder for "dataset[/config]" (or `config` if given).

    Args:
      name: "prompt_retention", "mqar", optionally with "/<config name>".
      data_dir: TFDS data directory; None uses TFDS' default.
      config: A custom config object (e.g. a small `MqarConfig`); then `name`
        must be the bare dataset name.

    Raises:
      ValueError: For an unknown dataset or config name.
    """
    dataset, _, config_name = name.partition("/")
    if dataset not in BUILDERS:
        raise ValueError(f"Unknown generated dataset {dataset!r}; known: {sorted(BUILDERS)}.")
    if config is not None and config_name:
        raise ValueError(f"Pass either a config name in {name!r} or a config object, not both.")
    if config is None and config_name:
        config = _MODULES[dataset].get_config(config_name)  # Raises a clear error if unknown.
    kwargs = {"config": config} if config is not None else {}
    return BUILDERS[dataset](data_dir=None if data_dir is None else os.fspath(data_dir), **kwargs)


def build_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    config: tfds.core.BuilderConfig | None = None,
) -> tfds.core.GeneratorBasedBuilder:
    """Generates a dataset (all splits) unless it is already on disk; the
    arguments are :func:`make_builder`'s. Returns the prepared builder
    (``builder.as_data_source()`` reads it)."""
    builder = make_builder(name, data_dir=data_dir, config=config)
    try:
        builder.download_and_prepare(file_format="array_record")
    except FileExistsError:
        # Another process built the same dataset into the same data_dir first, and TFDS
        # will not rename its own copy over that one; the data are identical (seeded).
        builder = make_builder(name, data_dir=data_dir, config=config)
        if not builder.is_prepared():
            raise
    return builder


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="+", help='e.g. "prompt_retention/d256_f8" or "mqar/l256_kv16"'
    )
    parser.add_argument("--data_dir", default=None, help="TFDS data directory.")
    args = parser.parse_args(argv)
    try:
        builders = [make_builder(name, data_dir=args.data_dir) for name in args.names]
    except ValueError as e:  # Unknown dataset/config: one line, not a traceback.
        parser.error(str(e))
    for builder in builders:
        builder.download_and_prepare(file_format="array_record")
        print(f"{builder.info.full_name}: {builder.data_dir}")


if __name__ == "__main__":
    main()
