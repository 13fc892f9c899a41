"""The one experiment builder: a ``ConfigDict`` turned, once, into frozen typed
objects, used by ``train.py`` and ``eval.py``.

Every error names the config field to fix and is a :class:`UserError`, so the
scripts report it as one line. :func:`build` checks the whole config
(:mod:`prosg_jax.config_check`); the smaller builders here serve the scripts
that read one section.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import ml_collections

from prosg_jax import tasks
from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.config_check import check_config
from prosg_jax.errors import UserError
from prosg_jax.models import model_family
from prosg_jax.prosg.sg import check_sg_params
from prosg_jax.run import load_sg_params
from prosg_jax.tasks import datasets


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of ``configs/<name>.py`` beside ``config_file``.

    Config files are loaded by path (``--config configs/x.py``), not as a
    package, so one that extends another loads it by path too.
    """
    path = pathlib.Path(config_file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def split_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` → ``("a", "b", "c")``."""
    return tuple(s.strip() for s in str(text).split(",") if s.strip())


def int_list(text: str, field: str) -> tuple[int, ...]:
    """``"64,256"`` → ``(64, 256)``; ``field`` names the config field in errors."""
    try:
        return tuple(int(s) for s in split_list(text))
    except ValueError:
        raise UserError(f"config.{field} must be comma-separated integers, got {text!r}") from None


def model_config(config: ml_collections.ConfigDict) -> RWKVConfig:
    """The frozen model config from ``config.model``."""
    try:
        return RWKVConfig.from_dict(config.model.to_dict())
    except (TypeError, ValueError) as e:
        raise UserError(f"config.model: {e}") from e


def shape_of(cfg: RWKVConfig) -> dict[str, int]:
    """The fields of ``cfg`` that fix parameter shapes: the family and its own fields
    (RWKV-4 ignores the head and LoRA sizes)."""
    fields = model_family(cfg).shape_fields
    return {"version": cfg.version, **{f: getattr(cfg, f) for f in fields}}


def check_same_shape(want: RWKVConfig, have: RWKVConfig, where: str) -> None:
    """Raises a one-line error naming every field where ``want`` contradicts ``have``."""
    a, b = shape_of(want), shape_of(have)
    diff = [
        f"{k}={a.get(k)} (it has {b.get(k)})"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    if diff:
        raise UserError(
            f"config.model contradicts the model in {where}: {', '.join(diff)}; "
            "fix the config or use another --workdir"
        )


def prosg_config(config: ml_collections.ConfigDict, *, train_base: bool = False) -> ProSGConfig:
    """The frozen ProSG config from ``config.prosg`` (``train_base`` for the joint stage)."""
    try:
        return ProSGConfig.from_dict({**config.prosg.to_dict(), "train_base": train_base})
    except (TypeError, ValueError) as e:
        raise UserError(f"config.prosg: {e}") from e


def sg_from(config: ml_collections.ConfigDict, model_cfg: RWKVConfig) -> dict | None:
    """The SG parameters ``config.sg_from`` names (a run directory or a ``prosg.safetensors``),
    checked against ``config.prosg`` and the model; None when it is empty."""
    if not config.sg_from:
        return None
    try:
        params = load_sg_params(config.sg_from)
    except FileNotFoundError as e:
        raise UserError(f"config.sg_from: {e}") from None
    try:
        check_sg_params(model_cfg, prosg_config(config).replace(method="prosg"), params)
    except ValueError as e:
        raise UserError(f"config.sg_from={config.sg_from}: {e}") from e
    return params


def stages(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The stages to run, in order (:func:`check_config` has checked the names)."""
    return split_list(config.train.stages)


def curriculum(config: ml_collections.ConfigDict, stage: str) -> tuple[datasets.Phase, ...]:
    """The stage's curriculum (its own ``mixture`` or ``data.train_mixture``)."""
    text = config.train[stage].mixture or config.data.train_mixture
    return datasets.parse_curriculum(text)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything derived from a config, without touching data or devices."""

    model: RWKVConfig
    prosg: ProSGConfig  # as configured; the joint stage trains the base too
    stages: tuple[str, ...]
    curricula: dict[str, tuple[datasets.Phase, ...]]


def build(config: ml_collections.ConfigDict) -> Experiment:
    """Validates ``config`` and builds its typed objects (no data, no devices).

    Raises:
      UserError: naming the offending field.
    """
    check_config(config)
    names = stages(config)
    model = model_config(config)
    prosg_cfg = prosg_config(config)
    prosg_cfg.targets(model)  # checked by check_config; kept as the typed objects' own rule
    curricula = {}
    for stage in names:
        curricula[stage] = curriculum(config, stage)
        for phase in curricula[stage]:
            for name, _ in phase.mixture:
                datasets.check_vocab(tasks.parse_dataset(name), model.vocab_size)
    return Experiment(model=model, prosg=prosg_cfg, stages=names, curricula=curricula)
