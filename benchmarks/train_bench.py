"""Training and prefill speed of each WKV implementation (``RWKVConfig.wkv_impl``).

Three measurements per implementation, on whatever device JAX sees (CPU by
default):

  op       the WKV recurrence alone, one layer, at ``--op-shape B,T,H,N``
           (RWKV-4: C = H·N channels): forward and forward+backward, ms.
  train    the full model's forward+backward of the next-token cross-entropy
           (``lm.forward_core``, float32 params, ``--dtype`` compute): tokens/s,
           peak device memory, XLA's temporary-buffer size for the step (the
           activations it keeps for backward; known on every backend), and
           MFU = 6·N·tokens/s / ``--peak-tflops`` (N: parameters without the
           embedding table, whose lookup is no matmul; GPU only).
  prefill  the full model's forward only, at batch 1 and at ``--batch``: tokens/s.

Each implementation runs in its own child process, so that the device's peak
memory (``memory_stats()["peak_bytes_in_use"]``, "n/a" where the backend has
none) belongs to that implementation alone, and one running out of memory does
not stop the others. Every step is compiled once, run once to warm up, then
timed ``--steps`` times with ``block_until_ready``; the fastest run is
reported (on a shared machine, the least disturbed one). Lines are
printed as they are measured; a table and the ratios chunked/scan (>1: chunked
is faster), all from this one run, come last.

Usage::

    python benchmarks/train_bench.py                      # small CPU defaults
    python benchmarks/train_bench.py --version 7 --d-model 768 --n-layer 12 \\
        --vocab 65536 --batch 8 --seq-len 2048 --dtype bfloat16 --op-shape 8,2048,12,64 --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

RESULT = "RESULT "  # prefix of the machine-readable lines a child prints


def _args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", type=int, choices=(4, 7), default=7)
    ap.add_argument("--d-model", "--d_model", dest="d_model", type=int, default=256)
    ap.add_argument("--n-layer", "--n_layer", dest="n_layer", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", "--seq_len", dest="seq_len", type=int, default=512)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--impl", default="scan,chunked", help="comma-separated wkv_impl values")
    ap.add_argument("--op-shape", "--op_shape", dest="op_shape", default="2,512,4,32")
    ap.add_argument(
        "--op-chunk",
        "--op_chunk",
        dest="op_chunk",
        type=int,
        default=None,
        help="chunk length of the chunked op (default: wkv.CHUNK; the model always uses that)",
    )
    ap.add_argument("--parts", default="op,train,prefill", help="subset of op,train,prefill")
    ap.add_argument("--steps", type=int, default=5, help="timed runs per measurement")
    ap.add_argument(
        "--quick", action="store_true", help="2 timed runs, and prefill at --batch only"
    )
    ap.add_argument(
        "--peak-tflops",
        "--peak_tflops",
        dest="peak_tflops",
        type=float,
        default=None,
        help="device bf16 peak for MFU (default: 989, an H100, on GPU; no MFU on CPU)",
    )
    ap.add_argument("--child-impl", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 2)
    return args


def _time(fn, args, steps: int) -> tuple[float, float, int | None]:
    """(compile seconds, fastest seconds per call, XLA temp bytes) of a jitted ``fn(*args)``."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    analysis = compiled.memory_analysis()
    return compile_s, min(times), None if analysis is None else analysis.temp_size_in_bytes


def _emit(**row) -> None:
    print(RESULT + json.dumps(row), flush=True)


