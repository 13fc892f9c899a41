"""Bad input, table by table: each is refused in one line that names the culprit.

Three tables: experiment-config fields (what ``train.py``/``eval.py`` check
before any work), the public API (configs, params, state, deltas, runs,
checkpoints, generation arguments) and the command line (a few subprocesses).
Every refusal is a single line (no traceback text, no newline) matching a
pattern that names the field or argument at fault. Edge cases that are valid
are in the same tables and must simply work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import ROOT, load_config

import prosg_jax as pj
from prosg_jax import experiment
from prosg_jax.config_check import RULES, check_config, leaves
from prosg_jax.errors import UserError
from prosg_jax.eval import evaluate

# --------------------------------------------------------------------------- configs


class Field(NamedTuple):
    path: str
    value: Any
    pattern: str  # what the one-line error must say (besides naming the field)


FIELD_CASES = [
    Field("seed", -1, r"must be in \[0"),
    Field("tokenizer", "gpt2", "choose from"),
    Field("tokenizer", "world", "65536 ids do not fit config.model.vocab_size=258"),
    Field("distributed", 1, "True or False"),
    Field("mesh.data", 0, r"must be in \[1, inf\] or one of \[-1\]"),
    Field("mesh.fsdp", -2, "or one of"),
    Field("model.version", 5, "choose from"),
    Field("model.version", "7", "choose from"),
    Field("model.vocab_size", 0, "must be in"),
    Field("model.vocab_size", 300.5, "must be an integer"),
    Field("model.vocab_size", "300", "must be an integer"),
    Field("model.d_model", -64, "must be in"),
    Field("model.n_layer", 0, "must be in"),
    Field("model.head_size", 0, "must be in"),
    Field("model.d_ffn", -1, "must be in"),
    Field("model.dtype", "float16", "choose from"),
    Field("model.wkv_impl", "cuda", "choose from"),
    Field("prosg.method", "lora", "choose from"),
    Field("prosg.rank", 0, "must be in"),
    Field("prosg.rank", 2.5, "must be an integer"),
    Field("prosg.matrices", "att.gate", r"RWKV-7 has no target matrix \['att.gate'\]"),
    Field("prosg.matrices", "ffn.receptance", "RWKV-7 has no target matrix"),
    Field("prosg.matrices", "", "name one of"),
    Field("prosg.matrices", " , ", "name one of"),
    Field("prosg.matrices", "att.value,att.value", "names a matrix twice"),
    Field("prosg.layers", "5", r"target layers \[5\] outside \[0, 2\)"),
    Field("prosg.layers", "0,2", r"target layers \[2\] outside"),
    Field("prosg.layers", "-1", ">= 0"),
    Field("prosg.layers", "0,0", "names a value twice"),
    Field("prosg.layers", "one", "comma-separated integers"),
    Field("prosg.layers", 1, "must be a string"),
    Field("prosg.sg_hidden", 0, "must be in"),
    Field("prosg.key_dim", -3, "must be in"),
    Field("prosg.pooling", "mean", "choose from"),
    Field("prosg.power_iters", 0, "must be in"),
    Field("prosg.sketch_seed", -1, "must be in"),
    Field("prosg.true_grad_steps", 0, "must be in"),
    Field("prosg.true_grad_lr", math.nan, "finite number"),
    Field("prosg.true_grad_lr", math.inf, "finite number"),
    Field("prosg.sg_match_weight", -0.5, "must be in"),
    Field("prosg.sg_match_lr", math.nan, "finite number"),
    Field("prosg.sg_lookahead", "yes", "True or False"),
    Field("prosg.distill_weight", 1.5, r"must be in \[0, 1\]"),
    Field("data.loss_on", "some", "choose from"),
    Field("data.answer_weight", 0.0, r"must be in \(0"),
    Field("data.answer_weight", math.nan, "finite number"),
    Field("data.seq_len", 1, "must be in"),
    Field("data.prompt_len", -1, "must be in"),
    Field("data.cont_len", -8, "must be in"),
    Field("data.num_workers", -1, r"must be in \[0"),
    Field("train.stages", "", "name distinct stages"),
    Field("train.stages", "pretrain", "name distinct stages"),
    Field("train.stages", "base,base", "name distinct stages"),
    Field("train.base.steps", -1, "must be in"),
    Field("train.prosg.lr", 0.0, r"must be in \(0"),
    Field("train.joint.lr", -1e-3, "must be in"),
    Field("train.joint.lr", math.inf, "finite number"),
    Field("train.prosg.warmup_steps", -5, "must be in"),
    Field("train.base.batch_size", 0, "must be in"),
    Field("train.joint.batch_size", 2.0, "must be an integer"),
    Field("train.min_lr_ratio", 1.5, r"must be in \[0"),
    Field("train.decay_frac", 0.0, r"must be in \(0"),
    Field("train.forget_frac", -0.1, "must be in"),
    Field("train.forget_frac", 1.01, "must be in"),
    Field("train.forget_state", "random", "choose from"),
    Field("train.lora_rank", -1, r"must be in \[0"),
    Field("train.lora_rank", 1.5, "must be an integer"),
    Field("train.weight_decay", -0.01, "must be in"),
    Field("train.b1", 1.0, r"must be in \[0, 1\)"),
    Field("train.b2", -0.1, "must be in"),
    Field("train.eps", 0.0, "must be in"),
    Field("train.grad_clip", 0.0, "must be in"),
    Field("train.grad_accum", 0, r"must be in \[1"),
    Field("train.log_every", 0, "must be in"),
    Field("train.checkpoint_every", 0, "must be in"),
    Field("train.keep_checkpoints", 0, "must be in"),
    Field("train.progress_bar", "no", "True or False"),
    Field("eval.exact_match", "beam", "choose from"),
    Field("eval.distances", "64,abc", "comma-separated integers"),
    Field("eval.distances", "-64", ">= 0"),
    Field("eval.distances", "64,64", "names a value twice"),
    Field("eval.num_facts", 0, "must be in"),
    Field("eval.num_queries", -1, "must be in"),
    Field("eval.num_queries", 9, r"1 .. eval.num_facts=4"),
    Field("eval.distractor_facts", "", "at least one"),
    Field("eval.distractor_facts", "150", r"percentages in \[0, 100\]"),
    Field("eval.distractor_facts", "0,0", "twice"),
    Field("eval.split", "train", "choose from"),
    Field("eval.num_examples", 0, "must be in"),
    Field("eval.seeds", "", "at least one"),
    Field("eval.seeds", "0,-1", ">= 0"),
    Field("eval.seeds", "1,1", "twice"),
    Field("eval.batch_size", 0, "must be in"),
    Field("eval.methods", 3, "must be a string"),
]


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("case", FIELD_CASES, ids=lambda c: f"{c.path}={c.value!r}")
def test_a_bad_config_field_is_one_line_naming_it(case):
    config = load_config("tiny_cpu")
    with config.ignore_type():  # a config file may hold any type; the CLI keeps types
        parent, _, leaf = case.path.rpartition(".")
        target = config
        for part in parent.split(".") if parent else ():
            target = target[part]
        target[leaf] = case.value
    with pytest.raises(UserError) as err:
        check_config(config)
    text = _one_line(err.value)
    assert text.startswith(f"--config.{case.path}={case.value}:"), text
    assert re.search(case.pattern, text), text


def test_every_shipped_config_passes_and_every_field_has_a_rule():
    for path in sorted((ROOT / "configs").glob("*.py")):
        config = load_config(path.stem)
        check_config(config)
        assert {p for p, _ in leaves(config)} == set(RULES), path.name


def test_an_unknown_or_missing_field_is_refused():
    config = load_config("tiny_cpu")
    config.train.grad_acum = 2  # a typo in a config file
    with pytest.raises(UserError, match=r"--config.train.grad_acum=2: unknown field"):
        check_config(config)
    config = load_config("tiny_cpu")
    del config.eval["num_queries"]
    with pytest.raises(UserError, match="no field eval.num_queries"):
        check_config(config)


def test_valid_edge_values_pass():
    config = load_config("tiny_cpu")
    config.prosg.layers = "1"  # the last layer
    config.train.forget_frac = 1.0
    config.train.min_lr_ratio = 0.0
    config.eval.distances = ""  # no prompt_retention rows
    config.eval.num_queries = 4  # every fact, asked one by one
    config.data.num_workers = 0
    check_config(config)
    built = experiment.build(config)
    assert built.prosg.layers == (1,)


# --------------------------------------------------------------------------- API

CFG = pj.RWKVConfig.rwkv7(vocab_size=64, d_model=32, n_layer=2, head_size=16)
CFG4 = pj.RWKVConfig.rwkv4(vocab_size=64, d_model=32, n_layer=2)


@pytest.fixture(scope="module")
def env():
    params = pj.init_params(jax.random.key(0), CFG)
    pc = pj.ProSGConfig(rank=2, matrices=("att.value",), sg_hidden=8, key_dim=4)
    sg = pj.prosg.init(jax.random.key(1), CFG, pc)
    _, state = pj.forward(CFG, params, [[1, 2]])
    byte_cfg = CFG.replace(vocab_size=258)  # the byte tokenizer's ids
    byte_params = pj.init_params(jax.random.key(2), byte_cfg)
    run = pj.Run(byte_cfg, byte_params, pc, pj.prosg.init(jax.random.key(3), byte_cfg, pc), "byte")
    return {"params": params, "pc": pc, "sg": sg, "state": state, "run": run}


def _delta(u_shape, v_shape, scale=()):
    return pj.LowRankDelta(u=jnp.zeros(u_shape), v=jnp.zeros(v_shape), scale=jnp.ones(scale))


ATT_V = "blocks.0.att.value"  # a target every CFG model has: 32x32


def _delta_case(target, u_shape, v_shape, pattern, *, scale=()):
    """An API case: ``pj.forward`` on one token with a zero delta of these shapes at ``target``."""

    def case(e, t):
        return pj.forward(CFG, e["params"], [[1]], deltas={target: _delta(u_shape, v_shape, scale)})

    return case, ValueError, pattern


def _with_leaf(tree, fn):
    """``tree`` with its first leaf replaced by ``fn(leaf)``."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [fn(leaves[0]), *leaves[1:]])


