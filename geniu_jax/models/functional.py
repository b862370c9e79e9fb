"""Pure functions over pytrees for the NNX models: split once, merge inside jit.

A model is split into (graphdef, params, stats): `params` are what optimizers
update, `stats` are BatchNorm running averages (empty for the VAE). Every jitted
step in the library takes these pytrees, never a stateful module, so users can
compose the steps in their own `jit`/`vmap`/`scan` code.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from geniu_jax.models.allcnn import AllCNN
from geniu_jax.models.vae import VAE

Params = Any  # nnx.State of nnx.Param leaves
Stats = Any   # nnx.State of nnx.BatchStat leaves


class SplitModel(NamedTuple):
  graphdef: Any
  params: Params
  stats: Stats


def split(model: nnx.Module) -> SplitModel:
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return SplitModel(graphdef, params, stats)


@functools.lru_cache(maxsize=16)
def init_program(module_cls, args: tuple, kwargs: tuple):
  """(graphdef, jitted `key_data -> (params, stats)`) of
  `module_cls(*args, rngs=nnx.Rngs(params=key), **dict(kwargs))`, cached by
  the class and its (hashable) arguments.

  Eager NNX initialisation dispatches (and on CPU compiles) every init op on
  its own: seconds for an AllCNN on a CPU, in every process. One
  compiled program does it all; the graph definition comes from an abstract
  (shape-only) build.
  """
  def build(key):
    return module_cls(*args, rngs=nnx.Rngs(params=key), **dict(kwargs))

  graphdef = split(nnx.eval_shape(lambda: build(jax.random.key(0)))).graphdef
  init = jax.jit(lambda kd: tuple(split(build(jax.random.wrap_key_data(kd))))[1:])
  return graphdef, init


def init_split(module_cls, *args, key: jax.Array | None, run=None, **kwargs) -> SplitModel:
  """`split(module_cls(*args, rngs=nnx.Rngs(params=key), **kwargs))` through
  `init_program`; `run(init, key_data)` runs the program (default: call it),
  e.g. a `methods.common.Stopwatch.run` that times its compilation apart.

  `key=None` initialises nothing: the states hold `jax.ShapeDtypeStruct`
  leaves, for a model about to be filled from a checkpoint (a restore then
  neither compiles nor runs the init program)."""
  graphdef, init = init_program(module_cls, tuple(args), tuple(sorted(kwargs.items())))
  if key is None:
    params, stats = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
    return SplitModel(graphdef, params, stats)
  key_data = jax.random.key_data(key)
  params, stats = init(key_data) if run is None else run(init, key_data)
  return SplitModel(graphdef, params, stats)


def _dtype(precision: str):
  return None if precision == "float32" else jnp.dtype(precision)


def make_classifier(num_classes: int, image_shape, width: float, lowering: str,
                    key: jax.Array | None, precision: str = "float32") -> SplitModel:
  """An initialised AllCNN (shapes only for `key=None`, see `init_split`);
  `precision` is its compute dtype (`Config.precision`)."""
  return init_split(AllCNN, num_classes, image_shape[-1], width, key=key, lowering=lowering,
                    dtype=_dtype(precision))


def classifier_graphdef(num_classes: int, image_shape, width: float, lowering: str,
                        precision: str = "float32"):
  """The graph definition of `make_classifier(...)` alone (nothing is initialised):
  with it, a classifier's parameters run in another precision or lowering."""
  return init_program(AllCNN, (num_classes, image_shape[-1], width),
                      tuple(sorted({"lowering": lowering,
                                    "dtype": _dtype(precision)}.items())))[0]


def make_generator(image_shape, latent_dim: int | None, lowering: str,
                   key: jax.Array | None) -> SplitModel:
  """An initialised VAE (shapes only for `key=None`, see `init_split`)."""
  return init_split(VAE, tuple(image_shape), latent_dim, key=key, lowering=lowering)


def classifier_apply(graphdef, params: Params, stats: Stats, x: jax.Array,
                     train: bool = False) -> tuple[jax.Array, Stats]:
  """Logits for a batch; in train mode also the updated BatchNorm statistics."""
  model = nnx.merge(graphdef, params, stats, copy=True)
  logits = model(x, train=train)
  if not train:
    return logits, stats
  return logits, nnx.state(model, nnx.BatchStat)


def classifier_logits(graphdef, params: Params, stats: Stats, x: jax.Array) -> jax.Array:
  """Eval-mode logits (stored BatchNorm statistics)."""
  return classifier_apply(graphdef, params, stats, x, train=False)[0]


def classifier_features(graphdef, params: Params, stats: Stats, x: jax.Array,
                        train: bool = False) -> tuple[jax.Array, list[jax.Array]]:
  """(float32 logits, activations after every block); eval mode unless `train`
  (whose updated BatchNorm statistics are dropped: callers that keep them use
  the module directly, as GKT's student does)."""
  model = nnx.merge(graphdef, params, stats, copy=True)
  acts = model.features(x, train)
  return model.logits(acts[-1]), acts


def generator_apply(graphdef, params: Params, z: jax.Array, key: jax.Array | None = None):
  """(x', mu, logvar) for a batch of prompts; deterministic (x' from mu) without `key`."""
  return nnx.merge(graphdef, params)(z, key)
