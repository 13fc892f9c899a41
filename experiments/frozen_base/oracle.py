"""How much can rank-r deltas on the frozen base hold at all? Deltas fitted per example.

    python experiments/frozen_base/oracle.py OUT.json [--data_dir DIR] [--distances 0,64]
        [--fits "state;empty;state,empty"]

An upper bound for the frozen-base SG stage (issue 34): for each test example
of ``mqar/l128_kv8_voc256_d<D>`` (the first 8 by default), free
per-example factors ``U, V`` (rank 8, on the six target matrices of
``configs/mqar_distance_cpu.py``) are fitted by Adam to that example's own
answers at distance D, the base (``pretrained/mqar_base.safetensors``) frozen,
the prompt read into the state as in generation. What the fitted deltas
recall is what any SG module could at best make this base recall there; the
SG module's own recall (``results/frozen_base/``) falls short of it by what it
fails to predict. The deltas are fitted on the answers they are scored on: a
capacity bound, not a result.

Three fits per distance: on the prompt's state (as evaluation reads),
on an empty state (as the forget rows of training read), and on both at once
(one delta that must serve either); each is scored from both starts. Writes
exact match per distance, fit, start and step to OUT.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import prosg_jax as pj
from prosg_jax import prosg
from prosg_jax.data.tokenizers import get_tokenizer
from prosg_jax.eval.scoring import eval_name, load_eval_set
from prosg_jax.files import write_text
from prosg_jax.lowrank import LowRankDelta
from prosg_jax.models.family import target_shape
from prosg_jax.models.lm import forward_core, init_state
from prosg_jax.prosg.ablations import derive
from prosg_jax.tasks.datasets import make_prosg_batch, round_up

ROOT = Path(__file__).resolve().parents[2]
MATRICES = ("att.key", "att.value", "att.receptance", "att.output", "ffn.key", "ffn.value")


STARTS = ("state", "empty")


def fit(cfg, params, arrays, *, fit_on: tuple[str, ...], rank: int, steps: int, lr: float):
    """Fits per-example deltas to ``arrays``' answers read from the ``fit_on`` starts.

    A start is ``"state"`` (the prompt's state) or ``"empty"``; with both, the
    loss is their mean, so one delta must serve either.

    Returns:
      ``[(step, {start: exact match})]`` every 50 steps, each start scored.
    """
    names = pj.ProSGConfig(matrices=MATRICES).targets(cfg)
    b = arrays["prompts"].shape[0]
    _, tail = derive(
        cfg,
        params,
        None,
        pj.ProSGConfig(method="none"),
        prompts=arrays["prompts"],
        prompt_lengths=arrays["prompt_lengths"],
    )
    states = {"state": tail.state, "empty": init_state(cfg, b)}
    targets = jnp.asarray(arrays["targets"])
    mask = jnp.asarray(arrays["loss_mask"])
    inputs, positions = prosg.continuation_inputs(tail, targets)
    key = jax.random.key(0)
    factors = {}
    for i, name in enumerate(names):
        d_out, d_in = target_shape(cfg, name)
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        factors[name] = {
            "u": 0.01 * jax.random.normal(k1, (b, d_out, rank)),
            "v": jax.random.normal(k2, (b, d_in, rank)) / np.sqrt(d_in),
        }

    def logits_of(f, start):
        deltas = {n: LowRankDelta(u=x["u"], v=x["v"], scale=jnp.ones(())) for n, x in f.items()}
        logits, _, _ = forward_core(cfg, params, inputs, start, deltas=deltas, positions=positions)
        return logits

    def loss(f):
        ces = [prosg.masked_cross_entropy(logits_of(f, states[s]), targets, mask) for s in fit_on]
        return sum(ces) / len(ces)

    @jax.jit
    def accuracy(f):
        out = {}
        for s in STARTS:
            hit = (jnp.argmax(logits_of(f, states[s]), -1) == targets) * mask
            out[s] = hit.sum() / mask.sum()
        return out

    opt = optax.adam(lr)

    @jax.jit
    def step(f, opt_state):
        value, grads = jax.value_and_grad(loss)(f)
        updates, opt_state = opt.update(grads, opt_state, f)
        return optax.apply_updates(f, updates), opt_state, value

    opt_state = opt.init(factors)
    curve = []
    for s in range(1, steps + 1):
        factors, opt_state, value = step(factors, opt_state)
        if s % 50 == 0 or s == steps:
            acc = {k: float(v) for k, v in accuracy(factors).items()}
            curve.append((s, acc))
            shown = ", ".join(f"from {k} {v:.3f}" for k, v in acc.items())
            print(f"  step {s}: loss {float(value):.3f}; exact match {shown}", flush=True)
    return curve


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--data_dir", default="/tmp/oracle_tfds")
    ap.add_argument("--distances", default="0,64")
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--fits", default="state;empty;state,empty", help="';'-separated starts")
    args = ap.parse_args(argv)
    fits = [tuple(f.split(",")) for f in args.fits.split(";")]
    if not all(f and set(f) <= set(STARTS) for f in fits):
        ap.error(f"--fits={args.fits!r}: ';'-separated lists of starts from {STARTS}")
    cfg, params = pj.load_rwkv(ROOT / "pretrained" / "mqar_base.safetensors")
    tok = get_tokenizer("byte")
    out = {"args": vars(args), "results": {}}
    for d in (int(x) for x in args.distances.split(",")):
        name = eval_name(f"mqar/l128_kv8_voc256_d{d}", args.examples)
        es = load_eval_set(name, args.examples, [0], args.data_dir, tokenizer=tok)
        arrays = make_prosg_batch(
            es.examples,
            prompt_len=round_up(max(len(e["prompt"]) for e in es.examples)),
            cont_len=round_up(max(len(e["cont"]) for e in es.examples)),
            loss_on="answers",
            answer_weight=1.0,
        )
        for fit_on in fits:
            label = f"d{d}_fit_{'_'.join(fit_on)}"
            t = time.time()
            print(f"{label}:", flush=True)
            curve = fit(
                cfg, params, arrays, fit_on=fit_on, rank=args.rank, steps=args.steps, lr=args.lr
            )
            out["results"][label] = {"curve": curve, "seconds": round(time.time() - t, 1)}
            write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary(out["results"])))


def summary(results: dict) -> dict:
    """Each fit's final exact match from each start."""
    return {k: v["curve"][-1][1] for k, v in results.items()}


if __name__ == "__main__":
    main(sys.argv[1:])
