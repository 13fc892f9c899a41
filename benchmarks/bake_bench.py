"""Times ``pj.bake`` and writing its two files against one prefill of the same prompt.

Usage (from the repository root)::

    python benchmarks/bake_bench.py [--run pretrained/mqar_prosg] [--prompt_len 96]

Prints the first bake (which compiles the prefill), the best of ``--repeats``
compiled bakes, the same for ``pj.prefill`` alone (the baseline: a bake is a
prefill plus ``W + ΔW``), their ratio, and the time to write the baked
checkpoint and state.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from timing import best_of  # benchmarks/timing.py

import prosg_jax as pj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="pretrained/mqar_prosg")
    parser.add_argument("--prompt_len", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    run = pj.load_run(args.run)
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, run.tokenizer.vocab_size, args.prompt_len).tolist()
    t0 = time.perf_counter()
    jax.block_until_ready(pj.bake(run, prompt).logits)
    first = time.perf_counter() - t0

    def bake(_):
        jax.block_until_ready(pj.bake(run, prompt).params)

    def prefill(_):
        sampling, _ = pj.prefill(
            run.model_cfg, run.params, [prompt], prosg_cfg=run.prosg_cfg, sg_params=run.sg_params
        )
        jax.block_until_ready(sampling.last_logits)

    best = best_of({"bake": (lambda: None, bake), "prefill": (lambda: None, prefill)}, args.repeats)
    baked = pj.bake(run, prompt)
    out = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    pj.save_rwkv(out / "baked.safetensors", run.model_cfg, baked.params)
    pj.save_state(out / "baked_state.safetensors", run.model_cfg, baked.state)
    write = time.perf_counter() - t0
    print(f"model: {run.model_cfg}")
    print(f"first bake (compiles the prefill): {first:.2f} s")
    print(f"bake, compiled:    {best['bake'] * 1e3:7.1f} ms")
    print(f"prefill, compiled: {best['prefill'] * 1e3:7.1f} ms (baseline)")
    print(f"bake / prefill:    {best['bake'] / best['prefill']:.2f}x")
    print(f"write checkpoint + state: {write * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
