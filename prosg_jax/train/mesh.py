"""Device mesh with ``data`` and ``fsdp`` axes, and where every array lives on it.

Batches are split along their first axis over both axes (``data`` × ``fsdp``
devices each hold a slice of the batch). Parameters and optimizer state are
replicated over ``data`` and, for FSDP, each leaf's largest axis divisible by
the ``fsdp`` size is sharded over ``fsdp`` (leaves with no such axis stay
replicated). The rule depends on shapes only, so Adam's moments land exactly
where their parameters do.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from prosg_jax.errors import UserError

AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ``data × fsdp`` mesh over all devices; one of the two may be -1 (the rest)."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise UserError("config.mesh: at most one of data and fsdp may be -1")
    if data == -1:
        data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
    elif fsdp == -1:
        fsdp = n // data if data > 0 and n % data == 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise UserError(
            f"config.mesh: data={data} x fsdp={fsdp} does not cover the {n} available devices"
        )
    return Mesh(np.asarray(devices).reshape(data, fsdp), AXES)


def batch_size_per_step(mesh: Mesh) -> int:
    """The number of devices a batch is split over."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def leaf_sharding(mesh: Mesh, shape) -> NamedSharding:
    """FSDP rule: shard the largest axis divisible by the ``fsdp`` size; else replicate."""
    n = mesh.shape["fsdp"]
    spec = [None] * len(shape)
    if n > 1:
        axes = sorted(
            (a for a in range(len(shape)) if shape[a] % n == 0), key=lambda a: (-shape[a], a)
        )
        if axes:
            spec[axes[0]] = "fsdp"
    return NamedSharding(mesh, P(*spec))


def tree_shardings(mesh: Mesh, tree):
    """The :func:`leaf_sharding` of every array leaf of ``tree`` (shapes or arrays)."""
    return jax.tree.map(lambda x: leaf_sharding(mesh, np.shape(x)), tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """First axis split over every device of the mesh."""
    return NamedSharding(mesh, P(AXES))


def put_batch(mesh: Mesh, local: dict) -> dict:
    """Global arrays from this process' rows of a batch (any number of processes)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def put_tree(mesh: Mesh, tree):
    """Places a host pytree on the mesh with the FSDP rule."""
    return jax.device_put(tree, tree_shardings(mesh, tree))


def to_host(tree):
    """A numpy copy of a (possibly sharded, possibly multi-host) pytree on every process.

    An array spread over several processes' devices is gathered into its
    global value; one this process holds whole (e.g. computed on its default
    device) is copied as it is, not stacked with the other processes' copies.
    """
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)
