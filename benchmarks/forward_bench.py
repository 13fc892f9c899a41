"""Prefill throughput: prosg_jax ``forward`` vs the reference ``rwkv`` package.

Both run the same random checkpoint (``pj.init_params``, seeded, saved in the
official layout by ``pj.save_rwkv``) on the CPU, on one
1,024-token prompt (the reference handles one sequence at a time), in fp32.
The reference runs in a child process because it chooses its RWKV-7 code path
at import time. Prints tokens/s for each and the ratio ours / reference.

Usage::

    python benchmarks/forward_bench.py --version 7 --d_model 512 --n_layer 6
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _best_of(fn, repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_checkpoint(path: Path, version: int, *, vocab: int, d_model: int, n_layer: int) -> str:
    """Saves a seeded random RWKV-``version`` model at ``path`` (a ``.pth``); returns the path.

    FFN 4x; RWKV-7 with heads of 64 and every LoRA width 32.
    """
    import jax

    import prosg_jax as pj

    shape = dict(vocab_size=vocab, d_model=d_model, n_layer=n_layer)
    if version == 7:
        lora = dict.fromkeys(("d_decay_lora", "d_aaa_lora", "d_mv_lora", "d_gate_lora"), 32)
        cfg = pj.RWKVConfig.rwkv7(**shape, head_size=64, **lora)
    else:
        cfg = pj.RWKVConfig.rwkv4(**shape)
    return str(pj.save_rwkv(path, cfg, pj.init_params(jax.random.key(0), cfg)))


def time_ours(path: str, tokens: np.ndarray, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    import prosg_jax as pj

    cfg, params = pj.load_rwkv(path)
    toks = jnp.asarray(tokens[None], jnp.int32)
    run = lambda: jax.block_until_ready(pj.forward(cfg, params, toks))  # noqa: E731
    run()  # compile
    return _best_of(run, repeats)


def time_reference(version: int, path: str, tokens: np.ndarray, repeats: int) -> float:
    os.environ.update(RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    if version == 7:
        os.environ["RWKV_V7_ON"] = "1"
    from rwkv.model import RWKV

    model_path = path[: -len(".pth")] if version == 7 else path
    kwargs = {} if version == 7 else {"verbose": False}
    model = RWKV(model=model_path, strategy="cpu fp32", **kwargs)
    row = tokens.tolist()
    run = lambda: model.forward(row, None, full_output=True)  # noqa: E731
    run()  # torch.jit warm-up
    return _best_of(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", type=int, choices=(4, 7), default=7)
    for name, default in dict(d_model=512, n_layer=6, vocab=65536, tokens=1024, repeats=3).items():
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--reference_child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tokens = np.random.default_rng(0).integers(0, args.vocab, args.tokens)

    if args.reference_child:  # child process: time the reference only
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(time_reference(args.version, args.reference_child, tokens, args.repeats))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(
            Path(tmp) / f"bench{args.version}.pth",
            args.version,
            vocab=args.vocab,
            d_model=args.d_model,
            n_layer=args.n_layer,
        )
        ours = time_ours(path, tokens, args.repeats)
        child = [sys.executable, __file__, "--reference_child", path]
        child += [
            f"--{k}={getattr(args, k)}"
            for k in ("version", "vocab", "tokens", "repeats", "threads")
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
        out = subprocess.run(child, capture_output=True, text=True, env=env, check=True)
        ref = float(out.stdout.strip().splitlines()[-1])

    n = args.tokens
    print(
        f"RWKV-{args.version} C={args.d_model} L={args.n_layer} V={args.vocab}, "
        f"{n}-token prefill, batch 1, fp32, CPU"
    )
    print(f"  prosg_jax forward : {n / ours:10.1f} tok/s  ({ours * 1e3:.1f} ms)")
    print(f"  rwkv (reference)  : {n / ref:10.1f} tok/s  ({ref * 1e3:.1f} ms)")
    print(f"  ratio ours/reference: {ref / ours:.2f}x")


if __name__ == "__main__":
    main()
