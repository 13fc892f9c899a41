"""The model-family protocol and its registry.

A family is everything the family-agnostic parts of the library need from one
kind of recurrent block: ``lm.py`` (embedding -> blocks -> head), the ProSG
stages (which matrices take deltas, what the SG module reads from a state)
and ``checkpoint.py`` (the official tensor layout). ``RWKVConfig.version``
names the family; RWKV-4 (``4``) and RWKV-7 (``7``) are built in, and a new
family is one module that builds a :class:`Family` and passes it to
:func:`register` (``tests/test_family.py`` registers a toy one).

This module imports nothing from the rest of the package, so the configs can
resolve families while they validate themselves.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Hashable, Mapping
from typing import Any

# The built-in families, imported on first use: no import order to get right.
_BUILTIN = {
    4: "prosg_jax.models.rwkv4",
    7: "prosg_jax.models.rwkv7",
    "mamba2": "prosg_jax.models.mamba2",
}
_REGISTRY: dict[Hashable, Family] = {}


def _accepts_any(cfg) -> None:
    del cfg


@dataclasses.dataclass(frozen=True)
class Family:
    """What one model family provides.

    Every callable takes the model config (a ``prosg_jax.RWKVConfig`` whose
    ``version`` is this family's) first.

    Attributes:
      version: the ``RWKVConfig.version`` value that selects this family.
      name: a display name for messages (``"RWKV-7"``).
      init_params: ``(key, cfg) -> params``: ``emb`` and ``head`` (each a
        ``{"weight": [V, C]}``), ``blocks`` (a list with one dict per layer)
        and whatever ``norm_in``/``norm_out`` read (RWKV: ``ln0``, ``ln_out``).
      init_layer_state: ``(cfg, batch) -> NamedTuple`` of float32 arrays with
        a leading batch axis: one layer's empty recurrent state.
      block: ``(cfg, i, p, x, state, *, reset, hooks, v_first) -> (x, state,
        v_first)``: layer ``i`` over ``x [B, T, C]``. ``reset [B, T]`` marks
        tokens that start a sequence (the state is empty before them);
        ``hooks`` applies deltas and perturbations and captures inputs of the
        target matrices (``layers.dense``); ``v_first`` is threaded from layer
        to layer for families that need it (``None`` otherwise).
      targets: the matrices of a block that accept a low-rank delta, as paths
        within the block (``"att.value"``).
      target_shape: ``(cfg, matrix) -> (d_out, d_in)`` of one target matrix.
      read_state: ``(cfg, layer_state, q [B, P, C]) -> [B, P, C]``: what the
        final state of a layer says about each query (the SG module's read).
      matmul_weights: paths within a block of the matrices that are only
        multiplied in the compute dtype (cast once per decode call).
      shape_fields: the ``RWKVConfig`` fields that fix this family's parameter
        shapes (a run trained with one shape refuses another).
      check_config: ``cfg -> None``, raising ``ValueError`` for fields this
        family cannot use.
      preset: ``(**fields) -> RWKVConfig`` with this family's default widths,
        used for experiment configs (``None``: the fields as given).
      checkpoint_layout: ``cfg -> [(official key, path in params, official
        shape)]`` (``None``: no official format; ``save_rwkv`` refuses it).
      detect: ``keys -> bool``: whether a state dict is this family's.
      config_fields: ``(tensors, dim, n_layer, meta) -> dict``: every config
        field but ``version``, ``n_layer`` and ``dtype`` read off a state dict;
        ``dim(key, axis)`` is one tensor's size along ``axis`` (or a one-line
        error when the tensor is missing); ``meta`` what the file says beyond
        shapes (``checkpoint.read_checkpoint``). ``ValueError`` for a model
        the family cannot run.
      ignored_keys: official keys that are read past (not in params).
      layer_prefix: official keys of layer ``i`` start ``f"{layer_prefix}.{i}."``.
      canonical_tensors: ``tensors -> tensors``: another release's key names
        (and tied weights) mapped to ``checkpoint_layout``'s before loading
        (``None``: one naming only).
      norm_in: ``(cfg, params, x [B, T, C]) -> x``: applied to the embedded
        tokens (``None``: LayerNorm ``ln0``, as RWKV).
      norm_out: ``(cfg, params, x [B, T, C]) -> x``: applied before the head
        (``None``: LayerNorm ``ln_out``, as RWKV).
    """

    version: Hashable
    name: str
    init_params: Callable[..., dict]
    init_layer_state: Callable[..., Any]
    block: Callable[..., tuple]
    targets: tuple[str, ...]
    target_shape: Callable[[Any, str], tuple[int, int]]
    read_state: Callable[..., Any]
    matmul_weights: tuple[tuple[str, ...], ...] = ()
    shape_fields: tuple[str, ...] = ("vocab_size", "d_model", "n_layer", "d_ffn")
    check_config: Callable[[Any], None] = _accepts_any
    preset: Callable[..., Any] | None = None
    checkpoint_layout: Callable[[Any], list] | None = None
    detect: Callable[[Any], bool] | None = None
    config_fields: Callable[[Mapping, Callable, dict], dict] | None = None
    ignored_keys: frozenset[str] = frozenset()
    layer_prefix: str = "blocks"
    canonical_tensors: Callable[[Mapping], dict] | None = None
    norm_in: Callable[..., Any] | None = None
    norm_out: Callable[..., Any] | None = None

    def init_state(self, cfg, batch_size: int) -> tuple:
        """A fresh state: one empty ``init_layer_state`` per layer."""
        return tuple(self.init_layer_state(cfg, batch_size) for _ in range(cfg.n_layer))


def register(family: Family) -> Family:
    """Makes ``family`` the one selected by ``RWKVConfig.version == family.version``.

    Raises:
      ValueError: another family already has that version.
    """
    if not isinstance(family, Family):
        raise TypeError(f"register takes a Family, got {type(family).__name__}")
    known = _REGISTRY.get(family.version)
    if known is not None and known is not family:
        raise ValueError(f"model version {family.version!r} is already {known.name}")
    _REGISTRY[family.version] = family
    return family


def versions() -> tuple[Hashable, ...]:
    """Every version a config may name: the built-in ones and those registered."""
    return tuple(dict.fromkeys([*_BUILTIN, *_REGISTRY]))


def family_of(version: Hashable) -> Family:
    """The family of a config version (``4``, ``7``, ``"mamba2"`` or a registered one).

    Raises:
      ValueError: no family has that version; the message reads after the
        word "version" ("must be 4 or 7 ..., got 5").
    """
    try:
        if isinstance(version, bool):  # True == 1 would otherwise pass as a version
            raise KeyError(version)
        if version not in _REGISTRY and version in _BUILTIN:
            importlib.import_module(_BUILTIN[version])
        return _REGISTRY[version]
    except (KeyError, TypeError):  # TypeError: an unhashable version
        builtin = " or ".join(map(repr, _BUILTIN))
        others = [v for v in versions() if v not in _BUILTIN]
        extra = f" (registered: {others})" if others else ""
        raise ValueError(
            f"must be {builtin} or a registered family's version{extra}, got {version!r}"
        ) from None


def families() -> tuple[Family, ...]:
    """Every family, the built-in ones loaded."""
    return tuple(family_of(v) for v in versions())


def target_shape(cfg, name: str) -> tuple[int, int]:
    """``(d_out, d_in)`` of a target path such as ``"blocks.0.ffn.key"``."""
    return family_of(cfg.version).target_shape(cfg, name.split(".", 2)[2])
