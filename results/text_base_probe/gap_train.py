"""Gapped MQAR from scratch, with an optional causal convolution over the input.

    python results/text_base_probe/gap_train.py GAP STEPS WIDTH [SEED]

Trains the 2-layer C = 64 RWKV-7 of ``configs/mqar_distance_cpu.py`` (byte
vocabulary, 2 heads of 32) from scratch on ``mqar/l192_kv8_voc20_g<GAP>``
(one example per row, batch 32, loss on the answers, AdamW at lr 3e-3 after a
100-step warmup, global-norm clip 1) and prints the validation answer
accuracy of the first 256 examples every 200 steps; chance is 10%. With
``WIDTH`` > 0 the input embeddings get a causal depthwise convolution,
``x_t + sum_j c_j * x_{t-1-j}`` for j < WIDTH, zero-initialised: not RWKV-7,
a test of whether seeing further back than the token shift helps. The loop is
its own (not ``train.py``) because the convolution is not part of the model.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prosg_jax.config import RWKVConfig
from prosg_jax.data import mqar
from prosg_jax.models import rwkv7
from prosg_jax.models.layers import TargetHooks, layer_norm
from prosg_jax.models.lm import init_params, init_state

CFG = RWKVConfig.rwkv7(vocab_size=258, d_model=64, n_layer=2, head_size=32)


def batch(config: mqar.MqarConfig, split: str, indices):
    """``(inputs, targets, answer mask)`` of those examples."""
    examples = [mqar.make_example(config, split, int(i)) for i in indices]
    tokens = np.stack([e["tokens"] for e in examples])
    mask = np.stack([e["loss_mask"] for e in examples])
    return (
        jnp.asarray(tokens[:, :-1]),
        jnp.asarray(tokens[:, 1:]),
        jnp.asarray(mask[:, 1:], jnp.float32),
    )


def logits_fn(params, tokens, width: int):
    """The model's forward, with the input convolution when ``width`` > 0."""
    x = layer_norm(jnp.take(params["emb"]["weight"], tokens, axis=0), params["ln0"])
    if width:  # zeros before the start of the row
        pad = jnp.pad(x, ((0, 0), (width, 0), (0, 0)))
        x = x + sum(
            params["conv"][j] * pad[:, width - 1 - j : pad.shape[1] - 1 - j] for j in range(width)
        )
    hooks, v_first = TargetHooks(), None
    for i, (p, s) in enumerate(
        zip(params["blocks"], init_state(CFG, tokens.shape[0]), strict=True)
    ):
        x, _, v_first = rwkv7.block(CFG, i, p, x, s, reset=None, hooks=hooks, v_first=v_first)
    return layer_norm(x, params["ln_out"]) @ params["head"]["weight"].T


def main() -> None:
    gap, steps, width = (int(a) for a in sys.argv[1:4])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    config = mqar.MqarConfig(name="g", vocab_size=20, seq_len=192, num_kv_pairs=8, value_gap=gap)

    def loss_fn(params, tokens, targets, mask):
        logp = jax.nn.log_softmax(logits_fn(params, tokens, width))
        nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        return (nll * mask).sum() / mask.sum()

    params = init_params(jax.random.key(seed), CFG)
    if width:
        params["conv"] = jnp.zeros((width, CFG.d_model))
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
        hit = logits_fn(params, tokens, width).argmax(-1) == targets
        return (hit * mask).sum() / mask.sum()

    rng = np.random.default_rng(seed)
    validation = batch(config, "validation", range(256))
    start = time.time()
    for s in range(1, steps + 1):
        params, opt_state, loss = step(
            params, opt_state, *batch(config, "train", rng.integers(0, 20000, 32))
        )
        if s % 200 == 0:
            print(
                f"gap {gap} width {width} seed {seed} step {s}: loss {float(loss):.3f} "
                f"val acc {float(accuracy(params, *validation)):.1%} ({time.time() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
