"""Devices: the data-parallel mesh, batches sharded over it, replicated state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jackpot_jax.errors import ConfigError


def make_mesh(num_devices: int | None = None) -> Mesh:
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ConfigError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ("data",))


def check_batch(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(
            f"{what}={batch_size} does not split across the {n} devices; use a "
            f"multiple of {n} (e.g. {max(n, batch_size // n * n)})"
        )


def shard_batch(mesh: Mesh, batch):
    """Global numpy batch -> arrays sharded along 'data' (this process supplies its slice)."""
    sharding = NamedSharding(mesh, P("data"))
    nproc, pid = jax.process_count(), jax.process_index()

    def put(x):
        per = x.shape[0] // nproc
        local = x[pid * per : (pid + 1) * per]
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree.map(put, batch)


def shard_local_batch(mesh: Mesh, batch):
    """This process's rows of a global batch -> arrays sharded along 'data' (the global batch
    is every process's rows, in process order)."""
    sharding = NamedSharding(mesh, P("data"))
    nproc = jax.process_count()
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, x, (x.shape[0] * nproc, *x.shape[1:])
        ),
        batch,
    )


def batch_to_mesh(mesh: Mesh, ds, keys=("image", "label")):
    """A function: a uint8 batch dict of this process's rows -> the arrays ``keys`` sharded on
    the mesh, images normalised there (float32, the dataset's mean/std)."""
    scale = (1.0 / (255.0 * np.asarray(ds.std, np.float64))).astype(np.float32)
    bias = (-np.asarray(ds.mean, np.float64) / np.asarray(ds.std, np.float64)).astype(np.float32)
    normalize = jax.jit(lambda x: x.astype(jnp.float32) * scale + bias)

    def put(batch):
        arrays = shard_local_batch(mesh, tuple(batch[k] for k in keys))
        return (normalize(arrays[0]), *arrays[1:])

    return put


def replicate(mesh: Mesh, tree):
    return jax.device_put(tree, NamedSharding(mesh, P()))
