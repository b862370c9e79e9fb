"""Pure functions over the split models: `geniu_jax/models/functional.py`.

`init_program` / `init_split` (one cached, compiled initialisation per model
and arguments, equal to an eager build), the apply functions with and without
jit, `classifier_features`, and the compute precision (`make_classifier`'s
`precision`, `classifier_graphdef`).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geniu_jax.models import conv as conv_lib
from geniu_jax.models import functional as F
from geniu_jax.models.allcnn import AllCNN

from conftest import (TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH, assert_trees_identical,
                      normal, pure_leaves)

WIDTH = 0.0625

# Whole forward passes are jitted: one compile is much cheaper on CPU than
# compiling every primitive of an eager pass.
_apply = jax.jit(F.classifier_apply, static_argnums=(0, 4))
_logits = jax.jit(F.classifier_logits, static_argnums=0)


def _images(shape, n=3, seed=0):
  # numpy randomness: jax.random would compile a sampler for every new shape.
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, *shape)), jnp.float32)


def _tiny(key: int) -> F.SplitModel:
  return F.make_classifier(TINY_K, TINY_SHAPE, TINY_WIDTH, TINY_LOWERING, jax.random.key(key))


# --- initialisation ------------------------------------------------------------

def test_init_program_is_built_once_per_class_and_arguments():
  args, kwargs = (TINY_K, 1, TINY_WIDTH), (("dtype", None), ("lowering", TINY_LOWERING))
  first = F.init_program(AllCNN, args, kwargs)
  assert F.init_program(AllCNN, args, kwargs) is first
  other = F.init_program(AllCNN, args, (("dtype", None), ("lowering", "patches")))
  assert other is not first and other[0] != first[0]


def test_init_split_same_key_same_model_other_key_other_params():
  a, b, c = _tiny(11), _tiny(11), _tiny(12)
  assert a.graphdef == b.graphdef == c.graphdef
  assert_trees_identical(a.params, b.params)
  assert_trees_identical(a.stats, b.stats)
  pa, pc = pure_leaves(a.params), pure_leaves(c.params)
  assert pa.keys() == pc.keys()
  # Every kernel is random (biases and BatchNorm scales start as constants).
  kernels = [k for k in pa if "kernel" in k]
  assert len(kernels) == 9
  for k in kernels:
    assert not np.array_equal(pa[k], pc[k]), k
  # The running statistics start at (0, 1) whatever the key.
  assert_trees_identical(a.stats, c.stats)


def test_init_split_equals_the_eager_build_and_runs_through_run():
  key = jax.random.key(5)
  calls = []

  def run(init, key_data):
    calls.append(np.asarray(key_data))
    return init(key_data)

  got = F.init_split(conv_lib.Conv2d, 2, 3, 3, key=key, run=run, lowering="native",
                     use_bias=True)
  assert len(calls) == 1 and np.array_equal(calls[0], jax.random.key_data(key))
  graphdef, params, stats = nnx.split(
      conv_lib.Conv2d(2, 3, 3, lowering="native", use_bias=True, rngs=nnx.Rngs(params=key)),
      nnx.Param, nnx.BatchStat)
  assert got.graphdef == graphdef
  want, have = pure_leaves(params), pure_leaves(got.params)
  assert want.keys() == have.keys() and len(want) == 2
  for k in want:
    np.testing.assert_allclose(have[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
  assert not jax.tree_util.tree_leaves(got.stats) and not jax.tree_util.tree_leaves(stats)


def test_init_split_without_a_key_gives_shapes_only():
  def run(init, key_data):
    raise AssertionError("nothing may be initialised")

  model = _tiny(11)
  for make in (lambda: F.make_classifier(TINY_K, TINY_SHAPE, TINY_WIDTH, TINY_LOWERING, None),
               lambda: F.init_split(AllCNN, TINY_K, 1, TINY_WIDTH, key=None, run=run,
                                    dtype=None, lowering=TINY_LOWERING)):
    abstract = make()
    assert abstract.graphdef == model.graphdef
    for state, real in ((abstract.params, model.params), (abstract.stats, model.stats)):
      got, want = jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(real)
      assert len(got) == len(want) > 0
      assert all(isinstance(g, jax.ShapeDtypeStruct) for g in got)
      assert [(g.shape, g.dtype) for g in got] == [(w.shape, w.dtype) for w in want]


def test_dtype_of_a_precision():
  assert F._dtype("float32") is None
  assert F._dtype("bfloat16") == jnp.bfloat16


def test_classifier_graphdef_is_make_classifiers_without_initialising():
  cls = _tiny(0)
  assert F.classifier_graphdef(TINY_K, TINY_SHAPE, TINY_WIDTH, TINY_LOWERING) == cls.graphdef
  bf16 = F.classifier_graphdef(TINY_K, TINY_SHAPE, TINY_WIDTH, TINY_LOWERING, "bfloat16")
  assert bf16 != cls.graphdef
  # The float32 parameters run in bfloat16 through the other graph definition.
  x = _images(TINY_SHAPE, n=4, seed=6)
  ref = _logits(cls.graphdef, cls.params, cls.stats, x)
  got = _logits(bf16, cls.params, cls.stats, x)
  assert got.dtype == jnp.float32 and not np.array_equal(got, ref)
  np.testing.assert_allclose(got, ref, atol=0.1 * float(jnp.abs(ref).max()) + 1e-3)


# --- apply functions, with and without jit --------------------------------------

class ApplyTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.cls = _tiny(21)
    self.x = _images(TINY_SHAPE, n=4, seed=7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_classifier_apply_and_logits_shapes_and_modes(self):
    cls, x = self.cls, self.x
    apply = self.variant(F.classifier_apply, static_argnums=(0, 4))
    logits, stats = apply(cls.graphdef, cls.params, cls.stats, x, False)
    assert logits.shape == (4, TINY_K) and logits.dtype == jnp.float32
    assert_trees_identical(stats, cls.stats)
    train_logits, new_stats = apply(cls.graphdef, cls.params, cls.stats, x, True)
    assert train_logits.shape == (4, TINY_K)
    assert jax.tree_util.tree_structure(new_stats) == jax.tree_util.tree_structure(cls.stats)
    assert not np.allclose(train_logits, logits)
    eval_logits = self.variant(F.classifier_logits, static_argnums=0)(
        cls.graphdef, cls.params, cls.stats, x)
    np.testing.assert_allclose(eval_logits, logits, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_classifier_features_are_the_blocks_and_the_logits(self):
    cls, x = self.cls, self.x
    features = self.variant(F.classifier_features, static_argnums=(0, 4))
    logits, acts = features(cls.graphdef, cls.params, cls.stats, x, False)
    np.testing.assert_allclose(logits, _logits(cls.graphdef, cls.params, cls.stats, x),
                               rtol=1e-5, atol=1e-6)
    assert [a.shape for a in acts] == [(4, 8, 8, 6), (4, 8, 8, 6), (4, 4, 4, 12),
                                       (4, 4, 4, 12), (4, 4, 4, 12), (4, 2, 2, 12),
                                       (4, 2, 2, 12), (4, 2, 2, 12)]
    assert all(float(jnp.min(a)) >= 0.0 for a in acts)     # after the ReLU
    # Train mode normalises with the batch's statistics, as classifier_apply does.
    train_logits, _ = features(cls.graphdef, cls.params, cls.stats, x, True)
    np.testing.assert_allclose(
        train_logits, _apply(cls.graphdef, cls.params, cls.stats, x, True)[0],
        rtol=1e-5, atol=1e-6)
    assert not np.allclose(train_logits, logits)

  @chex.variants(with_jit=True, without_jit=True)
  def test_generator_apply_decodes_mu_without_a_key(self):
    gen = F.make_generator(TINY_SHAPE, 8, TINY_LOWERING, jax.random.key(22))
    z = normal(23, (3, *TINY_SHAPE))
    generate = self.variant(F.generator_apply, static_argnums=0)
    x, mu, logvar = generate(gen.graphdef, gen.params, z)
    assert x.shape == z.shape and mu.shape == logvar.shape == (3, 8)
    model = nnx.merge(gen.graphdef, gen.params)
    np.testing.assert_allclose(x, model.decode(mu), rtol=1e-5, atol=1e-6)
    sampled, mu2, _ = generate(gen.graphdef, gen.params, z, jax.random.key(24))
    np.testing.assert_allclose(mu2, mu, rtol=1e-5, atol=1e-6)
    assert not np.allclose(sampled, x)


# --- compute precision ---------------------------------------------------------

@pytest.mark.parametrize("lowering", ["native", "winograd"])
def test_bfloat16_compute_keeps_float32_params_stats_and_logits(lowering):
  shape, key = (28, 28, 1), jax.random.key(3)
  f32 = F.make_classifier(10, shape, WIDTH, lowering, key)
  bf16 = F.make_classifier(10, shape, WIDTH, lowering, key, "bfloat16")
  a, b = pure_leaves(f32.params), pure_leaves(bf16.params)
  assert a.keys() == b.keys()
  assert all(b[k].dtype == np.float32 and np.array_equal(a[k], b[k]) for k in a)
  assert all(v.dtype == np.float32 for v in pure_leaves(bf16.stats).values())
  x = _images(shape, n=4, seed=5)
  logits, new_stats = _apply(bf16.graphdef, bf16.params, bf16.stats, x, True)
  assert logits.dtype == jnp.float32
  assert all(v.dtype == np.float32 for v in pure_leaves(new_stats).values())
  # The same numbers to bfloat16 rounding (8 bits of mantissa, a few layers deep).
  ref = _logits(f32.graphdef, f32.params, f32.stats, x)
  got = _logits(bf16.graphdef, bf16.params, bf16.stats, x)
  assert not np.array_equal(got, ref)
  np.testing.assert_allclose(got, ref, atol=0.1 * float(jnp.abs(ref).max()) + 1e-3)
  # The features path (GKT's attention transfer) gives the same float32 logits.
  feat_logits, acts = jax.jit(F.classifier_features, static_argnums=0)(
      bf16.graphdef, bf16.params, bf16.stats, x)
  assert feat_logits.dtype == jnp.float32 and acts[-1].dtype == jnp.bfloat16
  np.testing.assert_array_equal(feat_logits, got)

  # Gradients reach the float32 parameters in float32.
  def loss(params):
    return F.classifier_logits(bf16.graphdef, params, bf16.stats, x).sum()

  grads = pure_leaves(jax.jit(jax.grad(loss))(bf16.params))
  assert all(g.dtype == np.float32 and np.all(np.isfinite(g)) for g in grads.values())
  assert any(np.any(g != 0) for g in grads.values())


def test_unknown_precision_is_refused():
  from geniu_jax.config import get_config
  with pytest.raises(ValueError, match="precision"):
    get_config("smoke", precision="float16")
