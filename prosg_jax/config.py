"""Frozen, typed configuration dataclasses and presets.

Experiment configs (``configs/*.py``) are ``ml_collections.ConfigDict``s that
can be overridden from the command line; they are turned into these frozen
dataclasses exactly once, so that the model code sees hashable, immutable
values that can be used as static arguments under ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax.numpy as jnp
import numpy as np

DType = Literal["float32", "bfloat16"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Implementations of the time recurrence (``prosg_jax.models.wkv``).
WKV_IMPLS = ("auto", "scan", "chunked")


def _lora_dim(d_model: int, factor: float) -> int:
    """Low-rank width of an RWKV-7 data-dependent projection (BlinkDL's rule)."""
    return max(32, int(round(factor * math.sqrt(d_model) / 32) * 32))


def _family(version):
    # The registry lives with the models, which import this module; configs
    # resolve it only when they are built, after every module has loaded.
    from prosg_jax.models.family import family_of

    return family_of(version)


@dataclasses.dataclass(frozen=True)
class RWKVConfig:
    """Shape and numerics of a recurrent language model: RWKV-4, RWKV-7 or a
    registered family (``prosg_jax.models.family``).

    Attributes:
      version: the model family: 4 or 7 (RWKV), or a registered family's
        version.
      vocab_size: number of token ids ``V``.
      d_model: residual width ``C``.
      n_layer: number of blocks ``L``.
      d_ffn: hidden width of the channel-mix (FFN) block; Mamba-2's inner
        width (``expand * d_model``).
      head_size: RWKV-7 head size ``N`` (``C = H * N``); Mamba-2's head
        dimension ``P`` (``d_ffn = H * P``); ignored by RWKV-4.
      d_decay_lora, d_aaa_lora, d_mv_lora, d_gate_lora: RWKV-7 low-rank widths
        of the decay, in-context learning rate, value-residual and output gate
        projections; ignored by RWKV-4.
      d_state, n_groups, d_conv: Mamba-2's state size ``N``, number of B/C
        groups ``G`` and convolution width ``K``; RWKV models refuse any but
        the defaults (0, 1, 4).
      dtype: compute dtype of activations and matmuls. Recurrent state is
        always float32.
      wkv_impl: how the time recurrence runs (``prosg_jax.models.wkv``):
        ``"scan"`` token by token, ``"chunked"`` chunk-parallel, or ``"auto"``
        (the faster of the two on this backend; a single token always runs the
        per-token body). A runtime choice, not part of a checkpoint; every
        choice gives the same results to float32 rounding.
    """

    version: int | str
    vocab_size: int
    d_model: int
    n_layer: int
    d_ffn: int
    head_size: int = 64
    d_decay_lora: int = 0
    d_aaa_lora: int = 0
    d_mv_lora: int = 0
    d_gate_lora: int = 0
    d_state: int = 0
    n_groups: int = 1
    d_conv: int = 4
    dtype: DType = "float32"
    wkv_impl: str = "auto"

    def __post_init__(self):
        try:
            family = _family(self.version)
        except ValueError as e:
            raise ValueError(f"RWKVConfig.version {e}") from None
        for name in ("vocab_size", "d_model", "n_layer", "d_ffn", "head_size"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"RWKVConfig.{name} must be a positive int, got {value!r}")
        for name in ("n_groups", "d_conv"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"RWKVConfig.{name} must be a positive int, got {value!r}")
        for name in ("d_decay_lora", "d_aaa_lora", "d_mv_lora", "d_gate_lora", "d_state"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"RWKVConfig.{name} must be an int >= 0, got {value!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"RWKVConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}"
            )
        if self.wkv_impl not in WKV_IMPLS:
            raise ValueError(
                f"RWKVConfig.wkv_impl must be one of {WKV_IMPLS}, got {self.wkv_impl!r}"
            )
        family.check_config(self)

    @property
    def n_head(self) -> int:
        """Number of RWKV-7 heads ``H``."""
        return self.d_model // self.head_size

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The jnp dtype of activations."""
        return _DTYPES[self.dtype]

    def replace(self, **changes) -> RWKVConfig:
        """Returns a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d) -> RWKVConfig:
        """The one way to build a model config from a mapping: an experiment
        config's ``model`` section or a run record's ``model`` object.

        Keys: ``version`` (the family: 4, 7 or a registered one), ``vocab_size``,
        ``d_model``, ``n_layer``, optional ``d_ffn``, ``head_size`` (RWKV-7), the
        RWKV-7 LoRA widths, ``dtype`` and ``wkv_impl``. The family's preset fills
        the widths not given; a ``None`` or zero ``d_ffn`` counts as not given.
        """
        d = {k: v for k, v in dict(d).items() if v is not None}
        if not d.get("d_ffn"):
            d.pop("d_ffn", None)
        try:
            family = _family(d.pop("version", None))
        except ValueError as e:
            raise ValueError(f"config.model.version {e}") from None
        if family.preset is None:
            return cls(version=family.version, **d)
        return family.preset(**d)

    @classmethod
    def rwkv7(
        cls,
        *,
        vocab_size: int,
        d_model: int,
        n_layer: int,
        head_size: int = 64,
        d_ffn: int | None = None,
        d_decay_lora: int | None = None,
        d_aaa_lora: int | None = None,
        d_mv_lora: int | None = None,
        d_gate_lora: int | None = None,
        dtype: DType = "float32",
        wkv_impl: str = "auto",
    ) -> RWKVConfig:
        """An RWKV-7 config; the widths not given are BlinkDL's defaults (FFN 4x,
        LoRA ~ sqrt(C))."""
        return cls(
            version=7,
            vocab_size=vocab_size,
            d_model=d_model,
            n_layer=n_layer,
            d_ffn=d_ffn or 4 * d_model,
            head_size=head_size,
            d_decay_lora=_lora_dim(d_model, 2.5) if d_decay_lora is None else d_decay_lora,
            d_aaa_lora=_lora_dim(d_model, 2.5) if d_aaa_lora is None else d_aaa_lora,
            d_mv_lora=_lora_dim(d_model, 1.7) if d_mv_lora is None else d_mv_lora,
            d_gate_lora=_lora_dim(d_model, 5.0) if d_gate_lora is None else d_gate_lora,
            dtype=dtype,
            wkv_impl=wkv_impl,
        )

    @classmethod
    def rwkv4(
        cls,
        *,
        vocab_size: int,
        d_model: int,
        n_layer: int,
        d_ffn: int | None = None,
        dtype: DType = "float32",
        wkv_impl: str = "auto",
    ) -> RWKVConfig:
        """An RWKV-4 config with the standard 4x FFN."""
        return cls(
            version=4,
            vocab_size=vocab_size,
            d_model=d_model,
            n_layer=n_layer,
            d_ffn=d_ffn or 4 * d_model,
            dtype=dtype,
            wkv_impl=wkv_impl,
        )


