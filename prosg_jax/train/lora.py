"""A low-rank adapter on a frozen base: the joint stage's parameter-efficient middle.

With ``config.train.lora_rank = r > 0`` the joint stage keeps the base's
weights fixed and trains, with the SG module, ``W' = W + A Bᵀ`` on each of the
ProSG target matrices (``A`` ``[O, r]`` starts at 0, so the stage starts from
the base exactly). The exported ``base.safetensors`` holds the merged
``W'``, so evaluation, generation and sessions read it like any base.

Axis legend: ``O`` d_out, ``I`` d_in, ``R`` rank.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from prosg_jax.config import RWKVConfig
from prosg_jax.lowrank import LowRankDelta
from prosg_jax.lowrank import merge as merge_deltas
from prosg_jax.models.family import target_shape


def init(key: jax.Array, model_cfg: RWKVConfig, names: tuple[str, ...], rank: int) -> dict:
    """``{target: {"a": [O, R] zeros, "b": [I, R] ~ N(0, 1/I)}}`` for each target matrix."""
    lora = {}
    for i, name in enumerate(names):
        d_out, d_in = target_shape(model_cfg, name)
        b = jax.random.normal(jax.random.fold_in(key, i), (d_in, rank)) / math.sqrt(d_in)
        lora[name] = {"a": jnp.zeros((d_out, rank)), "b": b}
    return lora


def merge(base: dict, lora: dict) -> dict:
    """A copy of ``base`` with ``A Bᵀ`` added to each adapted weight (traceable)."""
    deltas = {
        name: LowRankDelta(u=f["a"][None], v=f["b"][None], scale=jnp.ones(()))
        for name, f in lora.items()
    }
    return merge_deltas(base, deltas, 0)


def count(tree: dict) -> int:
    """Parameters in a tree (an adapter, a base)."""
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def describe(model_cfg: RWKVConfig, names: tuple[str, ...], rank: int, base: dict) -> dict:
    """``{"rank", "parameters", "base_parameters"}`` of a rank-``rank`` adapter on ``names``."""
    size = sum(rank * sum(target_shape(model_cfg, n)) for n in names)
    return {"rank": rank, "parameters": size, "base_parameters": count(base)}
