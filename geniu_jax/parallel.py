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
    result = parallel.train(cfg, x, y, num_classes)          # all local devices

or, around any code that builds a train step::

    with parallel.data_parallel(parallel.make_mesh()):
        result = train_lib.train(cfg, *parallel.replicate((x, y)), num_classes)

Several hosts: call `jax.distributed.initialize()` first in every process; the
mesh then spans `jax.devices()` (all hosts). Every process must pass the same
training arrays and the same config (hence the same shuffling), as they are
treated as replicated values.

Testing without several accelerators: start Python with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (before jax is imported)
to get four CPU devices.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "data"

# The mesh a train step built inside `data_parallel(...)` shards its batch over.
_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    "geniu_jax_data_parallel_mesh", default=None)


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


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
  """Puts every leaf of `tree` on every device of `mesh` (default: the active one)."""
  mesh = mesh or active_mesh()
  if mesh is None:
    raise ValueError("replicate needs a mesh (or an active data_parallel context)")
  return jax.device_put(tree, replicated(mesh))


def active_mesh() -> Mesh | None:
  """The mesh of the innermost `data_parallel` context, or None."""
  return _ACTIVE_MESH.get()


@contextlib.contextmanager
def data_parallel(mesh: Mesh) -> Iterator[Mesh]:
  """Train steps traced inside this context shard their batch over `mesh`.

  The context also makes `mesh` JAX's current mesh (`jax.set_mesh`), so every
  array created inside it (parameters, optimizer state, prompts) starts out
  replicated on the mesh. Without that, the first call of each jitted step
  would see single-device inputs and return mesh-replicated outputs, and the
  second call would compile the whole step again for the new input shardings.
  """
  if BATCH_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no {BATCH_AXIS!r} axis")
  token = _ACTIVE_MESH.set(mesh)
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _ACTIVE_MESH.reset(token)


def shard_batch(x: jax.Array) -> jax.Array:
  """Inside a jitted step: constrain a batch to be split over the active mesh.

  A no-op without an active `data_parallel` context, so the one-device path
  compiles exactly as before.
  """
  mesh = active_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, batch_sharded(mesh))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """The batch must split evenly, else XLA would pad and one device would idle."""
  n = mesh.shape[BATCH_AXIS]
  if batch_size % n:
    raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices of "
                     f"the mesh axis {BATCH_AXIS!r}")


def train(cfg, x_train, y_train, num_classes: int, *, mesh: Mesh | None = None,
          geniu: bool = True, recorder=None,
          log: Callable[[str], None] | None = print):
  """Alg. 1 (`geniu_jax.geniu.train.train`) with each batch split over `mesh`.

  Args:
    cfg: run configuration; `cfg.batch_size` must divide by the device count.
    x_train, y_train: the training split (host arrays), replicated on every device.
    num_classes: K.
    mesh: a mesh with a `data` axis; default `make_mesh()` (every device).
    geniu, recorder, log: as `geniu_jax.geniu.train.train`.

  Returns:
    The `TrainResult` of `geniu_jax.geniu.train.train` (arrays replicated).
  """
  from geniu_jax.geniu import train as train_lib  # train imports this module

  mesh = mesh or make_mesh()
  check_batch_size(min(cfg.batch_size, len(y_train)), mesh)
  # Replicated once here: the step gathers each batch from these on-device
  # copies, so no training data crosses the host boundary after this line.
  x_all = replicate(np.asarray(x_train, np.float32), mesh)
  y_all = replicate(np.asarray(y_train, np.int32), mesh)
  with data_parallel(mesh):
    return train_lib.train(cfg, x_all, y_all, num_classes, geniu=geniu,
                           recorder=recorder, log=log)
