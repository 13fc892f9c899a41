"""Every field of an experiment config, checked before any work.

:func:`check_config` walks every leaf of the ``ConfigDict`` against
:data:`RULES` (type, range, allowed values), then the rules that tie fields
together (target layers within the model's depth, matrices the model has,
the tokenizer's ids within the vocabulary). A problem is one
:class:`~prosg_jax.errors.UserError` line that names the field as it is
written on the command line::

    --config.prosg.layers=5: target layers [5] outside [0, 2)

An unknown field (a typo in a config file) is refused too: every field that a
config may hold has a rule here, and ``tests/test_bad_inputs.py`` checks that
every shipped config passes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from prosg_jax.config import (
    METHODS,
    POOLINGS,
    WKV_IMPLS,
    ProSGConfig,
    RWKVConfig,
    is_int,
)
from prosg_jax.data.tokenizers import TOKENIZER_NAMES, tokenizer_vocab_size
from prosg_jax.errors import UserError
from prosg_jax.models import model_family
from prosg_jax.models.family import versions
from prosg_jax.prosg.losses import FORGET_STATES

Rule = Callable[[Any], str | None]  # the problem with a value, or None

STAGES = ("base", "prosg", "joint")
EVAL_SPLITS = ("test", "validation")  # report on test; tune on validation


def _is_real(x) -> bool:
    return (is_int(x) or isinstance(x, float | np.floating)) and math.isfinite(float(x))


def integer(lo: int | None = None, hi: int | None = None, *, also: tuple = ()) -> Rule:
    """An int in ``[lo, hi]`` (either bound may be open-ended), or one of ``also``."""

    def rule(x):
        if is_int(x) and x in also:
            return None
        if not is_int(x):
            return "must be an integer"
        if lo is not None and x < lo or hi is not None and x > hi:
            span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            extra = f" or one of {list(also)}" if also else ""
            return f"must be in {span}{extra}"
        return None

    return rule


def real(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite number in the interval (``lo_open``/``hi_open`` exclude the ends)."""

    def rule(x):
        if not _is_real(x):
            return "must be a finite number"
        if x < lo or (lo_open and x == lo) or x > hi or (hi_open and x == hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            return f"must be in {left}{lo}, {hi}{right}"
        return None

    return rule


def choice(*values) -> Rule:
    def rule(x):
        return None if x in values and type(x) is type(values[0]) else f"choose from {values}"

    return rule


def model_version(x) -> str | None:
    """A model family's version: 4, 7 or one registered (``models.family.register``)."""
    known = versions()
    if isinstance(x, bool) or not any(x == v and type(x) is type(v) for v in known):
        return f"choose from {known}"
    return None


def boolean(x) -> str | None:
    return None if isinstance(x, bool) else "must be True or False"


def text(x) -> str | None:
    return None if isinstance(x, str) else "must be a string"


def int_list(lo: int = 0, *, distinct: bool = True, allow_empty: bool = True) -> Rule:
    """A comma-separated list of integers ``>= lo`` (``"64,256"``)."""

    def rule(x):
        if not isinstance(x, str):
            return "must be a string of comma-separated integers, e.g. '64,256'"
        items = [s.strip() for s in x.split(",") if s.strip()]
        if not items and not allow_empty:
            return "must name at least one integer"
        if not all(re.fullmatch(r"-?\d+", s) for s in items):
            return "must be comma-separated integers, e.g. '64,256'"
        values = [int(s) for s in items]
        if any(v < lo for v in values):
            return f"every value must be >= {lo}"
        if distinct and len(set(values)) != len(values):
            return "names a value twice"
        return None

    return rule


def _stage_rules() -> dict[str, Rule]:
    rules = {}
    for stage in STAGES:
        rules |= {
            f"train.{stage}.steps": integer(0),
            f"train.{stage}.lr": real(0, lo_open=True),
            f"train.{stage}.warmup_steps": integer(0),
            f"train.{stage}.batch_size": integer(1),
            f"train.{stage}.mixture": text,
        }
    return rules


RULES: dict[str, Rule] = {
    "seed": integer(0, 2**31 - 1),
    "tokenizer": choice(*TOKENIZER_NAMES),
    "init_from": text,  # a path or ""; it is checked where it is read
    "sg_from": text,  # a run directory, a prosg.safetensors or ""; checked where it is read
    "distributed": boolean,
    "mesh.data": integer(1, also=(-1,)),
    "mesh.fsdp": integer(1, also=(-1,)),
    "model.version": model_version,
    "model.vocab_size": integer(1, 2**24),
    "model.d_model": integer(1),
    "model.n_layer": integer(1),
    "model.head_size": integer(1),
    "model.d_ffn": integer(0),
    "model.d_state": integer(0),  # Mamba-2 fields; RWKV configs leave them out
    "model.n_groups": integer(1),
    "model.d_conv": integer(2),
    "model.dtype": choice("float32", "bfloat16"),
    "model.wkv_impl": choice(*WKV_IMPLS),
    "prosg.method": choice(*METHODS),
    "prosg.rank": integer(1),
    "prosg.matrices": text,
    "prosg.layers": int_list(0),
    "prosg.sg_hidden": integer(1),
    "prosg.key_dim": integer(1),
    "prosg.pooling": choice(*POOLINGS),
    "prosg.power_iters": integer(1),
    "prosg.sketch_seed": integer(0, 2**31 - 1),
    "prosg.true_grad_steps": integer(1),
    "prosg.true_grad_lr": real(-math.inf),
    "prosg.sg_match_weight": real(0),
    "prosg.sg_lookahead": boolean,
    "prosg.segment_len": integer(0),
    "prosg.sg_match_lr": real(-math.inf),
    "prosg.distill_weight": real(0, 1),
    "data.data_dir": text,
    "data.train_mixture": text,
    "data.loss_on": choice("answers", "all"),
    "data.answer_weight": real(0, lo_open=True),
    "data.seq_len": integer(2),
    "data.prompt_len": integer(0),
    "data.cont_len": integer(0),
    "data.num_workers": integer(0),
    "train.stages": text,
    **_stage_rules(),
    "train.min_lr_ratio": real(0, 1),
    "train.decay_frac": real(0, 1, lo_open=True),
    "train.forget_frac": real(0, 1),
    "train.forget_state": choice(*FORGET_STATES),
    "train.lora_rank": integer(0),
    "train.weight_decay": real(0),
    "train.b1": real(0, 1, hi_open=True),
    "train.b2": real(0, 1, hi_open=True),
    "train.eps": real(0, lo_open=True),
    "train.grad_clip": real(0, lo_open=True),
    "train.grad_accum": integer(1),
    "train.log_every": integer(1),
    "train.checkpoint_every": integer(1),
    "train.keep_checkpoints": integer(1),
    "train.progress_bar": boolean,
    "eval.methods": text,
    "eval.models": text,
    "eval.exact_match": choice("generate", "teacher_forced"),
    "eval.distances": int_list(0),
    "eval.num_facts": integer(1),
    "eval.num_queries": integer(0),
    "eval.distractor_facts": int_list(0, allow_empty=False),
    "eval.mqar": text,
    "eval.split": choice(*EVAL_SPLITS),
    "eval.num_examples": integer(1),
    "eval.seeds": int_list(0, allow_empty=False),
    "eval.batch_size": integer(1),
}


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    """``(dotted path, value)`` of every leaf, in the config's order."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def field_error(path: str, value, problem: str) -> UserError:
    """``--config.<path>=<value>: <problem>`` as a :class:`UserError`."""
    return UserError(f"--config.{path}={value}: {problem}")


def _cross_field(config: ml_collections.ConfigDict) -> None:
    """The rules that tie fields together."""
    try:
        model = RWKVConfig.from_dict(config.model.to_dict())
    except (TypeError, ValueError) as e:
        raise UserError(f"config.model: {e}") from e
    matrices = tuple(m.strip() for m in config.prosg.matrices.split(",") if m.strip())
    if not matrices:
        valid = model_family(model).targets
        raise field_error("prosg.matrices", config.prosg.matrices, f"name one of {valid}")
    layers = tuple(int(s) for s in config.prosg.layers.split(",") if s.strip()) or None
    # ProSGConfig's own rules, each reported against the field that broke it
    # (the layers checked with matrices known to be valid)
    for field, fields in (
        ("matrices", {"matrices": matrices}),
        ("layers", {"matrices": matrices, "layers": layers}),
    ):
        try:
            ProSGConfig(**fields).targets(model)
        except ValueError as e:
            extra = " (config.model.n_layer)" if field == "layers" else ""
            raise field_error(f"prosg.{field}", config.prosg[field], f"{e}{extra}") from None
    stages = [s.strip() for s in config.train.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages or len(set(stages)) != len(stages):
        raise field_error(
            "train.stages",
            config.train.stages,
            f"name distinct stages from {STAGES}, in order",
        )
    if config.train.lora_rank > 0 and "joint" not in stages:
        raise field_error(
            "train.lora_rank",
            config.train.lora_rank,
            f"adapts the base in the joint stage, which train.stages={config.train.stages!r} "
            "does not run (0 = no adapter)",
        )
    vocab = tokenizer_vocab_size(config.tokenizer)
    if vocab > model.vocab_size:
        raise field_error(
            "tokenizer",
            config.tokenizer,
            f"its {vocab} ids do not fit config.model.vocab_size={model.vocab_size}",
        )
    if not config.eval.num_queries <= config.eval.num_facts:
        raise field_error(
            "eval.num_queries",
            config.eval.num_queries,
            f"0 asks every fact; else 1 .. eval.num_facts={config.eval.num_facts}",
        )
    shares = [int(s) for s in config.eval.distractor_facts.split(",") if s.strip()]
    if any(p > 100 for p in shares):
        raise field_error(
            "eval.distractor_facts", config.eval.distractor_facts, "percentages in [0, 100]"
        )


def check_config(config: ml_collections.ConfigDict) -> None:
    """Checks every field of ``config`` and the rules between them.

    Raises:
      UserError: ``--config.<field>=<value>: <problem>`` for the first problem.
    """
    for path, value in leaves(config):
        rule = RULES.get(path)
        if rule is None:
            raise field_error(
                path, value, "unknown field (python train.py --config_help lists them)"
            )
        problem = rule(value)
        if problem:
            raise field_error(path, value, problem)
    missing = sorted(set(RULES) - {p for p, _ in leaves(config)})
    if missing:
        raise UserError(f"the config has no field {missing[0]} (every config needs all of them)")
    _cross_field(config)