def _run_json(tmp: Path, text: str, env) -> Path:
    pj.save_rwkv(tmp / "base.safetensors", CFG, env["params"])
    (tmp / "run.json").write_text(text)
    return tmp


V7 = dict(d_model=32, n_layer=2, head_size=16)
API_CASES = {
    # typed configs: ints are ints, ranges hold
    "RWKVConfig vocab str": (
        lambda e, t: pj.RWKVConfig.rwkv7(vocab_size="300", **V7),
        ValueError,
        "vocab_size must be a positive int, got '300'",
    ),
    "RWKVConfig vocab float": (
        lambda e, t: pj.RWKVConfig.rwkv7(vocab_size=300.5, **V7),
        ValueError,
        "vocab_size must be a positive int",
    ),
    "RWKVConfig vocab bool": (
        lambda e, t: pj.RWKVConfig.rwkv7(vocab_size=True, **V7),
        ValueError,
        "vocab_size",
    ),
    "RWKVConfig vocab 0": (
        lambda e, t: pj.RWKVConfig.rwkv7(vocab_size=0, **V7),
        ValueError,
        "vocab_size",
    ),
    "RWKVConfig layers float": (
        lambda e, t: pj.RWKVConfig.rwkv7(vocab_size=64, d_model=32, n_layer=2.0, head_size=16),
        ValueError,
        "n_layer",
    ),
    "RWKVConfig head split": (
        lambda e, t: pj.RWKVConfig.rwkv7(vocab_size=64, d_model=32, n_layer=2, head_size=12),
        ValueError,
        "multiple of head_size",
    ),
    "RWKVConfig version": (
        lambda e, t: pj.RWKVConfig(version=5, vocab_size=8, d_model=8, n_layer=1, d_ffn=8),
        ValueError,
        "version must be 4 or 7",
    ),
    "RWKVConfig version str": (
        lambda e, t: pj.RWKVConfig(version="7", vocab_size=8, d_model=8, n_layer=1, d_ffn=8),
        ValueError,
        "version",
    ),
    "RWKVConfig dtype": (
        lambda e, t: pj.RWKVConfig.rwkv4(vocab_size=8, d_model=8, n_layer=1, dtype="float16"),
        ValueError,
        "dtype must be one of",
    ),
    "RWKVConfig wkv_impl": (
        lambda e, t: pj.RWKVConfig.rwkv4(vocab_size=8, d_model=8, n_layer=1, wkv_impl="cuda"),
        ValueError,
        "wkv_impl",
    ),
    "ProSGConfig rank": (
        lambda e, t: pj.ProSGConfig(rank=0),
        ValueError,
        "rank must be a positive int",
    ),
    "ProSGConfig rank float": (lambda e, t: pj.ProSGConfig(rank=2.0), ValueError, "rank"),
    "ProSGConfig method": (
        lambda e, t: pj.ProSGConfig(method="lora"),
        ValueError,
        "method must be one of",
    ),
    "ProSGConfig pooling": (lambda e, t: pj.ProSGConfig(pooling="mean"), ValueError, "pooling"),
    "ProSGConfig matrices str": (
        lambda e, t: pj.ProSGConfig(matrices="att.value"),
        ValueError,
        "tuple of names",
    ),
    "ProSGConfig matrices empty": (
        lambda e, t: pj.ProSGConfig(matrices=()),
        ValueError,
        "at least one",
    ),
    "ProSGConfig layers empty": (
        lambda e, t: pj.ProSGConfig(layers=()),
        ValueError,
        "at least one layer",
    ),
    "ProSGConfig layers str": (lambda e, t: pj.ProSGConfig(layers="0"), ValueError, "layers"),
    "ProSGConfig lr nan": (
        lambda e, t: pj.ProSGConfig(true_grad_lr=math.nan),
        ValueError,
        "true_grad_lr must be a finite",
    ),
    "ProSGConfig lookahead": (
        lambda e, t: pj.ProSGConfig(sg_lookahead=1),
        ValueError,
        "sg_lookahead must be a bool",
    ),
    "targets beyond depth": (
        lambda e, t: pj.ProSGConfig(layers=(5,)).targets(CFG),
        ValueError,
        r"target layers \[5\] outside \[0, 2\)",
    ),
    "targets unknown matrix": (
        lambda e, t: pj.ProSGConfig(matrices=("att.gate",)).targets(CFG),
        ValueError,
        "no target matrix",
    ),
    # forward / step / init
    "forward dict config": (
        lambda e, t: pj.forward({"version": 7}, e["params"], [[1]]),
        TypeError,
        "must be a prosg_jax.RWKVConfig",
    ),
    "forward None config": (
        lambda e, t: pj.forward(None, e["params"], [[1]]),
        TypeError,
        "RWKVConfig",
    ),
    "step dict config": (
        lambda e, t: pj.step({}, e["params"], [1], e["state"]),
        TypeError,
        "RWKVConfig",
    ),
    "init_params dict config": (
        lambda e, t: pj.init_params(jax.random.key(0), {}),
        TypeError,
        "RWKVConfig",
    ),
    "forward token too big": (
        lambda e, t: pj.forward(CFG, e["params"], [[64]]),
        ValueError,
        "token",
    ),
    "forward negative token": (
        lambda e, t: pj.forward(CFG, e["params"], [[-1]]),
        ValueError,
        "token",
    ),
    "forward float tokens": (
        lambda e, t: pj.forward(CFG, e["params"], [[1.5]]),
        ValueError,
        "token",
    ),
    "forward 1-d tokens": (lambda e, t: pj.forward(CFG, e["params"], [1, 2]), ValueError, "token"),
    "forward ragged tokens": (
        lambda e, t: pj.forward(CFG, e["params"], [[1, 2], [3]]),
        ValueError,
        "token",
    ),
    "forward rwkv4 params": (
        lambda e, t: pj.forward(CFG4, e["params"], [[1]]),
        ValueError,
        "params do not match the RWKV-4 config",
    ),
    "forward fewer layers": (
        lambda e, t: pj.forward(CFG.replace(n_layer=1), e["params"], [[1]]),
        ValueError,
        r"params do not match .*\(1 layers\)",
    ),
    "forward other vocab": (
        lambda e, t: pj.forward(CFG.replace(vocab_size=65), e["params"], [[1]]),
        ValueError,
        "vocab_size=65",
    ),
    "forward int32 params": (
        lambda e, t: pj.forward(
            CFG, jax.tree.map(lambda x: x.astype(jnp.int32), e["params"]), [[1]]
        ),
        ValueError,
        "dtype int32: parameters must be floats",
    ),
    "forward params list": (
        lambda e, t: pj.forward(CFG, [1, 2], [[1]]),
        ValueError,
        "params do not match",
    ),
    "forward bf16 state": (
        lambda e, t: pj.forward(
            CFG, e["params"], [[1, 2]], jax.tree.map(lambda x: x.astype(jnp.bfloat16), e["state"])
        ),
        ValueError,
        "has dtype bfloat16; states are float32",
    ),
    "forward int32 state": (
        lambda e, t: pj.forward(
            CFG, e["params"], [[1, 2]], jax.tree.map(lambda x: x.astype(jnp.int32), e["state"])
        ),
        ValueError,
        "states are float32",
    ),
    "forward state batch": (
        lambda e, t: pj.forward(CFG, e["params"], [[1], [2]], e["state"]),
        ValueError,
        r"expected .*\(batch 2\)",
    ),
    "forward state layers": (
        lambda e, t: pj.forward(CFG, e["params"], [[1]], e["state"][:1]),
        ValueError,
        "state has 1 layers, the model has 2",
    ),
    "forward state dict": (
        lambda e, t: pj.forward(CFG, e["params"], [[1]], {"a": 1}),
        ValueError,
        "state has dict layers",
    ),
    "forward rwkv4 state": (
        lambda e, t: pj.forward(CFG, e["params"], [[1]], pj.init_state(CFG4, 1)),
        ValueError,
        "not an RWKV-7 LayerState",
    ),
    "forward positions shape": (
        lambda e, t: pj.forward(CFG, e["params"], [[1, 2]], positions=[[0]]),
        ValueError,
        "positions",
    ),
    "forward negative positions": (
        lambda e, t: pj.forward(CFG, e["params"], [[1, 2]], positions=[[0, -1]]),
        ValueError,
        "positions",
    ),
    # deltas
    "deltas rank mismatch": _delta_case(ATT_V, (1, 32, 4), (1, 32, 3), "with one rank r"),
    "deltas wrong out dim": _delta_case(ATT_V, (1, 16, 2), (1, 32, 2), "the target is 32x32"),
    "deltas ffn shape": _delta_case(
        "blocks.0.ffn.value", (1, 32, 2), (1, 32, 2), r"the target is 32x128"
    ),
    "deltas batch": _delta_case(ATT_V, (2, 32, 2), (2, 32, 2), "B=1"),
    "deltas 2-d factors": _delta_case(ATT_V, (32, 2), (32, 2), r"\[B, O, r\]"),
    "deltas scale shape": _delta_case(ATT_V, (1, 32, 2), (1, 32, 2), "scale has shape", scale=(3,)),
    "deltas tuple": (
        lambda e, t: pj.forward(
            CFG, e["params"], [[1]], deltas={ATT_V: (jnp.zeros((1, 32, 2)),) * 2}
        ),
        ValueError,
        "must be a LowRankDelta",
    ),
    "deltas list": (
        lambda e, t: pj.forward(CFG, e["params"], [[1]], deltas=[1]),
        ValueError,
        "deltas must be a dict",
    ),
    "deltas unknown target": _delta_case(
        "blocks.9.att.value", (1, 32, 2), (1, 32, 2), "unknown target 'blocks.9.att.value'"
    ),
    "deltas rwkv4-only target": _delta_case(
        "blocks.0.ffn.receptance", (1, 32, 2), (1, 32, 2), "unknown target"
    ),
    # generation arguments
    "generate huge count": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=10**12),
        ValueError,
        r"max_new_tokens must be an int in \[1, 16,777,216\]",
    ),
    "generate zero count": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=0),
        ValueError,
        "max_new_tokens",
    ),
    "generate float count": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2.0),
        ValueError,
        "max_new_tokens",
    ),
    "generate bool count": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=True),
        ValueError,
        "max_new_tokens",
    ),
    "generate temperature": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, temperature=-1.0),
        ValueError,
        "temperature",
    ),
    "generate temperature nan": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, temperature=math.nan),
        ValueError,
        "temperature",
    ),
    "generate top_k": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, top_k=65),
        ValueError,
        "top_k",
    ),
    "generate top_p": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, top_p=0.0),
        ValueError,
        "top_p",
    ),
    "generate unroll": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, unroll=0),
        ValueError,
        "unroll",
    ),
    "generate stop token": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, stop_tokens=[64]),
        ValueError,
        "stop token 64",
    ),
    "generate stop rows": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, stop_tokens=[[1], [2]]),
        ValueError,
        "stop_tokens",
    ),
    "generate empty prompt": (
        lambda e, t: pj.generate(CFG, e["params"], [[]], max_new_tokens=2),
        ValueError,
        "prompt",
    ),
    "generate method": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, method="lora"),
        ValueError,
        "method must be None or one of",
    ),
    "generate prosg without sg": (
        lambda e, t: pj.generate(CFG, e["params"], [[1]], max_new_tokens=2, method="prosg"),
        ValueError,
        "needs sg_params",
    ),
    "generate sg wrong rank": (
        lambda e, t: pj.generate(
            CFG,
            e["params"],
            [[1]],
            max_new_tokens=2,
            prosg_cfg=e["pc"].replace(rank=3),
            sg_params=e["sg"],
        ),
        ValueError,
        "rank=3",
    ),
    "prefill context rows": (
        lambda e, t: pj.prefill(CFG, e["params"], [[1]], contexts=[[1], [2]]),
        ValueError,
        "contexts has 2 rows",
    ),
    "decode_chunk count": (
        lambda e, t: pj.decode_chunk(
            CFG, e["params"], pj.prefill(CFG, e["params"], [[1]])[0], None, n=0
        ),
        ValueError,
        "n must be an int",
    ),
    "decode_chunk bad deltas": (
        lambda e, t: pj.decode_chunk(
            CFG,
            e["params"],
            pj.prefill(CFG, e["params"], [[1]])[0],
            {"blocks.0.att.value": _delta((2, 32, 2), (2, 32, 2))},
            n=2,
        ),
        ValueError,
        "B=1",
    ),
    # Run and text
    "Run dict config": (
        lambda e, t: pj.Run({}, e["params"], None, None, "byte"),
        TypeError,
        "RWKVConfig",
    ),
    "Run tokenizer name unknown": (
        lambda e, t: pj.Run(CFG, e["params"], None, None, "gpt2"),
        ValueError,
        "unknown tokenizer 'gpt2'",
    ),
    "Run tokenizer int": (
        lambda e, t: pj.Run(CFG, e["params"], None, None, 3),
        TypeError,
        "Run.tokenizer must be a tokenizer",
    ),
    "Run tokenizer vocab": (
        lambda e, t: pj.Run(CFG, e["params"], None, None, "byte"),
        ValueError,
        "258 ids, the model's vocabulary 64",
    ),
    "Run prosg_cfg dict": (
        lambda e, t: pj.Run(CFG, e["params"], {"rank": 2}, None, "byte"),
        TypeError,
        "Run.prosg_cfg must be a ProSGConfig",
    ),
    "Run nan sg": (
        lambda e, t: dataclasses.replace(
            e["run"], sg_params=jax.tree.map(lambda x: x * jnp.nan, e["sg"])
        ),
        ValueError,
        "Run.sg_params holds NaN",
    ),
    "Run inf params": (
        lambda e, t: dataclasses.replace(
            e["run"], params=_with_leaf(e["run"].params, lambda x: x.at[..., 0].set(jnp.inf))
        ),
        ValueError,
        "Run.params holds NaN or infinite",
    ),
    "Run sg other target set": (
        lambda e, t: dataclasses.replace(
            e["run"], prosg_cfg=e["pc"].replace(matrices=("att.key",))
        ),
        ValueError,
        "sg_params",
    ),
    "complete prompts not text": (
        lambda e, t: pj.complete(e["run"], [1, 2], [""], max_new_tokens=2),
        (TypeError, ValueError),
        "prompt",
    ),
    "complete_ids context rows": (
        lambda e, t: pj.complete_ids(e["run"], [[1]], [[1], [2]], max_new_tokens=1),
        ValueError,
        "1 prompts but 2 contexts",
    ),
    "complete_ids method": (
        lambda e, t: pj.complete_ids(e["run"], [[1]], [[1]], max_new_tokens=1, method="x"),
        ValueError,
        "method",
    ),
    # checkpoints and runs
    "save_rwkv rwkv4 config": (
        lambda e, t: pj.save_rwkv(t / "x.safetensors", CFG4, e["params"]),
        ValueError,
        "params do not match the RWKV-4 config",
    ),
    "save_rwkv fewer layers": (
        lambda e, t: pj.save_rwkv(t / "x.safetensors", CFG.replace(n_layer=1), e["params"]),
        ValueError,
        r"\(1 layers\)",
    ),
    "save_rwkv nan": (
        lambda e, t: pj.save_rwkv(
            t / "x.safetensors", CFG, jax.tree.map(lambda x: x * jnp.nan, e["params"])
        ),
        pj.CheckpointError,
        "NaN or infinite",
    ),
    "save_rwkv suffix": (
        lambda e, t: pj.save_rwkv(t / "x.bin", CFG, e["params"]),
        pj.CheckpointError,
        "unsupported checkpoint format '.bin'",
    ),
    "save_rwkv dict config": (
        lambda e, t: pj.save_rwkv(t / "x.safetensors", {}, e["params"]),
        TypeError,
        "RWKVConfig",
    ),
    "load_rwkv missing": (
        lambda e, t: pj.load_rwkv(t / "nope.safetensors"),
        (FileNotFoundError, pj.CheckpointError),
        "nope.safetensors",
    ),
    "load_rwkv garbage": (
        lambda e, t: (
            (t / "g.safetensors").write_bytes(b"\x00" * 64) and pj.load_rwkv(t / "g.safetensors")
        ),
        pj.CheckpointError,
        "g.safetensors",
    ),
    "load_rwkv dtype": (
        lambda e, t: pj.load_rwkv(ROOT / "pretrained/mqar_base.safetensors", dtype=jnp.int32),
        (ValueError, pj.CheckpointError),
        "dtype",
    ),
    "load_run empty dir": (lambda e, t: pj.load_run(t), FileNotFoundError, "no trained run"),
    "load_run run.json list": (
        lambda e, t: pj.load_run(_run_json(t, "[]", e)),
        UserError,
        "is not a run record: a JSON object",
    ),
    "load_run run.json empty": (
        lambda e, t: pj.load_run(_run_json(t, "{}", e)),
        UserError,
        "'model' must be a JSON object",
    ),
    "load_run run.json no prosg": (
        lambda e, t: pj.load_run(_run_json(t, json.dumps({"model": {}, "tokenizer": "byte"}), e)),
        UserError,
        "'prosg' must be a JSON object",
    ),
    "load_run run.json bad model": (
        lambda e, t: pj.load_run(
            _run_json(t, json.dumps({"model": {"version": 7}, "prosg": {}, "tokenizer": "byte"}), e)
        ),
        UserError,
        "holds an invalid config",
    ),
    "load_run run.json not json": (
        lambda e, t: pj.load_run(_run_json(t, "{", e)),
        UserError,
        "cannot read",
    ),
    "load_run run.json tokenizer": (
        lambda e, t: pj.load_run(
            _run_json(t, json.dumps({"model": {}, "prosg": {}, "tokenizer": 3}), e)
        ),
        UserError,
        "'tokenizer' must be a JSON string",
    ),
    "get_tokenizer": (
        lambda e, t: pj.get_tokenizer("gpt2"),
        ValueError,
        "unknown tokenizer 'gpt2'",
    ),
    "derive_deltas ragged lengths": (
        lambda e, t: pj.prosg.derive_deltas(
            CFG,
            e["params"],
            e["sg"],
            e["pc"],
            prompts=np.ones((1, 4), np.int32),
            prompt_lengths=np.array([5]),
        ),
        ValueError,
        "prompt",
    ),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_a_bad_api_argument_is_one_line_naming_it(name, env, tmp_path):
    fn, exc, pattern = API_CASES[name]
    with pytest.raises(exc) as err:
        fn(env, tmp_path)
    text = _one_line(err.value)
    assert re.search(pattern, text), text


