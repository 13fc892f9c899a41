"""Shared fixtures: tiny RWKV models with random (not zero-initialised) weights."""

from __future__ import annotations

import gc
import os
import sys

import jax
import numpy as np
import pytest

# Tests compare float32 results at 1e-5..1e-4; keep XLA from using bf16 passes.
jax.config.update("jax_default_matmul_precision", "highest")
sys.path.insert(0, os.path.dirname(__file__))

from official_ckpt import random_tensors  # noqa: E402

from prosg_jax.checkpoint import config_from_tensors, params_from_tensors  # noqa: E402


def random_prompts(b: int = 3, p: int = 12, seed: int = 0, vocab: int = 97):
    """``(prompts int32[b, p], lengths int32[b])``: random ids, right-padded with 0 to
    the lengths ``p, p - 5, 3, p, p, ...``."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray([p, p - 5, 3][:b] + [p] * max(0, b - 3), np.int32)
    prompts = rng.integers(1, vocab, (b, p)).astype(np.int32)
    prompts[np.arange(p)[None, :] >= lengths[:, None]] = 0
    return jax.numpy.asarray(prompts), jax.numpy.asarray(lengths)


def tiny_model(version: int, *, seed: int = 0, dtype: str = "float32", **shape):
    """(cfg, params) of a small random model built from an official-layout dict."""
    tensors = random_tensors(version, seed=seed, **shape)
    cfg = config_from_tensors(tensors, dtype)
    return cfg, params_from_tensors(cfg, tensors, dtype=jax.numpy.dtype(dtype))


# Every compiled XLA:CPU executable keeps a few memory mappings alive, and the
# whole suite in one process compiles thousands of them. Linux caps a process
# at vm.max_map_count (65,530 by default) mappings; past it LLVM's JIT fails an
# mmap and the process segfaults inside the compiler. Dropping JAX's caches
# once a test leaves the process near the cap releases them (and costs only
# recompilation where a later test needs the same program).
_MAPS = f"/proc/{os.getpid()}/maps"
_MAP_BUDGET = 30_000


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    yield
    if os.path.exists(_MAPS):
        with open(_MAPS) as f:
            if sum(1 for _ in f) > _MAP_BUDGET:
                jax.clear_caches()
                gc.collect()


@pytest.fixture(params=[4, 7], ids=["rwkv4", "rwkv7"])
def model(request):
    """A tiny random model of each version (vocab 97, C 128, 2 layers)."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A workdir after 2 base and 2 prosg steps of the tiny experiment: (workdir, Params)."""
    from train_fixtures import tiny_config

    from prosg_jax.train import trainer

    workdir = tmp_path_factory.mktemp("trained_run")
    params = trainer.train(tiny_config(), workdir)
    return workdir, params
