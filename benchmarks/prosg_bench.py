"""Cost of ``derive_deltas`` relative to one plain prompt forward, same batch, CPU.

For each rank r in {4, 16, 64} and each pooling variant, times the jitted
``prosg.derive_deltas`` (prompt pass + SG module + compression) and divides by
the time of the jitted plain ``forward`` over the same prompts, both measured
in this run. Prints one ratio per (pooling, r).

Usage::

    python benchmarks/prosg_bench.py --d_model 256 --n_layer 4 --batch 4 --prompt 256
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import prosg_jax as pj
from prosg_jax import prosg
from prosg_jax.config import ProSGConfig


def _best_of(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", type=int, choices=(4, 7), default=7)
    ap.add_argument("--d_model", type=int, default=256)
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    make = pj.RWKVConfig.rwkv7 if args.version == 7 else pj.RWKVConfig.rwkv4
    cfg = make(vocab_size=args.vocab, d_model=args.d_model, n_layer=args.n_layer)
    params = pj.init_params(jax.random.key(0), cfg)
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(1, args.vocab, (args.batch, args.prompt)), jnp.int32)
    lengths = jnp.full((args.batch,), args.prompt, jnp.int32)

    plain = jax.jit(lambda p, t: pj.forward(cfg, p, t))
    base = _best_of(lambda: plain(params, prompts), args.repeats)
    print(
        f"RWKV-{args.version} C={args.d_model} L={args.n_layer} batch={args.batch} "
        f"prompt={args.prompt}; targets att.value/att.output/ffn.value in every layer"
    )
    print(f"plain prompt forward: {base * 1e3:.1f} ms")
    for pooling in ("query", "sketch", "power"):
        for rank in (4, 16, 64):
            pc = ProSGConfig(rank=rank, pooling=pooling)
            sg = prosg.init(jax.random.key(1), cfg, pc)
            derive = jax.jit(
                lambda p, s, t, n, pc=pc: prosg.derive_deltas(
                    cfg, p, s, pc, prompts=t, prompt_lengths=n
                )
            )
            t = _best_of(
                lambda derive=derive, sg=sg: derive(params, sg, prompts, lengths), args.repeats
            )
            print(
                f"  {pooling:6s} r={rank:3d}: derive_deltas {t * 1e3:8.1f} ms  "
                f"ratio to forward {t / base:5.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