def test_valid_edge_arguments_work(env):
    params, run = env["params"], env["run"]
    # a tokenizer given by name is looked up
    big = pj.RWKVConfig.rwkv7(vocab_size=258, d_model=32, n_layer=1, head_size=16)
    named = pj.Run(big, pj.init_params(jax.random.key(0), big), None, None, "byte")
    assert named.tokenizer.vocab_size == 258
    # numpy integers are ints; a one-token prompt; an empty context
    cfg = pj.RWKVConfig.rwkv7(vocab_size=np.int64(64), d_model=32, n_layer=2, head_size=16)
    assert cfg == CFG
    out = pj.generate(CFG, params, [[1]], max_new_tokens=np.int32(2))
    assert out.tokens.shape == (1, 2)
    assert len(pj.complete_ids(run, [[1, 2]], [[]], max_new_tokens=1)[0]) == 1
    # per-example and scalar scales are both valid deltas
    for scale in ((), (1,)):
        logits, _ = pj.forward(
            CFG, params, [[1]], deltas={"blocks.0.att.value": _delta((1, 32, 2), (1, 32, 2), scale)}
        )
        assert np.isfinite(np.asarray(logits)).all()


# --------------------------------------------------------------------------- eval semantics


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory):
    """A copy of the shipped default run, evaluated on a small slice (no files written there)."""
    import shutil

    workdir = tmp_path_factory.mktemp("run") / "mqar_prosg"
    shutil.copytree(ROOT / "pretrained" / "mqar_prosg", workdir)
    return workdir


