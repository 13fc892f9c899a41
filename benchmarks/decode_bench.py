"""Decode throughput of ``pj.decode_chunk``: plain vs ProSG deltas, beside the
memory-bandwidth floor, with an optional per-step kernel profile.

Random weights (``pj.init_params``), greedy decoding of ``--tokens`` tokens
per row from a fresh state; each case is compiled once and timed ``--repeats``
times (best kept). ProSG rows decode with random rank-``--rank`` deltas on
every target of every layer (``pj.target_names``), so they pay what a
trained module's deltas cost. Columns:

- ``tok/s``: generated tokens per second over the batch;
- ``floor``: the batch's tokens per second if every step only had to move its
  bytes at ``--bandwidth`` (weights in the compute dtype once, the fp32
  recurrent state read and written per row, the logits written and read, and
  the delta factors per row): ``--bandwidth`` defaults to the measured
  device-to-device copy rate of an H100 (3.0 TB/s) or H200 (4.3 TB/s) and is
  not printed on a CPU unless given;
- ``prosg/plain``: time with deltas over time without, same batch, same run.

``--unroll 1,4`` times each unroll (tokens per loop iteration) of the same
build. ``--json`` saves the rows; ``--compare BEFORE.json`` adds the ratio
of this run's tok/s over a saved run's (e.g. the previous commit's code, run
on the same machine in the same session). ``--profile DIR`` traces one
decode call per case with ``jax.profiler`` and prints, per generated token,
the device kernels launched and their summed time, the biggest first.

Usage::

    python benchmarks/decode_bench.py                 # CPU: small shapes, ~1 min
    python benchmarks/decode_bench.py --shape gpu --dtype bfloat16 \\
        --batch 1,16,64,256 --version 7,4 --profile /tmp/prof   # the issue's shapes
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import inspect
import itertools
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# Appended, not prepended: a prosg_jax on PYTHONPATH (e.g. an older build to
# compare against) wins over this checkout's.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import prosg_jax as pj  # noqa: E402
from prosg_jax.lowrank import weight  # noqa: E402

# Measured device-to-device copy rates, bytes read + written per second
# (/work/.library/device/KINDS.md); the floor is only as good as this figure.
BANDWIDTH = {"H100": 3.0e12, "H200": 4.3e12}
# (d_model, n_layer, vocab) per version; "gpu" are the shapes.
SHAPES = {
    "gpu": {7: (768, 12, 65536), 4: (768, 12, 50277)},
    "cpu": {7: (256, 4, 8192), 4: (256, 4, 8192)},
}


def model(version: int, shape: str, dtype: str):
    c, n_layer, vocab = SHAPES[shape][version]
    make = pj.RWKVConfig.rwkv7 if version == 7 else pj.RWKVConfig.rwkv4
    cfg = make(vocab_size=vocab, d_model=c, n_layer=n_layer).replace(dtype=dtype)
    return cfg, pj.init_params(jax.random.key(0), cfg)


def random_deltas(cfg, params, batch: int, rank: int) -> dict:
    """Rank-``rank`` factors on every target, fp32 as the SG module emits them."""
    out = {}
    for i, name in enumerate(pj.target_names(cfg)):
        d_out, d_in = weight(params, name).shape
        ku, kv = jax.random.split(jax.random.key(i))
        out[name] = pj.LowRankDelta(
            u=0.01 * jax.random.normal(ku, (batch, d_out, rank)),
            v=0.01 * jax.random.normal(kv, (batch, d_in, rank)),
            scale=jnp.ones((batch,), jnp.float32),
        )
    return out


def fresh_state(cfg, batch: int) -> pj.SamplingState:
    """A fresh sampling state (decode donates it, so one per call)."""
    return pj.SamplingState(
        last_logits=jnp.zeros((batch, cfg.vocab_size), jnp.float32),
        # Copies: a build whose init_state shares one zero buffer between fields
        # cannot donate it.
        state=jax.tree.map(jnp.copy, pj.init_state(cfg, batch)),
        done=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        stop_ids=jnp.full((batch, 4), -1, jnp.int32),
        key=jax.random.key(0),
    )


def step_bytes(cfg, params, batch: int, deltas: dict | None) -> int:
    """Bytes one decode step must move at least (see the module docstring)."""
    itemsize = jnp.dtype(cfg.compute_dtype).itemsize
    weights = sum(
        x.size * (itemsize if x.ndim >= 2 else x.dtype.itemsize)
        for x in jax.tree.leaves({k: v for k, v in params.items() if k != "emb"})
    )
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(pj.init_state(cfg, 1)))
    per_row = 2 * state + 2 * 4 * cfg.vocab_size + cfg.d_model * itemsize
    if deltas:
        per_row += sum((d.u[0].size + d.v[0].size) * itemsize for d in deltas.values())
    return weights + batch * per_row


def decode(cfg, params, batch: int, deltas, tokens: int, kw: dict):
    """One decode call of ``tokens`` per row from a fresh state; returns the tokens."""
    out, _ = pj.decode_chunk(cfg, params, fresh_state(cfg, batch), deltas, n=tokens, **kw)
    return jax.block_until_ready(out)


def time_best(run, repeats: int) -> tuple[float, float]:
    """``(fastest of repeats, seconds of the first call: compile included)``."""
    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best, compile_s


def profile(run, trace_dir: str, tokens: int) -> str:
    """Traces one ``run()`` with jax.profiler and summarises its device kernels."""
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        run()
    try:
        return kernel_profile(trace_dir, tokens)
    except (OSError, ValueError, KeyError) as e:  # a trace format we misread
        return f"unreadable trace ({e!r})"


def kernel_profile(trace_dir: str, tokens: int) -> str:
    """Per-token count and summed time of device kernels in a jax.profiler trace."""
    files = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    files += glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
    if not files:
        return "no trace file written"
    with gzip.open(max(files, key=lambda f: Path(f).stat().st_mtime)) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    names = {
        e["pid"]: e["args"].get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device = {pid for pid, n in names.items() if "GPU" in n or "TPU" in n or "device" in n}
    kernels = [e for e in events if e.get("ph") == "X" and e.get("pid") in device]
    if not kernels:
        return f"no device kernels in the trace (processes: {sorted(set(names.values()))[:6]})"
    by_name = collections.Counter()
    for e in kernels:
        by_name[e["name"][:60]] += float(e.get("dur", 0))
    total = sum(by_name.values())
    top = ", ".join(f"{n} {t / tokens:.1f}us" for n, t in by_name.most_common(6))
    return (
        f"{len(kernels) / tokens:.0f} kernels/token, {total / tokens:.0f} us/token of kernel "
        f"time; top: {top}"
    )


def main() -> None:
    backend = jax.default_backend()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--version", default="7", help="comma-separated: 7,4")
    ap.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--shape", default="cpu" if backend == "cpu" else "gpu", choices=SHAPES)
    ap.add_argument("--dtype", default="float32" if backend == "cpu" else "bfloat16")
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per row")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--methods", default="plain,prosg")
    ap.add_argument("--unroll", default="", help="comma-separated; '' = the build's default")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bandwidth", type=float, default=None, help="bytes/s for the floor")
    ap.add_argument("--label", default="", help="names this run in --json output")
    ap.add_argument("--json", default="", help="append the rows to this JSON-lines file")
    ap.add_argument("--compare", default="", help="JSON-lines file of an earlier run")
    ap.add_argument("--profile", default="", help="directory for jax.profiler traces")
    ap.add_argument("--budget", type=float, default=1e9, help="stop starting cases after s")
    args = ap.parse_args()

    kind = jax.devices()[0].device_kind
    bandwidth = args.bandwidth or next((b for k, b in BANDWIDTH.items() if k in kind), None)
    has_unroll = "unroll" in inspect.signature(pj.decode_chunk).parameters
    unrolls = [int(u) for u in args.unroll.split(",") if u] or [None]
    if not has_unroll and unrolls != [None]:
        sys.exit("this build's decode_chunk has no unroll argument; leave --unroll empty")
    before = {}
    if args.compare:
        for line in Path(args.compare).read_text().splitlines():
            r = json.loads(line)
            case = (r["version"], r["batch"], r["method"])
            before[case] = max(r["tok_s"], before.get(case, 0))
    floor_note = f", floor at {bandwidth / 1e9:,.0f} GB/s" if bandwidth else ""
    print(f"# prosg_jax from {Path(pj.__file__).parent}", flush=True)
    print(
        f"# {kind} ({backend}), {args.dtype}, {args.tokens} tokens/row, rank {args.rank}"
        + floor_note,
        flush=True,
    )
    print(
        "| model | batch | method | unroll | tok/s | floor | % floor | prosg/plain |"
        + (" vs before |" if before else ""),
        flush=True,
    )
    start = time.perf_counter()
    for version in [int(v) for v in args.version.split(",")]:
        cfg, params = model(version, args.shape, args.dtype)
        label = f"RWKV-{version} L{cfg.n_layer} C{cfg.d_model} V{cfg.vocab_size}"
        for batch in [int(b) for b in args.batch.split(",")]:
            plain_s = {}
            methods = args.methods.split(",")
            deltas_of = {
                m: random_deltas(cfg, params, batch, args.rank) if m == "prosg" else None
                for m in methods
            }
            for method, unroll in itertools.product(methods, unrolls):
                if time.perf_counter() - start > args.budget:
                    print(f"# budget of {args.budget:.0f}s spent; stopping", flush=True)
                    return
                deltas = deltas_of[method]
                run = functools.partial(
                    decode,
                    cfg,
                    params,
                    batch,
                    deltas,
                    args.tokens,
                    {} if unroll is None else {"unroll": unroll},
                )
                best, compile_s = time_best(run, args.repeats)
                if method == "plain":
                    plain_s[unroll] = best
                tok_s = batch * args.tokens / best
                floor = bandwidth and batch * bandwidth / step_bytes(cfg, params, batch, deltas)
                ratio = method != "plain" and unroll in plain_s and best / plain_s[unroll]
                u = unroll if unroll is not None else "default"
                cells = [
                    label,
                    batch,
                    method,
                    u,
                    f"{tok_s:,.0f}",
                    f"{floor:,.0f}" if floor else "–",
                    f"{100 * tok_s / floor:.0f}%" if floor else "–",
                    f"{ratio:.2f}x" if ratio else "",
                ]
                if before:
                    old = before.get((version, batch, method))
                    cells.append(f"{tok_s / old:.2f}x" if old else "–")
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
                print(f"#   compile+first call {compile_s:.1f}s", flush=True)
                if args.json:
                    row = dict(version=version, batch=batch, method=method, unroll=u)
                    row.update(tok_s=tok_s, floor=floor, label=args.label, device=kind)
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if args.profile and backend != "cpu":
                    trace = f"{args.profile}/v{version}_b{batch}_{method}_u{u}"
                    print(f"#   profile: {profile(run, trace, args.tokens)}", flush=True)


if __name__ == "__main__":
    main()
