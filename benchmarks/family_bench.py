"""Mamba-2 beside RWKV-7 at equal width and depth: prefill and decode throughput.

Both models are seeded initialisations (``pj.init_params``) of the same
``--d_model``, ``--n_layer`` and ``--vocab``: RWKV-7 with heads of 64 and a 4x
FFN; Mamba-2 with an inner width of 2x, heads of 64 and state size
``--d_state`` (the ``transformers`` defaults' proportions). Timed on the
default JAX device, fp32, cases alternating (``timing.best_of``):

- prefill: the jitted ``pj.forward`` over ``--batch`` x ``--prompt`` tokens,
  with the recurrence the ``"auto"`` choice picks (chunked for both here);
- decode: ``pj.prefill`` of a 16-token prompt, then ``pj.decode_chunk`` of
  ``--tokens`` greedy tokens at ``--batch`` (prefill excluded).

Prints tokens/s of each and the ratio Mamba-2 / RWKV-7, with the parameter
counts (the two blocks differ in size at equal width).

Usage::

    python benchmarks/family_bench.py                      # ~2 min on 2 CPU cores
    python benchmarks/family_bench.py --d_model 512 --n_layer 6 --batch 4
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from timing import best_of

import prosg_jax as pj
from prosg_jax.models import mamba2


def models(*, vocab: int, d_model: int, n_layer: int, d_state: int) -> dict:
    shape = dict(vocab_size=vocab, d_model=d_model, n_layer=n_layer)
    cfgs = {
        "RWKV-7": pj.RWKVConfig.rwkv7(**shape, head_size=64),
        "Mamba-2": mamba2.preset(**shape, head_size=64, d_state=d_state),
    }
    return {name: (cfg, pj.init_params(jax.random.key(0), cfg)) for name, cfg in cfgs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--d_state", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.prompt)), jnp.int32)
    prompts = [list(rng.integers(0, args.vocab, 16)) for _ in range(args.batch)]
    built = models(
        vocab=args.vocab, d_model=args.d_model, n_layer=args.n_layer, d_state=args.d_state
    )
    print(
        f"{jax.default_backend()}: d_model {args.d_model}, {args.n_layer} layers, vocab "
        f"{args.vocab}, batch {args.batch}; prefill {args.prompt} tokens, decode {args.tokens}"
    )
    cases = {}
    for name, (cfg, params) in built.items():
        forward = jax.jit(lambda p, t, cfg=cfg: pj.forward(cfg, p, t)[0])
        cases[f"{name} prefill"] = (
            lambda: None,
            lambda _, f=forward, p=params: f(p, tokens).block_until_ready(),
        )

        def start(cfg=cfg, params=params):
            state, _ = pj.prefill(cfg, params, prompts)
            return jax.block_until_ready(state)

        def decode(state, cfg=cfg, params=params):
            out, _ = pj.decode_chunk(cfg, params, state, None, n=args.tokens)
            jax.block_until_ready(out)

        cases[f"{name} decode"] = (start, decode)
    best = best_of(cases, args.repeats)
    rates = {}
    for name, (_, params) in built.items():
        count = sum(x.size for x in jax.tree.leaves(params))
        pre = args.batch * args.prompt / best[f"{name} prefill"]
        dec = args.batch * args.tokens / best[f"{name} decode"]
        rates[name] = (pre, dec)
        print(
            f"{name:8s} {count / 1e6:6.2f} M params  prefill {pre:9.0f} tok/s  "
            f"decode {dec:8.0f} tok/s"
        )
    (p7, d7), (pm, dm) = rates["RWKV-7"], rates["Mamba-2"]
    print(f"Mamba-2 / RWKV-7: prefill {pm / p7:.2f}x, decode {dm / d7:.2f}x")


if __name__ == "__main__":
    main()