def _small_eval(**overrides):
    config = load_config("default")
    config.eval.mqar = "l128_kv8_voc256_d0"
    config.eval.methods = "true_grad"
    config.eval.seeds = "0"
    config.eval.num_examples = 2
    for path, value in overrides.items():
        section, field = path.split(".")
        config[section][field] = value
    return config


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("prosg.rank", 4),
        ("prosg.matrices", "att.value"),
        ("prosg.layers", "0"),
        ("prosg.pooling", "power"),
        ("prosg.sg_hidden", 32),
        ("model.dtype", "bfloat16"),
    ],
)
def test_eval_refuses_a_field_that_defines_the_run(shipped_copy, path, value):
    with pytest.raises(UserError) as err:
        evaluate(_small_eval(**{path: value}), shipped_copy)
    text = _one_line(err.value)
    assert f"--config.{path}={value} (the run has" in text and "define the run" in text


def test_eval_applies_and_records_evaluation_time_choices(shipped_copy):
    results = evaluate(
        _small_eval(
            **{"prosg.true_grad_steps": 2, "prosg.true_grad_lr": 0.5, "model.wkv_impl": "scan"}
        ),
        shipped_copy,
    )
    assert results["config"]["prosg"]["true_grad_steps"] == 2
    assert results["config"]["prosg"]["true_grad_lr"] == 0.5
    assert results["config"]["model"]["wkv_impl"] == "scan"
    default = evaluate(_small_eval(), shipped_copy)
    assert default["config"]["prosg"]["true_grad_steps"] == 1
    # two steps of lr 0.5 are not one of lr 1: the setting reached the computation
    assert results["perplexity"] != default["perplexity"]