METHODS = ("none", "prosg", "true_grad", "repeat_prompt")
POOLINGS = ("query", "sketch", "power")


def is_int(x) -> bool:
    """An int (Python or numpy), not a bool."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


@dataclasses.dataclass(frozen=True)
class ProSGConfig:
    """How a prompt becomes per-example weight deltas (one flag per ablation).

    Attributes:
      method: ``"none"`` (base model), ``"prosg"`` (synthetic gradients),
        ``"true_grad"`` (test-time training: real gradient steps on the prompt's
        own next-token loss, truncated to rank r) or ``"repeat_prompt"`` (the
        prompt is read twice; no deltas).
      rank: rank ``r`` of every delta.
      matrices: target matrix names within a block, a tuple such as
        ``("att.value",)`` (a bare string is refused).
      layers: target layer indices; ``None`` means every layer.
      sg_hidden: hidden width of the SG module's δ̂ predictor.
      key_dim: width of the pooling keys κ(h_t) (``"query"`` pooling).
      pooling: ``"query"`` (r learned queries softmax-pool the positions),
        ``"sketch"`` (Gaussian sketch of the position axis, unbiased for
        Σ δ̂ xᵀ) or ``"power"`` (best rank-r truncation of Σ δ̂ xᵀ by power
        iterations on the factored form).
      power_iters: subspace iterations for ``"power"`` and ``true_grad``.
      sketch_seed: seed of the fixed sketch / power-iteration start matrices.
      true_grad_steps: gradient steps ``k`` of ``true_grad``.
      true_grad_lr: learning rate ``η`` of ``true_grad`` (finite).
      sg_match_weight: weight of the synthetic-gradient matching loss (0: off).
      sg_match_lr: step size that turns the true continuation gradient into the
        update ``-η G`` the SG deltas are pulled toward (finite).
      distill_weight: ``λ`` in ``[0, 1]``: the continuation loss becomes
        ``(1 - λ) CE + λ KL(teacher ‖ model)`` on the scored tokens, the
        teacher being the base without deltas continuing from the prompt's
        own state (0: the LM loss alone; 1: distillation alone).
      train_base: whether the continuation loss also trains the base model.
      sg_lookahead: whether ``δ̂_t`` also sees the next prompt position's hidden
        ``h_{t+1}``. A true gradient's error at ``t`` depends on the token
        that follows ``t``; the whole prompt is known when the deltas are
        derived, so the SG module may read it too.
      segment_len: ``prosg`` only: when > 0, each prompt is cut into segments
        of this many tokens, each segment's deltas are derived from the
        segment alone (a fresh state) and the deltas are summed — what a
        :class:`~prosg_jax.Session` remembers when each segment is a turn, so
        training with it trains the SG module for sessions. 0: one derivation
        from the whole prompt.
    """

    method: str = "prosg"
    rank: int = 8
    matrices: tuple[str, ...] = ("att.value", "att.output", "ffn.value")
    layers: tuple[int, ...] | None = None
    sg_hidden: int = 64
    key_dim: int = 32
    pooling: str = "query"
    power_iters: int = 2
    sketch_seed: int = 0
    true_grad_steps: int = 1
    true_grad_lr: float = 1.0
    sg_match_weight: float = 0.0
    sg_match_lr: float = 1.0
    distill_weight: float = 0.0
    train_base: bool = False
    sg_lookahead: bool = False
    segment_len: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"ProSGConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"ProSGConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("rank", "sg_hidden", "key_dim", "power_iters", "true_grad_steps"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"ProSGConfig.{name} must be a positive int, got {value!r}")
        if not is_int(self.segment_len) or self.segment_len < 0:
            raise ValueError(
                f"ProSGConfig.segment_len must be an int >= 0, got {self.segment_len!r}"
            )
        if not is_int(self.sketch_seed):
            raise ValueError(f"ProSGConfig.sketch_seed must be an int, got {self.sketch_seed!r}")
        for name in ("true_grad_lr", "sg_match_weight", "sg_match_lr", "distill_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float | np.number) or not math.isfinite(value):
                raise ValueError(f"ProSGConfig.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.sg_match_weight < 0:
            raise ValueError(
                f"ProSGConfig.sg_match_weight must be >= 0, got {self.sg_match_weight}"
            )
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(
                f"ProSGConfig.distill_weight must be in [0, 1], got {self.distill_weight}"
            )
        for name in ("train_base", "sg_lookahead"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ProSGConfig.{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "matrices", _name_tuple(self.matrices))
        if self.layers is not None:
            object.__setattr__(self, "layers", _layer_tuple(self.layers))

    def replace(self, **changes) -> ProSGConfig:
        """Returns a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d) -> ProSGConfig:
        """The one way to build a ProSG config from a mapping: an experiment
        config's ``prosg`` section or a run record's ``prosg`` object.

        ``matrices`` may be a comma-separated string or a list; ``layers`` a
        comma-separated string, a list, or empty / ``None`` for every layer.
        """
        d = dict(d)
        if "matrices" in d:
            m = d["matrices"]
            d["matrices"] = _split(m) if isinstance(m, str) else tuple(m)
        layers = d.get("layers")
        if isinstance(layers, str):
            try:
                layers = tuple(int(s) for s in _split(layers))
            except ValueError:
                raise ValueError(
                    f"ProSGConfig.layers must be comma-separated integers, got {layers!r}"
                ) from None
        d["layers"] = tuple(layers) if layers else None
        return cls(**d)

    def targets(self, model: RWKVConfig) -> tuple[str, ...]:
        """The target paths (``"blocks.i.att.value"``) this config selects in ``model``.

        Raises:
          ValueError: a matrix the model does not have, or a layer out of range.
        """
        family = _family(model.version)
        bad = [m for m in self.matrices if m not in family.targets]
        if bad:
            raise ValueError(
                f"{family.name} has no target matrix {bad}; choose from {family.targets}"
            )
        layers = range(model.n_layer) if self.layers is None else self.layers
        out_of_range = [i for i in layers if not 0 <= i < model.n_layer]
        if out_of_range:
            raise ValueError(f"target layers {out_of_range} outside [0, {model.n_layer})")
        return tuple(f"blocks.{i}.{m}" for i in layers for m in self.matrices)


