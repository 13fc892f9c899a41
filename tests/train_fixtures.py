"""A tiny experiment config for the train/eval tests (seconds per stage on a CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Tiny generated datasets: 32 training examples each, built in well under a second.
PR_TRAIN = "prompt_retention/d16_f2_n32_val0_t8"
MQAR_TRAIN = "mqar/l32_kv4_voc64_n32_val0_t8"


def load_config(name: str = "tiny_cpu"):
    """``configs/<name>.py``'s ``get_config()``."""
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_config(**steps):
    """configs/tiny_cpu.py shrunk to a 2-layer C=32 model on tiny data."""
    c = load_config()
    c.init_from = ""  # train the tiny base here, not the shipped pretrained one
    c.model.d_model = 32
    c.model.n_layer = 2
    c.model.head_size = 16
    c.model.d_ffn = 64
    c.prosg.rank = 4
    c.prosg.sg_hidden = 16
    c.prosg.key_dim = 8
    c.prosg.matrices = "att.value,ffn.value"
    c.data.train_mixture = f"{PR_TRAIN}:1,{MQAR_TRAIN}:1"
    c.data.seq_len = 256
    c.train.stages = "base,prosg"
    for stage in ("base", "prosg", "joint"):
        c.train[stage].steps = steps.get(stage, 2)
        c.train[stage].batch_size = 8
        c.train[stage].warmup_steps = 1
        c.train[stage].lr = 3e-3
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.progress_bar = False
    c.eval.distances = "16,32"
    c.eval.num_facts = 2
    c.eval.mqar = "l32_kv4_voc64"
    c.eval.num_examples = 2
    c.eval.seeds = "0,1"
    c.eval.batch_size = 8
    return c


def read_metrics(workdir) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def assert_joint_steps_learn(cfg, params, sg, prosg_cfg, batch, *, lr: float, steps: int) -> None:
    """One joint step gives the base and the SG module nonzero finite gradients,
    and ``steps`` more Adam steps on ``batch`` cut its loss by at least 10%."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from prosg_jax import prosg

    prosg_cfg = prosg_cfg.replace(train_base=True)
    trainable = {"base": params, "sg": sg}
    opt = optax.adam(lr)

    def loss(tr):
        return prosg.continuation_loss(cfg, tr["base"], tr["sg"], prosg_cfg, batch=batch)[0]

    @jax.jit
    def train_step(tr, opt_state):
        value, grads = jax.value_and_grad(loss)(tr)
        updates, opt_state = opt.update(grads, opt_state, tr)
        return optax.apply_updates(tr, updates), opt_state, value, grads

    tr, opt_state, first, grads = train_step(trainable, opt.init(trainable))
    for part in ("base", "sg"):
        norm = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads[part]))
        assert np.isfinite(norm) and norm > 0, part
    for _ in range(steps):
        tr, opt_state, value, _ = train_step(tr, opt_state)
    assert float(value) < 0.9 * float(first)
