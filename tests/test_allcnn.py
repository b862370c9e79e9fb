"""The AllCNN classifier: `geniu_jax/models/allcnn.py`.

Logit shapes and dtypes, BatchNorm in train and eval mode (PyTorch's momentum
0.1), eval logits independent of the batch, and the block layout (channels
scaled by `width`, two stride-2 blocks) from abstract builds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geniu_jax.models import allcnn
from geniu_jax.models import functional as F
from geniu_jax.models.allcnn import AllCNN

from conftest import pure_leaves

SHAPES = [(28, 28, 1), (32, 32, 3)]
WIDTH = 0.0625

# Whole forward passes are jitted: one compile is much cheaper on CPU than
# compiling every primitive of an eager pass.
_apply = jax.jit(F.classifier_apply, static_argnums=(0, 4))
_logits = jax.jit(F.classifier_logits, static_argnums=0)


def _images(shape, n=3, seed=0):
  # numpy randomness: jax.random would compile a sampler for every new shape.
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, *shape)), jnp.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_allcnn_logits_and_batchnorm_stats(shape):
  cls = F.make_classifier(10, shape, WIDTH, "native", jax.random.key(0))
  x = _images(shape)
  stats0 = pure_leaves(cls.stats)
  params0 = pure_leaves(cls.params)

  logits_eval, stats_eval = _apply(cls.graphdef, cls.params, cls.stats, x, False)
  logits_train, stats_train = _apply(cls.graphdef, cls.params, cls.stats, x, True)
  for logits in (logits_eval, logits_train):
    assert logits.shape == (3, 10)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
  # Train mode normalises with batch statistics, eval mode with the stored ones.
  assert not np.allclose(logits_eval, logits_train)

  # Eval mode: the stored statistics come back untouched.
  assert pure_leaves(stats_eval).keys() == stats0.keys()
  for k, v in pure_leaves(stats_eval).items():
    assert np.array_equal(v, stats0[k]), k
  # Train mode: every running mean and variance moves; the inputs do not.
  new = pure_leaves(stats_train)
  assert new.keys() == stats0.keys() and len(new) == 16  # 8 blocks x (mean, var)
  for k, v in new.items():
    assert v.shape == stats0[k].shape
    assert not np.array_equal(v, stats0[k]), f"{k} not updated in train mode"
  for k, v in pure_leaves(cls.stats).items():
    assert np.array_equal(v, stats0[k]), f"{k} of the input stats was mutated"
  for k, v in pure_leaves(cls.params).items():
    assert np.array_equal(v, params0[k]), f"{k} of the params was mutated"

  # The train-mode update is PyTorch's momentum 0.1 EMA of the batch statistics.
  model = nnx.merge(cls.graphdef, cls.params, cls.stats, copy=True)
  first = model.blocks[0]
  pre = first.conv(x)
  expected_mean = 0.1 * np.asarray(pre.mean(axis=(0, 1, 2)))
  got_mean = new["['blocks'][0]['norm']['mean']"]
  np.testing.assert_allclose(got_mean, expected_mean, rtol=1e-4, atol=1e-6)


def test_allcnn_eval_logits_do_not_depend_on_the_batch():
  cls = F.make_classifier(10, (28, 28, 1), WIDTH, "native", jax.random.key(1))
  x = _images((28, 28, 1), n=4, seed=1)
  full = _logits(cls.graphdef, cls.params, cls.stats, x)
  single = _logits(cls.graphdef, cls.params, cls.stats, x[1:2])
  np.testing.assert_allclose(full[1:2], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels,width,want", [(96, 1.0, 96), (96, 0.0625, 6),
                                                 (192, 0.125, 24), (96, 0.3, 28),
                                                 (96, 0.001, 1)])
def test_scaled_channels_rounds_down_to_at_least_one(channels, width, want):
  assert allcnn.scaled_channels(channels, width) == want


@pytest.mark.parametrize("width,in_channels", [(0.0625, 1), (0.125, 3)])
def test_block_layout_follows_the_table(width, in_channels):
  model = nnx.eval_shape(lambda: AllCNN(10, in_channels, width, lowering="native",
                                        rngs=nnx.Rngs(params=0)))
  assert len(model.blocks) == len(allcnn.ALLCNN_BLOCKS) == 8
  c_in = in_channels
  for block, (channels, kernel, stride) in zip(model.blocks, allcnn.ALLCNN_BLOCKS):
    c_out = allcnn.scaled_channels(channels, width)
    assert block.conv.kernel.shape == (kernel, kernel, c_in, c_out)
    assert block.conv.stride == stride and block.conv.bias is None
    assert block.norm.momentum == allcnn.BN_MOMENTUM == 0.9
    c_in = c_out
  assert model.head.kernel.shape == (c_in, 10)


def test_features_are_every_blocks_activation_at_the_strided_sizes():
  model = nnx.eval_shape(lambda: AllCNN(4, 1, WIDTH, lowering="native",
                                        rngs=nnx.Rngs(params=0)))
  graphdef, state = nnx.split(model)

  def features(state, x):
    return nnx.merge(graphdef, state).features(x)

  acts = jax.eval_shape(features, state, jax.ShapeDtypeStruct((2, 9, 9, 1), jnp.float32))
  # SAME padding: the stride-2 blocks (3rd and 6th) give ceil(9/2) = 5, then 3.
  assert [a.shape for a in acts] == [(2, 9, 9, 6), (2, 9, 9, 6), (2, 5, 5, 12),
                                     (2, 5, 5, 12), (2, 5, 5, 12), (2, 3, 3, 12),
                                     (2, 3, 3, 12), (2, 3, 3, 12)]
