"""Decode throughput of ``prosg_jax.generate`` vs the ``rwkv`` package and ``jaxrwkv``.

All three run the same random RWKV-4 checkpoint (``pj.init_params``, seeded,
saved in the official layout by ``pj.save_rwkv``; by default L=6, C=512,
V=50277, fp32), greedy, after the same 16-token prompt;
only the decode of ``--tokens`` new tokens is timed (best of ``--repeats``),
prefill excluded. Columns:

- ``prosg_jax``: ``pj.prefill`` then the jitted ``lax.while_loop`` decode
  (``pj.decode_chunk``), batch 1 and ``--batch``;
- ``rwkv``: the reference package (``strategy='cpu fp32'``, batch 1 only — it
  decodes one sequence at a time), in a child process because it picks its
  code path from environment variables at import time;
- ``jaxrwkv``: ``rwkv4.ScanRWKV.load_from_torch``, one jitted ``lax.scan``
  over the decode steps, ``vmap``-ed over the batch (skipped with a message
  when the package is not installed: ``pip install jaxrwkv``);
- ProSG: decode with rank-16 deltas on every target of every layer divided by
  plain decode, both at ``--batch``.

A decode step reads every weight but the embedding once, whatever the batch,
so at batch 1 the weights' bytes over the memory read rate bound the tokens
per second. The script counts those bytes, measures the read rate in the same
run (a jitted sum over an array of that size) and prints each decoder's share
of that bound; for ProSG it adds each row's delta factors, which the batch
does not share.

Then it times ``eval.py`` on a copy of the shipped default run
(``pretrained/mqar_prosg``, the README's main job; skip with
``--skip_eval``) in a child process and prints its wall time split into
compile / data / derive / read / decode (``results.json["eval_timing"]``).

Ratios are computed from times measured in this run. Runs on the default JAX
device (the reference always on the CPU).

Usage::

    python benchmarks/generate_bench.py                  # ~3 min on 2 CPU cores
    python benchmarks/generate_bench.py --tokens 16 --d_model 256 --vocab 4096 --skip_eval
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import best_of  # benchmarks/timing.py

REPO = Path(__file__).resolve().parents[1]

PROMPT_LEN = 16
DEFAULT_RUN = REPO / "pretrained" / "mqar_prosg"


def our_cases(path: str, prompt: np.ndarray, args) -> tuple[dict, dict[str, int]]:
    """Decode cases of prosg_jax and the bytes a step reads: ``(cases, sizes)``."""
    import jax

    import prosg_jax as pj
    from prosg_jax import prosg

    cfg, params = pj.load_rwkv(path)

    def decode_case(batch, **method):
        rows = [list(prompt)] * batch

        def setup():
            return jax.block_until_ready(pj.prefill(cfg, params, rows, **method))

        def run(prefilled):
            jax.block_until_ready(pj.decode_chunk(cfg, params, *prefilled, args.tokens))

        return setup, run

    pc = pj.ProSGConfig(
        method="prosg", rank=args.rank, matrices=pj.models.model_family(cfg).targets
    )
    sg = prosg.init(jax.random.key(1), cfg, pc)
    sg = {n: {**p, "scale": np.float32(0.1)} for n, p in sg.items()}
    cases = {
        "ours_1": decode_case(1),
        "ours_b": decode_case(args.batch),
        "prosg_b": decode_case(args.batch, prosg_cfg=pc, sg_params=sg),
    }
    _, deltas = pj.prefill(cfg, params, [list(prompt)], prosg_cfg=pc, sg_params=sg)
    sizes = {
        "weights": sum(
            x.nbytes for k, x in params.items() if k != "emb" for x in jax.tree.leaves(x)
        ),
        "factors_per_row": sum(d.u.nbytes + d.v.nbytes for d in deltas.values()),
    }
    return cases, sizes


def read_rate(nbytes: int, repeats: int) -> float:
    """Bytes per second of a jitted float32 sum over ``nbytes`` (a full read, no reuse)."""
    import jax
    import jax.numpy as jnp

    x = jax.block_until_ready(jnp.ones((nbytes // 4,), jnp.float32))
    total = jax.jit(jnp.sum)
    best = best_of({"read": (lambda: x, lambda a: jax.block_until_ready(total(a)))}, repeats)
    return nbytes / best["read"]


def jaxrwkv_cases(path: str, prompt: np.ndarray, args) -> dict | None:
    """Decode cases of jaxrwkv, or ``None`` when it is not installed."""
    try:
        from jaxrwkv import rwkv4
    except ImportError:
        return None
    import jax
    import jax.numpy as jnp
    import torch

    model = rwkv4.ScanRWKV
    params, config = model.load_from_torch(
        torch.load(path, map_location="cpu", weights_only=True), None, dtype=jnp.float32
    )

    def one_step(token, state):
        logits, state = model.forward(params, token[None], state, config=config)
        return jnp.argmax(logits[-1]).astype(jnp.int32), state

    @jax.jit
    def prefill(tokens):
        logits, state = model.forward(
            params, tokens, model.default_state(params, config), config=config
        )
        return jnp.argmax(logits[-1]).astype(jnp.int32), state

    @jax.jit
    def decode(token, state):  # batched: token [B], state [B, ...]
        def body(carry, _):
            tok, st = jax.vmap(one_step)(*carry)
            return (tok, st), tok

        return jax.lax.scan(body, (token, state), None, length=args.tokens)[1]

    def decode_case(batch):
        def setup():
            tok, state = prefill(jnp.asarray(prompt, jnp.int32))
            return jax.block_until_ready(
                (jnp.repeat(tok[None], batch), jnp.repeat(state[None], batch, axis=0))
            )

        return setup, lambda start: jax.block_until_ready(decode(*start))

    return {"jaxrwkv_1": decode_case(1), "jaxrwkv_b": decode_case(args.batch)}


def time_reference(path: str, prompt: np.ndarray, args) -> float:
    os.environ.update(RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    from rwkv.model import RWKV

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = RWKV(model=path, strategy="cpu fp32", verbose=False)

    def setup():
        logits, state = model.forward(prompt.tolist(), None)
        return int(logits.argmax()), state

    def run(start):
        tok, state = start
        for _ in range(args.tokens):
            logits, state = model.forward([tok], state)
            tok = int(logits.argmax())

    return best_of({"rwkv": (setup, run)}, args.repeats)["rwkv"]


def time_eval(run_dir: Path) -> dict:
    """``eval_timing`` of ``eval.py`` on a copy of ``run_dir``, run in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "run"
        shutil.copytree(run_dir, work)
        cmd = [sys.executable, str(REPO / "eval.py"), f"--workdir={work}"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        timing = json.loads((work / "results.json").read_text())["eval_timing"]
    return {"wall_s": round(wall, 1), **timing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d_model", type=int, default=512)
    ap.add_argument("--n_layer", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens decoded per row")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--skip_reference", action="store_true", help="no rwkv package column")
    ap.add_argument("--skip_jaxrwkv", action="store_true", help="no jaxrwkv column")
    ap.add_argument("--skip_eval", action="store_true", help="no eval.py timing")
    ap.add_argument("--reference_child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    prompt = np.random.default_rng(0).integers(0, args.vocab, PROMPT_LEN)

    if args.reference_child:  # child process: time the reference only
        print(time_reference(args.reference_child, prompt, args))
        return

    import jax

    import prosg_jax as pj

    with tempfile.TemporaryDirectory() as tmp:
        cfg = pj.RWKVConfig.rwkv4(vocab_size=args.vocab, d_model=args.d_model, n_layer=args.n_layer)
        params = pj.init_params(jax.random.key(0), cfg)
        path = str(pj.save_rwkv(Path(tmp) / "bench4.pth", cfg, params))
        del params
        # One set of rounds for both libraries: a noisy neighbour slows them alike.
        cases, sizes = our_cases(path, prompt, args)
        theirs = None if args.skip_jaxrwkv else jaxrwkv_cases(path, prompt, args)
        times = best_of({**cases, **(theirs or {})}, args.repeats)
        ref = None
        if not args.skip_reference:
            child = [sys.executable, __file__, "--reference_child", path]
            child += [
                f"--{k}={getattr(args, k)}" for k in ("vocab", "tokens", "repeats", "threads")
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
            out = subprocess.run(child, capture_output=True, text=True, env=env, check=True)
            ref = float(out.stdout.strip().splitlines()[-1])
    rate_read = read_rate(sizes["weights"], args.repeats)
    evaluation = None if args.skip_eval else time_eval(DEFAULT_RUN)

    n, b = args.tokens, args.batch
    device = jax.devices()[0].device_kind
    print(
        f"RWKV-4 L={args.n_layer} C={args.d_model} V={args.vocab} fp32, greedy decode of {n} "
        f"tokens after a {PROMPT_LEN}-token prompt; JAX on {device}"
    )

    def rate(t, batch):
        return f"{batch * n / t:10.1f} tok/s ({t * 1e3:8.1f} ms)"

    print(f"  prosg_jax generate, batch 1   : {rate(times['ours_1'], 1)}")
    print(f"  prosg_jax generate, batch {b:<4}: {rate(times['ours_b'], b)}")
    if ref is not None:
        print(f"  rwkv (reference), batch 1     : {rate(ref, 1)}")
        print(f"  ratio prosg_jax/rwkv, batch 1 : {ref / times['ours_1']:.2f}x")
    else:
        print("  rwkv (reference)              : skipped (--skip_reference)")
    if theirs is not None:
        print(f"  jaxrwkv ScanRWKV, batch 1     : {rate(times['jaxrwkv_1'], 1)}")
        print(f"  jaxrwkv ScanRWKV, batch {b:<4}  : {rate(times['jaxrwkv_b'], b)}")
        r1 = times["jaxrwkv_1"] / times["ours_1"]
        rb = times["jaxrwkv_b"] / times["ours_b"]
        print(f"  ratio prosg_jax/jaxrwkv       : batch 1 {r1:.2f}x, batch {b} {rb:.2f}x")
    else:
        why = "--skip_jaxrwkv" if args.skip_jaxrwkv else "not installed: pip install jaxrwkv"
        print(f"  jaxrwkv                       : skipped ({why})")
    prosg_ratio = times["prosg_b"] / times["ours_b"]
    print(
        f"  ProSG decode (rank {args.rank}, every target of every layer) / plain decode, "
        f"batch {b}: {prosg_ratio:.2f}x"
    )

    weights = sizes["weights"]
    print(
        f"Weights a step reads (all but the embedding): {weights / 1e6:.1f} MB; a jitted sum "
        f"over as many bytes reads {rate_read / 1e9:.1f} GB/s here, which caps batch-1 decode "
        f"at {rate_read / weights:.0f} tok/s when the weights far exceed the caches"
    )
    shares = [("prosg_jax", times["ours_1"])]
    if theirs is not None:
        shares.append(("jaxrwkv", times["jaxrwkv_1"]))
    for name, t in shares:
        print(
            f"  {name:<10}: batch 1 reads {weights * n / t / 1e9:5.1f} GB/s of weights, "
            f"{weights * n / t / rate_read:4.0%} of that rate"
        )
    factors = sizes["factors_per_row"] * b
    print(
        f"  ProSG at batch {b}: the rows' delta factors add {factors / 1e6:.1f} MB to the "
        f"bytes a step reads (+{factors / weights:.0%})"
    )

    if evaluation is not None:
        split = ", ".join(
            f"{k[:-2]} {evaluation[k]:.1f} s"
            for k in ("compile_s", "data_s", "derive_s", "read_s", "decode_s")
            if k in evaluation
        )
        print(
            f"eval.py on the default run ({DEFAULT_RUN.relative_to(REPO)}): "
            f"{evaluation['wall_s']:.1f} s wall, {evaluation['programs']} compiled programs; "
            f"{split}"
        )


if __name__ == "__main__":
    main()