# --------------------------------------------------------------------------- command line


def _script(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PROSG_TRACEBACK"}
    return subprocess.run(
        [sys.executable, str(ROOT / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "status", "pattern"),
    [
        (["--workdir="], 1, "train.py: error: --workdir is empty"),
        (
            ["--workdir=W", "--config.prosg.layers=5"],
            1,
            r"--config.prosg.layers=5: target layers \[5\] outside \[0, 2\)",
        ),
        (
            ["--workdir=W", "--config.train.grad_accum=0"],
            1,
            r"--config.train.grad_accum=0: must be in \[1",
        ),
        (
            ["--workdir=W", "--config.train.joint.steps=abc"],
            2,
            "flag --config.train.joint.steps=abc: invalid literal",
        ),
        (
            ["--workdir=W", "--config", "configs/nope.py"],
            2,
            "--config configs/nope.py: no such config file",
        ),
        (
            ["--workdir=W", "--config.distributed=True"],
            1,
            "--config.distributed=True: no cluster to join",
        ),
        (["--workdir=W", "surplus"], 2, r"unexpected arguments: \['surplus'\]"),
    ],
    ids=[
        "empty-workdir",
        "layers",
        "grad_accum",
        "int-literal",
        "no-config",
        "distributed",
        "surplus",
    ],
)
def test_train_cli_errors_are_one_line(tmp_path, args, status, pattern):
    args = [a.replace("=W", f"={tmp_path / 'w'}") for a in args]
    done = _script(["train.py", *args], cwd=tmp_path)  # started outside the repository
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == status, done.stderr[-2000:]
    assert lines and re.search(pattern, lines[-1]), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "w" / "run.json").exists()


def test_config_help_lists_every_field_with_its_comment():
    done = _script(["eval.py", "--config_help"], cwd=Path("/"))
    assert done.returncode == 0, done.stderr[-2000:]
    for path, _ in leaves(load_config("default")):
        assert f"--config.{path}=" in done.stdout, path
    assert "--config.train.grad_accum=1\n    micro-batches per optimizer update" in done.stdout
