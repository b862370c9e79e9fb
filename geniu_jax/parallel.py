"""Data-parallel training over several devices with `jax.sharding`.

One `Mesh` with a single axis, `data`, over the devices; the classifier's
parameters, optimizer state and the training set are replicated, and each
batch is split along that axis. The code of the step is the one-device step
(`geniu_jax.geniu.train.make_train_step`): XLA's SPMD partitioner turns the
batch-sharded forward/backward into per-device work plus one all-reduce of the
gradients (and of the BatchNorm batch moments, which are therefore those of the
whole batch). So a data-parallel run computes the same function as a
one-device run; results agree up to the order of float32 sums.

Usage, one host::

    from geniu_jax import parallel
    from geniu_jax.geniu import train as train_lib
    result = train_lib.train(cfg, x, y, num_classes, mesh=parallel.make_mesh())

The mesh is built by the caller (e.g. in `main`) and passed down: a train
step built with it shards its batch over it; one built without it is the
one-device step. This module knows nothing of the code that uses it.

Several hosts: call `jax.distributed.initialize()` first in every process; the
mesh then spans `jax.devices()` (all hosts). Every process must pass the same
training arrays and the same config (hence the same shuffling), as they are
treated as replicated values.

Testing without several accelerators: start Python with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (before jax is imported)
to get four CPU devices.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None, axis: str = BATCH_AXIS) -> Mesh:
  """A one-axis mesh over `devices` (default: every device of every host).

  The axis is `Auto` (not `Explicit`): shardings are left to XLA's
  propagation from the one constraint on the batch, so the one-device code
  runs unchanged.
  """
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.array(devices), (axis,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, axis: str = BATCH_AXIS) -> NamedSharding:
  """Leading (batch) axis split over the mesh axis, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(axis))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every leaf of `tree` on every device of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(x: jax.Array, mesh: Mesh | None) -> jax.Array:
  """Inside a jitted step: constrain a batch to be split over `mesh`.

  A no-op without a mesh, so the one-device step compiles exactly as before.
  """
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, batch_sharded(mesh))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """The mesh needs a `data` axis and the batch must split evenly over it
  (else XLA would pad and one device would idle)."""
  if BATCH_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no {BATCH_AXIS!r} axis")
  n = mesh.shape[BATCH_AXIS]
  if batch_size % n:
    raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices of "
                     f"the mesh axis {BATCH_AXIS!r}")
