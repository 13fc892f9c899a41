"""Generation speed and on-disk size of the default synthetic datasets.

Builds `prompt_retention/d{64,256,1024,4096}_f8` (the default fact count) and
`mqar/l256_kv16` (the default MQAR config) with their default split sizes into
a fresh temporary TFDS data_dir, and prints for each: examples (all splits),
wall time, examples/s for the whole TFDS build (generation + serialisation +
array_record writing, one process), examples/s of the generator alone, and
the size on disk.

Usage::

    python benchmarks/data_bench.py                # all default configs
    python benchmarks/data_bench.py mqar/l256_kv16 # a subset
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import tensorflow_datasets as tfds

from prosg_jax.data import build, mqar, prompt_retention

DEFAULT_NAMES = tuple(
    f"prompt_retention/{prompt_retention.config_name(d, 8)}" for d in prompt_retention.DISTANCES
) + (f"mqar/{mqar.DEFAULT_CONFIG_NAME}",)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _generator_rate(name: str, n: int = 500) -> float:
    """Examples/s of `make_example` alone (no TFDS), over `n` train examples."""
    dataset, _, config_name = name.partition("/")
    module = prompt_retention if dataset == "prompt_retention" else mqar
    config = module.get_config(config_name)
    t0 = time.perf_counter()
    for i in range(n):
        module.make_example(config, "train", i)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(DEFAULT_NAMES))
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    tfds.disable_progress_bar()  # Keep the table readable.

    header = f"{'dataset':<28}{'examples':>10}{'build s':>9}{'build ex/s':>12}"
    header += f"{'gen ex/s':>10}{'on disk':>11}{'bytes/ex':>10}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            t0 = time.perf_counter()
            builder = build.build_dataset(name, data_dir=tmp)
            seconds = time.perf_counter() - t0
            examples = sum(split.num_examples for split in builder.info.splits.values())
            size = _dir_bytes(Path(builder.data_dir))
            print(
                f"{name:<28}{examples:>10,}{seconds:>9.1f}{examples / seconds:>12,.0f}"
                f"{_generator_rate(name):>10,.0f}{size / 2**20:>9.1f}MB{size / examples:>10,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
