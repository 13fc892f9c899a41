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

DType = Literal["float32", "bfloat16"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _lora_dim(d_model: int, factor: float) -> int:
    """Low-rank width of an RWKV-7 data-dependent projection (BlinkDL's rule)."""
    return max(32, int(round(factor * math.sqrt(d_model) / 32) * 32))


@dataclasses.dataclass(frozen=True)
class RWKVConfig:
    """Shape and numerics of an RWKV-4 or RWKV-7 language model.

    Attributes:
      version: 4 or 7.
      vocab_size: number of token ids ``V``.
      d_model: residual width ``C``.
      n_layer: number of blocks ``L``.
      d_ffn: hidden width of the channel-mix (FFN) block.
      head_size: RWKV-7 head size ``N`` (``C = H * N``); ignored by RWKV-4.
      d_decay_lora, d_aaa_lora, d_mv_lora, d_gate_lora: RWKV-7 low-rank widths
        of the decay, in-context learning rate, value-residual and output gate
        projections; ignored by RWKV-4.
      dtype: compute dtype of activations and matmuls. Recurrent state is
        always float32.
    """

    version: int
    vocab_size: int
    d_model: int
    n_layer: int
    d_ffn: int
    head_size: int = 64
    d_decay_lora: int = 0
    d_aaa_lora: int = 0
    d_mv_lora: int = 0
    d_gate_lora: int = 0
    dtype: DType = "float32"

    def __post_init__(self):
        if self.version not in (4, 7):
            raise ValueError(f"RWKVConfig.version must be 4 or 7, got {self.version}")
        for name in ("vocab_size", "d_model", "n_layer", "d_ffn"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RWKVConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"RWKVConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}"
            )
        if self.version == 7:
            if self.head_size <= 0 or self.d_model % self.head_size:
                raise ValueError(
                    f"RWKV-7 d_model ({self.d_model}) must be a multiple of head_size "
                    f"({self.head_size})"
                )
            for name in ("d_decay_lora", "d_aaa_lora", "d_mv_lora", "d_gate_lora"):
                if getattr(self, name) <= 0:
                    raise ValueError(f"RWKV-7 config needs a positive {name}")

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
    def rwkv7(
        cls,
        *,
        vocab_size: int,
        d_model: int,
        n_layer: int,
        head_size: int = 64,
        d_ffn: int | None = None,
        dtype: DType = "float32",
    ) -> RWKVConfig:
        """An RWKV-7 config with BlinkDL's default widths (FFN 4x, LoRA ~ sqrt(C))."""
        return cls(
            version=7,
            vocab_size=vocab_size,
            d_model=d_model,
            n_layer=n_layer,
            d_ffn=d_ffn or 4 * d_model,
            head_size=head_size,
            d_decay_lora=_lora_dim(d_model, 2.5),
            d_aaa_lora=_lora_dim(d_model, 2.5),
            d_mv_lora=_lora_dim(d_model, 1.7),
            d_gate_lora=_lora_dim(d_model, 5.0),
            dtype=dtype,
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
    ) -> RWKVConfig:
        """An RWKV-4 config with the standard 4x FFN."""
        return cls(
            version=4,
            vocab_size=vocab_size,
            d_model=d_model,
            n_layer=n_layer,
            d_ffn=d_ffn or 4 * d_model,
            dtype=dtype,
        )