def _op_inputs(version: int, shape: tuple[int, int, int, int]):
    import jax
    import jax.numpy as jnp

    from prosg_jax.models import wkv

    b, t, h, n = shape
    keys = iter(jax.random.split(jax.random.key(0), 8))

    def normal(*s):
        return jax.random.normal(next(keys), s, jnp.float32)

    if version == 4:
        c = h * n
        state = (jnp.zeros((b, c)), jnp.zeros((b, c)), jnp.full((b, c), wkv.P_EMPTY))
        return (-jnp.exp(normal(c)), normal(c), normal(b, t, c), normal(b, t, c), state, None)
    kk = normal(b, t, h, n)
    kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    log_w = -0.6 * jax.nn.sigmoid(normal(b, t, h, n))
    a = jax.nn.sigmoid(normal(b, t, h, n))
    return (
        normal(b, t, h, n),
        log_w,
        normal(b, t, h, n),
        normal(b, t, h, n),
        kk,
        a,
        jnp.zeros((b, h, n, n)),
        None,
    )


def bench_op(args, impl: str) -> None:
    import jax
    import jax.numpy as jnp

    from prosg_jax.models import wkv

    shape = tuple(int(x) for x in args.op_shape.split(","))
    op = wkv.rwkv4 if args.version == 4 else wkv.rwkv7
    inputs = _op_inputs(args.version, shape)
    *arrays, reset = inputs

    chunk = args.op_chunk or wkv.CHUNK

    def fwd(*xs):
        return op(*xs, reset, impl=impl, chunk=chunk)

    def loss(*xs):
        y, state = fwd(*xs)
        return jnp.sum(y) + sum(jnp.sum(s) for s in jax.tree.leaves(state))

    grad = jax.grad(loss, argnums=tuple(range(len(arrays))))
    for mode, fn in (("fwd", fwd), ("fwd+bwd", grad)):
        compile_s, sec, _ = _time(fn, arrays, args.steps)
        print(
            f"  [{impl}] op {mode:8s} {sec * 1e3:9.2f} ms   (compile {compile_s:.1f} s)",
            flush=True,
        )
        _emit(part=f"op {mode}", impl=impl, ms=sec * 1e3)


def _model(args, impl: str):
    import jax

    import prosg_jax as pj

    make = pj.RWKVConfig.rwkv7 if args.version == 7 else pj.RWKVConfig.rwkv4
    cfg = make(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layer=args.n_layer,
        dtype=args.dtype,
        wkv_impl=impl,
    )
    return cfg, pj.init_params(jax.random.key(0), cfg)


def _mem(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _peak_bytes():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_train(args, impl: str) -> None:
    import jax
    import jax.numpy as jnp
    import optax

    import prosg_jax as pj
    from prosg_jax.models.lm import forward_core

    cfg, params = _model(args, impl)
    b, t = args.batch, args.seq_len
    tokens = jax.random.randint(jax.random.key(1), (b, t + 1), 0, args.vocab, jnp.int32)

    def loss(p, tok):
        state = pj.init_state(cfg, b)
        logits, _, _ = forward_core(cfg, p, tok[:, :-1], state)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:]).mean()

    compile_s, sec, temp = _time(jax.value_and_grad(loss), (params, tokens), args.steps)
    tok_s = b * t / sec
    peak = _peak_bytes()
    n_matmul = sum(x.size for x in jax.tree.leaves(params)) - params["emb"]["weight"].size
    on_cpu = jax.devices()[0].platform == "cpu"
    peak_tflops = args.peak_tflops or (None if on_cpu else 989.0)
    mfu = None if peak_tflops is None else 6 * n_matmul * tok_s / (peak_tflops * 1e12)
    mem = _mem(peak)
    mfu_txt = "" if mfu is None else f", MFU {100 * mfu:.1f}%"
    print(
        f"  [{impl}] train    {tok_s:11.0f} tok/s  ({sec * 1e3:.1f} ms/step, peak {mem}, "
        f"XLA temp {_mem(temp)}{mfu_txt}, compile {compile_s:.1f} s)",
        flush=True,
    )
    _emit(part="train", impl=impl, tok_s=tok_s, peak_bytes=peak, temp_bytes=temp, mfu=mfu)