def method_config(prosg_cfg: ProSGConfig | None, method: str | None) -> ProSGConfig:
    """The config that runs ``method`` at inference: ``prosg_cfg`` with its method
    overridden (``None``: keep it) and the training-only fields off.

    Without a ``prosg_cfg`` the method's defaults apply; with neither, the plain
    model (``"none"``).
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be None or one of {METHODS}, got {method!r}")
    if prosg_cfg is None:
        prosg_cfg = ProSGConfig(method="none" if method is None else method)
    return prosg_cfg.replace(
        method=prosg_cfg.method if method is None else method,
        sg_match_weight=0.0,
        distill_weight=0.0,
        train_base=False,
    )


def _split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _name_tuple(matrices) -> tuple[str, ...]:
    # A bare string would otherwise be iterated character by character.
    if isinstance(matrices, str) or not isinstance(matrices, tuple | list):
        raise ValueError(
            f"ProSGConfig.matrices must be a tuple of names such as ('att.value',), "
            f"got {matrices!r}"
        )
    if not matrices or not all(isinstance(m, str) for m in matrices):
        raise ValueError(
            f"ProSGConfig.matrices must name at least one target matrix, got {matrices!r}"
        )
    if len(set(matrices)) != len(matrices):
        raise ValueError(f"ProSGConfig.matrices names a matrix twice: {matrices!r}")
    return tuple(matrices)


def _layer_tuple(layers) -> tuple[int, ...]:
    if not isinstance(layers, tuple | list) or not all(is_int(i) for i in layers):
        raise ValueError(
            f"ProSGConfig.layers must be None or a tuple of layer indices, got {layers!r}"
        )
    if not layers:
        raise ValueError("ProSGConfig.layers must name at least one layer (None: all)")
    if len(set(layers)) != len(layers):
        raise ValueError(f"ProSGConfig.layers names a layer twice: {layers!r}")
    return tuple(int(i) for i in layers)
