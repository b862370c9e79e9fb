"""Pure functions over pytrees for the NNX models: split once, merge inside jit.

A model is split into (graphdef, params, stats): `params` are what optimizers
update, `stats` are BatchNorm running averages (empty for the VAE). Every jitted
step in the library takes these pytrees, never a stateful module, so users can
compose the steps in their own `jit`/`vmap`/`scan` code.
"""

from __future__ import annotations

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


def _jitted_init(build, key: jax.Array) -> SplitModel:
  """`split(build(key))`, initialised by ONE compiled program.

  Eager NNX initialisation dispatches (and on CPU compiles) every init op on
  its own: ~10 s for an AllCNN on a 2-core CPU, in every process. The graph
  definition comes from an abstract (shape-only) build.
  """
  graphdef = split(nnx.eval_shape(lambda: build(jax.random.key(0)))).graphdef

  @jax.jit
  def init(key):
    model = split(build(key))
    return model.params, model.stats

  params, stats = init(key)
  return SplitModel(graphdef, params, stats)


def _allcnn_builder(num_classes: int, image_shape, width: float, lowering: str,
                    precision: str):
  dtype = None if precision == "float32" else jnp.dtype(precision)
  return lambda k: AllCNN(num_classes, image_shape[-1], width, lowering=lowering, dtype=dtype,
                          rngs=nnx.Rngs(params=k))


def make_classifier(num_classes: int, image_shape, width: float, lowering: str,
                    key: jax.Array, precision: str = "float32") -> SplitModel:
  """An initialised AllCNN; `precision` is its compute dtype (`Config.precision`)."""
  return _jitted_init(_allcnn_builder(num_classes, image_shape, width, lowering, precision),
                      key)


def classifier_graphdef(num_classes: int, image_shape, width: float, lowering: str,
                        precision: str = "float32"):
  """The graph definition of `make_classifier(...)` alone (nothing is initialised):
  with it, a classifier's parameters run in another precision or lowering."""
  build = _allcnn_builder(num_classes, image_shape, width, lowering, precision)
  return split(nnx.eval_shape(lambda: build(jax.random.key(0)))).graphdef


def make_generator(image_shape, latent_dim: int | None, lowering: str,
                   key: jax.Array) -> SplitModel:
  return _jitted_init(lambda k: VAE(tuple(image_shape), latent_dim, lowering=lowering,
                                    rngs=nnx.Rngs(params=k)), key)


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
  """(logits, activations after every block) in eval mode."""
  model = nnx.merge(graphdef, params, stats, copy=True)
  acts = model.features(x, train)
  logits = model.head(acts[-1].mean(axis=(1, 2)))
  return logits, acts


def generator_apply(graphdef, params: Params, z: jax.Array, key: jax.Array | None = None):
  """(x', mu, logvar) for a batch of prompts; deterministic (x' from mu) without `key`."""
  return nnx.merge(graphdef, params)(z, key)
