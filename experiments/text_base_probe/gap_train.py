"""Gapped MQAR: which changes make binding across a gap learnable?

    python experiments/text_base_probe/gap_train.py GAP STEPS [WIDTH [SEED]]
        [--head-size N] [--layers L] [--d-model C] [--separator] [--requery] [--echo K]
        [--digits K] [--init PATH] [--save PATH]

Trains the 2-layer C = 64 RWKV-7 of ``configs/mqar_distance_cpu.py`` (byte
vocabulary, 2 heads of 32; or C / N heads, L layers) from scratch on
``mqar/l192_kv8_voc20_g<GAP>`` (one example per row, batch 32, loss on the
answers, AdamW at lr 3e-3 after a 100-step warmup, global-norm clip 1) and
prints the validation answer accuracy of the first 256 examples every 200
steps. Chance is 10%; a model that knows the prompt's values and eliminates
those already answered, without binding any key, gets 34.0% (see
``mqar_gap.py``). The variants, which combine:

- ``WIDTH`` > 0: the input embeddings get a causal depthwise convolution,
  ``x_t + sum_j c_j * x_{t-1-j}`` for j < WIDTH, zero-initialised: not
  RWKV-7, a test of whether seeing further back than the token shift helps.
- ``--separator``: the gap holds the padding id 0, the same in every pair and
  query, like the fixed " is " of the text, instead of random value ids.
- ``--echo K``: K of each batch's 32 rows are delayed-copy rows (see
  ``echo_batch``) instead of MQAR; the accuracy on 256 such rows is printed
  too.
- ``--digits K``: K of each batch's rows are rows of
  ``mqar/l128_kv8_voc100`` (one-token keys, no gap, values over byte ids
  50-99, which hold the ten digits; the warm-up of
  ``pretrained/tiny_rwkv7_mqar_base.sh``), padded to the row length; the
  accuracy on 256 validation rows is printed too.
- ``--requery``: each query asks a key drawn with replacement from the
  prompt's, so that eliminating the values already answered no longer pays
  (a reader that knows the values but no key gets 1 / 8).

``--init PATH`` starts from a saved base of the same shape instead of a fresh
one (``--save`` writes one), and prints its scores at step 0 first: with
``STEPS`` 0 the script only scores that base. The loop is its own (not
``train.py``) because the convolution is not part of the model and the data
variants are not ``mqar`` builder options.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prosg_jax.checkpoint import load_rwkv, save_rwkv
from prosg_jax.config import RWKVConfig
from prosg_jax.data import mqar
from prosg_jax.models import rwkv7
from prosg_jax.models.layers import TargetHooks, layer_norm
from prosg_jax.models.lm import init_params, init_state

# The digit-copy rows of ``--digits``: the warm-up dataset of pretrained/tiny_rwkv7_mqar_base.sh
# (the same examples: the seed ignores the train-split size).
DIGITS = mqar.MqarConfig(name="digits", vocab_size=100, seq_len=128, num_kv_pairs=8)


def batch(config: mqar.MqarConfig, split: str, indices, *, separator: bool, requery: bool):
    """``(inputs, targets, answer mask)`` of those examples, with the variants applied."""
    rows, masks = [], []
    n, k, g = config.num_kv_pairs, config.key_tokens, config.value_gap
    pairs = config.pair_len * np.arange(n)
    for i in indices:
        e = mqar.make_example(config, split, int(i))
        tokens, queries = e["tokens"].copy(), e["query_positions"]
        if requery:  # seeded by the example (offset from its own stream): validation stays fixed
            pick = np.random.default_rng(int(e["seed"]) + 12345).integers(0, n, size=n)
            tokens[queries] = tokens[pairs][pick]
            tokens[queries + k + g] = tokens[pairs + k + g][pick]
        if separator:  # every gap position after each key, in the pairs and the queries
            tokens[(np.concatenate([pairs, queries]) + k)[:, None] + np.arange(g)] = 0
        rows.append(tokens)
        masks.append(e["loss_mask"])
    return shifted(np.stack(rows), np.stack(masks))


def shifted(tokens: np.ndarray, mask: np.ndarray):
    """Rows of ``seq_len + 1`` tokens -> ``(inputs, next-token targets, target loss mask)``."""
    return (
        jnp.asarray(tokens[:, :-1]),
        jnp.asarray(tokens[:, 1:]),
        jnp.asarray(mask[:, 1:], jnp.float32),
    )


def echo_batch(config: mqar.MqarConfig, rng: np.random.Generator, rows: int, *, separator: bool):
    """Delayed-copy rows: blocks ``k x .. x k``, with the loss on the repeated key.

    The filler ``x`` is that of the MQAR rows (random value ids, or 0 with
    ``separator``). These rows reward the first thing that binding across the
    gap needs, the key from ``value_gap + 1`` tokens back, with a loss on
    every block and no binding to learn.
    """
    span = config.value_gap + 2
    blocks = (config.seq_len + 1) // span
    keys = rng.integers(1, config.first_value_id, size=(rows, blocks))
    filler = rng.integers(config.first_value_id, config.vocab_size, size=(rows, blocks * span))
    tokens = np.zeros((rows, config.seq_len + 1), np.int32)
    tokens[:, : blocks * span] = 0 if separator else filler
    mask = np.zeros_like(tokens)
    starts = span * np.arange(blocks)
    tokens[:, starts], tokens[:, starts + span - 1] = keys, keys
    mask[:, starts + span - 1] = 1
    return shifted(tokens, mask)


def digits_batch(indices, split: str, row_len: int):
    """Rows of ``mqar/l128_kv8_voc100`` (``split``), zero-padded to ``row_len + 1`` tokens."""
    tokens = np.zeros((len(indices), row_len + 1), np.int32)
    mask = np.zeros_like(tokens)
    for row, i in enumerate(indices):
        e = mqar.make_example(DIGITS, split, int(i))
        tokens[row, : e["tokens"].size], mask[row, : e["tokens"].size] = e["tokens"], e["loss_mask"]
    return shifted(tokens, mask)


def logits_fn(cfg: RWKVConfig, params, tokens, width: int):
    """The model's forward, with the input convolution when ``width`` > 0."""
    x = layer_norm(jnp.take(params["emb"]["weight"], tokens, axis=0), params["ln0"])
    if width:  # zeros before the start of the row
        pad = jnp.pad(x, ((0, 0), (width, 0), (0, 0)))
        x = x + sum(
            params["conv"][j] * pad[:, width - 1 - j : pad.shape[1] - 1 - j] for j in range(width)
        )
    hooks, v_first = TargetHooks(), None
    for i, (p, s) in enumerate(
        zip(params["blocks"], init_state(cfg, tokens.shape[0]), strict=True)
    ):
        x, _, v_first = rwkv7.block(cfg, i, p, x, state=s, reset=None, hooks=hooks, v_first=v_first)
    return layer_norm(x, params["ln_out"]) @ params["head"]["weight"].T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gap", type=int)
    ap.add_argument("steps", type=int)
    ap.add_argument("width", type=int, nargs="?", default=0)
    ap.add_argument("seed", type=int, nargs="?", default=0)
    ap.add_argument("--head-size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--separator", action="store_true")
    ap.add_argument("--requery", action="store_true")
    ap.add_argument("--echo", type=int, default=0, metavar="K")
    ap.add_argument("--digits", type=int, default=0, metavar="K")
    ap.add_argument("--init", metavar="PATH", help="start from this base (.safetensors)")
    ap.add_argument("--save", metavar="PATH", help="write the trained base here (.safetensors)")
    args = ap.parse_args()
    if (args.save or args.init) and args.width:
        ap.error("--save and --init need WIDTH 0: the convolution is not part of RWKV-7")
    if args.echo + args.digits > 31:
        ap.error("--echo plus --digits must leave at least one of the 32 rows to MQAR")
    gap, steps, width, seed = args.gap, args.steps, args.width, args.seed
    cfg = RWKVConfig.rwkv7(
        vocab_size=258, d_model=args.d_model, n_layer=args.layers, head_size=args.head_size
    )
    config = mqar.MqarConfig(name="g", vocab_size=20, seq_len=192, num_kv_pairs=8, value_gap=gap)
    variants = {"separator": args.separator, "requery": args.requery}

    def loss_fn(params, tokens, targets, mask):
        logp = jax.nn.log_softmax(logits_fn(cfg, params, tokens, width))
        nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        return (nll * mask).sum() / mask.sum()

    if args.init:
        loaded_cfg, params = load_rwkv(args.init)
        if loaded_cfg != cfg:
            ap.error(f"--init {args.init}: its model {loaded_cfg} is not the one asked for {cfg}")
    else:
        params = init_params(jax.random.key(seed), cfg)
    if width:
        params["conv"] = jnp.zeros((width, cfg.d_model))
    lr = optax.join_schedules(
        [optax.linear_schedule(0, 3e-3, 100), optax.constant_schedule(3e-3)], [100]
    )
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, b2=0.99, weight_decay=0.01))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, tokens, targets, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets, mask)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, tokens, targets, mask):
        hit = logits_fn(cfg, params, tokens, width).argmax(-1) == targets
        return (hit * mask).sum() / mask.sum()

    rng, echo_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    validation = batch(config, "validation", range(256), **variants)
    echo_validation = echo_batch(
        config, np.random.default_rng([seed, 2]), 256, separator=args.separator
    )
    digits_rng = np.random.default_rng([seed, 3])
    held_out = [("val acc", validation)]
    if args.echo:
        held_out.append(("echo", echo_validation))
    if args.digits:
        held_out.append(("digits", digits_batch(range(256), "validation", config.seq_len)))

    def report(s: int, loss: str) -> None:
        scores = ", ".join(
            f"{name} {float(accuracy(params, *rows)):.1%}" for name, rows in held_out
        )
        print(f"{vars(args)} step {s}: {loss}{scores} ({time.time() - start:.0f} s)", flush=True)

    start = time.time()
    if args.init:  # where the loaded base starts, on every held-out set asked for
        report(0, "")
    extra = args.echo + args.digits
    for s in range(1, steps + 1):
        # 32 indices drawn either way, so the MQAR rows follow the same stream with --echo.
        parts = [batch(config, "train", rng.integers(0, 20000, 32)[extra:], **variants)]
        if args.echo:
            parts.insert(0, echo_batch(config, echo_rng, args.echo, separator=args.separator))
        if args.digits:
            parts.insert(
                0, digits_batch(digits_rng.integers(0, 20000, args.digits), "train", config.seq_len)
            )
        rows = tuple(jnp.concatenate(pair) for pair in zip(*parts, strict=True))
        params, opt_state, loss = step(params, opt_state, *rows)
        if s % 200 == 0:
            report(s, f"loss {float(loss):.3f} ")
    if args.save:
        save_rwkv(args.save, cfg, params)


if __name__ == "__main__":
    main()
