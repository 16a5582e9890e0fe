"""Data parallelism over a 1-D device mesh: state replicated, batches split on the "data" axis.

The same code runs on one CPU, several GPUs or a TPU slice. Under `jax.jit` the batch-norm
statistics and the loss means are computed over the global batch, so the result does not depend
on the number of devices (up to float reassociation).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A mesh over the first `num_devices` local devices (0: all of them)."""
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(f"run.num_devices={num_devices}, but {len(devices)} device(s) are visible "
                         f"({devices[0].platform}); use 0 for all")
    chosen = devices[: num_devices or len(devices)]
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"{what}={batch_size} is not divisible by the {mesh.size} devices of the "
                         "mesh; choose a multiple or set run.num_devices")


def replicate(tree, mesh: Mesh):
    """Places every array of `tree` on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Splits the leading (batch) axis of every array across the mesh."""
    return jax.device_put(batch, batch_sharded(mesh))