def bench_prefill(args, impl: str) -> None:
    import jax
    import jax.numpy as jnp

    import prosg_jax as pj
    from prosg_jax.models.lm import forward_core

    cfg, params = _model(args, impl)
    batches = [args.batch] if args.quick or args.batch == 1 else [1, args.batch]
    for b in batches:
        tokens = jax.random.randint(jax.random.key(2), (b, args.seq_len), 0, args.vocab, jnp.int32)

        def fwd(p, tok, b=b):
            logits, state, _ = forward_core(cfg, p, tok, pj.init_state(cfg, b))
            return logits[:, -1], state

        compile_s, sec, _ = _time(fwd, (params, tokens), args.steps)
        tok_s = b * args.seq_len / sec
        print(
            f"  [{impl}] prefill B={b:<3d} {tok_s:9.0f} tok/s  ({sec * 1e3:.1f} ms, "
            f"compile {compile_s:.1f} s)",
            flush=True,
        )
        _emit(part=f"prefill B={b}", impl=impl, tok_s=tok_s)


def child(args) -> None:
    import jax

    dev = jax.devices()[0]
    print(f"  [{args.child_impl}] device {dev.platform}: {dev.device_kind}", flush=True)
    parts = args.parts.split(",")
    for name, fn in (("op", bench_op), ("train", bench_train), ("prefill", bench_prefill)):
        if name in parts:
            fn(args, args.child_impl)


def _fmt(row: dict) -> str:
    if "ms" in row:
        return f"{row['ms']:.2f} ms"
    return f"{row['tok_s']:.0f} tok/s"


def main() -> None:
    args = _args()
    if args.child_impl:
        child(args)
        return
    # No jax here: the parent must not claim the accelerator its children use.
    print(
        f"RWKV-{args.version} C={args.d_model} L={args.n_layer} V={args.vocab} "
        f"B={args.batch} T={args.seq_len} {args.dtype}; op shape {args.op_shape}",
        flush=True,
    )
    results: dict[tuple[str, str], dict] = {}
    impls = args.impl.split(",")
    for impl in impls:
        print(f"{impl}:", flush=True)
        proc = subprocess.Popen(
            [sys.executable, __file__, *sys.argv[1:], "--child-impl", impl],
            stdout=subprocess.PIPE,
            text=True,
        )
        for line in proc.stdout:
            if line.startswith(RESULT):
                row = json.loads(line[len(RESULT) :])
                results[(row["part"], impl)] = row
            else:
                print(line, end="", flush=True)
        if proc.wait():
            print(f"  [{impl}] stopped with exit code {proc.returncode}", flush=True)

    parts = list(dict.fromkeys(part for part, _ in results))
    print("\n" + " | ".join([f"{'':14s}"] + [f"{i:>16s}" for i in impls]) + " | chunked/scan")
    for part in parts:
        cells = [_fmt(results[(part, i)]) if (part, i) in results else "failed" for i in impls]
        ratio = ""
        if (part, "scan") in results and (part, "chunked") in results:
            s, c = results[(part, "scan")], results[(part, "chunked")]
            ratio = f"{s['ms'] / c['ms']:.2f}x" if "ms" in s else f"{c['tok_s'] / s['tok_s']:.2f}x"
        print(" | ".join([f"{part:14s}"] + [f"{x:>16s}" for x in cells]) + f" | {ratio}")
        if part == "train":
            for key, label in (("peak_bytes", "  peak memory"), ("temp_bytes", "  XLA temp")):
                mem = [_mem(results.get((part, i), {}).get(key)) for i in impls]
                print(" | ".join([f"{label:14s}"] + [f"{x:>16s}" for x in mem]) + " |")
            mfus = [results.get((part, i), {}).get("mfu") for i in impls]
            if any(m is not None for m in mfus):
                txt = ["n/a" if m is None else f"{100 * m:.1f}%" for m in mfus]
                print(" | ".join([f"{'  MFU':14s}"] + [f"{x:>16s}" for x in txt]) + " |")


if __name__ == "__main__":
    main()
