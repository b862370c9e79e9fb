"""geniu_jax.sweep: vmapped runs equal sequential runs (tiny models, a few rounds)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geniu_jax import sweep
from geniu_jax.config import get_config
from geniu_jax.geniu import train as train_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.models import functional as F
from geniu_jax.models.allcnn import AllCNN
from geniu_jax.models.vae import VAE

SHAPE, K, B, WIDTH, LOWERING = (8, 8, 1), 4, 2, 0.0625, "native"
ROUNDS, LR = 3, 1e-3


def _init(seed: int):
  k = jax.random.split(jax.random.key(seed), 3)
  classifier = F.make_classifier(K, SHAPE, WIDTH, LOWERING, k[0])
  generator = F.make_generator(SHAPE, None, LOWERING, k[1])
  return (classifier.params, classifier.stats, generator.params,
          jax.random.normal(k[2], (K * B, *SHAPE)))


# One compiled initialiser instead of dozens of eagerly compiled initializer ops.
_init_jit = jax.jit(_init, static_argnums=0)
_GRAPHDEFS = (  # abstract models: structure only, nothing computed
    F.split(nnx.eval_shape(lambda: AllCNN(K, SHAPE[-1], WIDTH, lowering=LOWERING,
                                          rngs=nnx.Rngs(0)))).graphdef,
    F.split(nnx.eval_shape(lambda: VAE(SHAPE, lowering=LOWERING, rngs=nnx.Rngs(0)))).graphdef)


def _models(seed: int):
  cls_params, stats, gen_params, prompts = _init_jit(seed)
  return (F.SplitModel(_GRAPHDEFS[0], cls_params, stats),
          F.SplitModel(_GRAPHDEFS[1], gen_params, None), prompts)


def _close(a, b, atol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def models():
  return _models(0)


@pytest.fixture(scope="module")
def one_fn(models):
  classifier, generator, _ = models
  return unlearn_lib.make_unlearn_fn(classifier.graphdef, generator.graphdef,
                                     rounds=ROUNDS, lr=LR)


def test_unlearn_many_matches_sequential(models, one_fn):
  classifier, generator, prompts = models
  tuned, info = sweep.unlearn_many(classifier, generator, prompts, [0, 3],
                                   rounds=ROUNDS, lr=LR, chunk=1)
  assert len(tuned) == 2 and info.loss.shape == (2, ROUNDS)
  for i, k in enumerate([0, 3]):
    params, one = one_fn(classifier.params, classifier.stats, generator.params, prompts,
                         jnp.array([k], jnp.int32))
    _close(tuned[i].params, params)
    np.testing.assert_allclose(info.loss[i], one.loss, rtol=1e-5)
    assert int(info.rounds_run[i]) == ROUNDS


def test_unlearn_seeds_matches_per_model(one_fn):
  triples = [_models(s) for s in (1, 2)]
  tuned, info = sweep.unlearn_seeds([t[0] for t in triples], [t[1] for t in triples],
                                    [t[2] for t in triples], [1], rounds=ROUNDS, lr=LR)
  for (classifier, generator, prompts), got, loss in zip(triples, tuned, info.loss):
    params, one = one_fn(classifier.params, classifier.stats, generator.params, prompts,
                         jnp.array([1], jnp.int32))
    _close(got.params, params)
    np.testing.assert_allclose(loss, one.loss, rtol=1e-5)


def test_train_many_matches_train_per_seed():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(48, *SHAPE)).astype(np.float32)
  y = (np.arange(48) % K).astype(np.int32)
  cfg = get_config("smoke", width=WIDTH, lowering=LOWERING, epochs=2, batch_size=16)
  many = sweep.train_many(cfg, x, y, K, [3, 4], geniu=False, max_parallel=0, log=None)
  assert len(many) == 2 and many[0].generator is None
  assert many[0].history[0]["loss"] != many[1].history[0]["loss"]  # seeds differ
  for seed, got in [(4, many[1])]:  # one reference run keeps the test fast
    ref = train_lib.train(cfg.replace(seed=seed), x, y, K, geniu=False, log=None)
    np.testing.assert_allclose([h["loss"] for h in got.history],
                               [h["loss"] for h in ref.history], rtol=1e-5)
    # Adam normalises each coordinate, so float-rounding differences in tiny
    # gradients can move a weight by up to ~lr; compare loosely, but all of it.
    _close(got.classifier.params, ref.classifier.params, atol=5e-3)
    _close(got.classifier.stats, ref.classifier.stats, atol=1e-4)


def test_chunk_size():
  assert sweep.chunk_size(5, 100, budget=1000, fraction=1.0) == 5
  assert sweep.chunk_size(5, 400, budget=1000, fraction=1.0) == 2
  assert sweep.chunk_size(5, 4000, budget=1000) == 1
  assert sweep.chunk_size(5, 0, budget=1000) == 5


def test_stack_unstack_roundtrip(models):
  classifier = models[0]
  trees = sweep.unstack(sweep.stack([classifier.params, classifier.params]), 2)
  _close(trees[1], classifier.params, atol=0)


def test_train_step_bytes_counts_the_step():
  cfg = get_config("smoke", width=WIDTH, lowering=LOWERING, batch_size=16)
  own = sweep.train_step_bytes(cfg, SHAPE, K, 48, per_seed_data=True)
  assert own > 48 * (8 * 8 * 4 + 4)  # at least the seed's own copy of the data
