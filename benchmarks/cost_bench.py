"""What ProSG costs a trained run: prompt processing and decoding, ProSG / plain.

Loads a trained workdir (``pj.load_run``; e.g. the README's default run) and
times, on the prompts of ``--batch`` test examples of ``--dataset`` (default
``prompt_retention/d64_f4``: facts and instructions; for ``mqar/...`` the
key-value pairs):

- prompt processing: ``pj.prefill`` with ``method="prosg"`` (prompt pass, SG
  module, compression, replay of the last token under the deltas) divided by
  ``pj.prefill`` with ``method="none"`` (the plain prompt pass);
- decoding: ``pj.decode_chunk`` of ``--tokens`` greedy tokens with the
  prompt's deltas in force divided by the same decode without them (no stop
  tokens, so both decode every token).

Both ratios come from times measured in this run (best of ``--repeats``; the
two cases alternate, so a noisy neighbour slows them alike).

Usage::

    python benchmarks/cost_bench.py --workdir /tmp/prosg_demo   # ~1 min on 2 CPU cores
    python benchmarks/cost_bench.py --workdir W --dataset mqar/l128_kv8_voc256  # an MQAR run
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from timing import best_of  # benchmarks/timing.py

import prosg_jax as pj
from prosg_jax import tasks


def sample_prompts(dataset: str, tokenizer, batch: int) -> list[list[int]]:
    """The prompts of the first ``batch`` test examples of ``dataset``, as the run reads them."""
    spec = tasks.parse_dataset(dataset)
    make = spec.task.builder.make_example
    return [
        spec.task.encode(make(spec.config, "test", i), tokenizer)["prompt"].tolist()
        for i in range(batch)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="a trained run (train.py's workdir)")
    ap.add_argument("--dataset", default="prompt_retention/d64_f4", help="whose test prompts")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128, help="greedy tokens decoded per row")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    run = pj.load_run(args.workdir)
    if run.sg_params is None:
        raise SystemExit(f"{args.workdir} has no trained SG module (run the prosg stage)")
    prompts = sample_prompts(args.dataset, run.tokenizer, args.batch)
    common = dict(prosg_cfg=run.prosg_cfg, sg_params=run.sg_params)
    cfg, params = run.model_cfg, run.params

    def prefill(method):
        def run(_):
            jax.block_until_ready(pj.prefill(cfg, params, prompts, method=method, **common))

        return lambda: None, run

    pre = best_of({m: prefill(m) for m in ("none", "prosg")}, args.repeats)

    def decode(method):
        # decode_chunk donates its state: each timed call gets a fresh prefill.
        def setup():
            return jax.block_until_ready(pj.prefill(cfg, params, prompts, method=method, **common))

        return setup, lambda s: jax.block_until_ready(pj.decode_chunk(cfg, params, *s, args.tokens))

    dec = best_of({m: decode(m) for m in ("none", "prosg")}, args.repeats)

    p_len = np.mean([len(p) for p in prompts])
    print(
        f"RWKV-{cfg.version} L={cfg.n_layer} C={cfg.d_model}; ProSG rank {run.prosg_cfg.rank}, "
        f"{len(run.prosg_cfg.targets(cfg))} target matrices; batch {args.batch}, "
        f"prompts of {p_len:.0f} tokens on average, {args.tokens} decoded tokens; "
        f"device {jax.devices()[0].platform}"
    )
    print("| phase | plain (ms) | ProSG (ms) | ProSG / plain |")
    print("|---|---|---|---|")
    for name, t in (("prompt processing (prefill)", pre), (f"decode {args.tokens} tokens", dec)):
        print(
            f"| {name} | {t['none'] * 1e3:.1f} | {t['prosg'] * 1e3:.1f} | "
            f"{t['prosg'] / t['none']:.2f}× |"
        )


if __name__ == "__main__":
    main()
