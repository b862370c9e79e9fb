"""Models: AllCNN and VAE shapes/dtypes, BatchNorm behaviour, the two conv lowerings."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geniu_jax.models import conv as conv_lib
from geniu_jax.models import functional as F
from geniu_jax.models import winograd
from geniu_jax.models.allcnn import AllCNN
from flax import nnx

from conftest import pure_leaves

SHAPES = [(28, 28, 1), (32, 32, 3)]
WIDTH = 0.0625

# Whole forward passes are jitted: one compile is much cheaper on CPU than
# compiling every primitive of an eager pass.
_apply = jax.jit(F.classifier_apply, static_argnums=(0, 4))
_logits = jax.jit(F.classifier_logits, static_argnums=0)
_generate = jax.jit(F.generator_apply, static_argnums=0)


def _images(shape, n=3, seed=0):
  # numpy randomness: jax.random would compile a sampler for every new shape.
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, *shape)), jnp.float32)


def _normal(seed, shape, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# --- AllCNN -----------------------------------------------------------------

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


# --- VAE --------------------------------------------------------------------

@pytest.mark.parametrize("shape,latent", [((28, 28, 1), 128), ((32, 32, 3), 256)],
                         ids=["28x28x1", "32x32x3"])
def test_vae_shapes_range_and_latent_size(shape, latent):
  gen = F.make_generator(shape, None, "native", jax.random.key(0))
  z = _normal(1, (2, *shape), 3.0)
  x, mu, logvar = _generate(gen.graphdef, gen.params, z, jax.random.key(2))
  assert x.shape == (2, *shape) and x.dtype == jnp.float32
  assert mu.shape == (2, latent) and logvar.shape == (2, latent)
  assert mu.dtype == logvar.dtype == jnp.float32
  xs = np.asarray(x)
  assert np.all(np.isfinite(xs)) and xs.min() >= 0.0 and xs.max() <= 1.0
  # Without a key x' is decoded from mu: deterministic, and not the sampled one.
  x_det1, mu1, _ = _generate(gen.graphdef, gen.params, z)
  x_det2, _, _ = _generate(gen.graphdef, gen.params, z)
  assert np.array_equal(x_det1, x_det2)
  np.testing.assert_allclose(mu1, mu, rtol=1e-6)
  assert not np.allclose(x_det1, x)
  # The VAE carries no running statistics (GroupNorm only).
  assert not jax.tree_util.tree_leaves(gen.stats)


def test_vae_explicit_latent_dim():
  gen = F.make_generator((28, 28, 1), 16, "native", jax.random.key(0))
  _, mu, logvar = _generate(gen.graphdef, gen.params, jnp.zeros((1, 28, 28, 1)))
  assert mu.shape == logvar.shape == (1, 16)


# --- conv lowerings -----------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0, 4))
def _conv_and_grads(conv, x, w, cot, stride):
  def loss(x, w):
    return jnp.sum(conv(x, w, stride) * cot)
  return conv(x, w, stride), jax.grad(loss, argnums=(0, 1))(x, w)


@pytest.mark.parametrize("size", [7, 14, 28])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_lowerings_match_values_and_gradients(kernel, stride, size):
  seed = kernel * 100 + stride * 10 + size
  x = _normal(seed, (2, size, size, 3))
  w = _normal(seed + 1, (kernel, kernel, 3, 4), 0.3)
  out_size = -(-size // stride)
  cot = _normal(seed + 2, (2, out_size, out_size, 4))

  y_native, (gx_n, gw_n) = _conv_and_grads(conv_lib.conv2d_native, x, w, cot, stride)
  for lowering in ("patches", "winograd"):
    conv = functools.partial(conv_lib.conv2d, lowering=lowering)
    y, (gx, gw) = _conv_and_grads(conv, x, w, cot, stride)
    assert y.shape == y_native.shape == (2, out_size, out_size, 4)
    np.testing.assert_allclose(y, y_native, rtol=1e-5, atol=1e-5, err_msg=lowering)
    assert gx.shape == x.shape and gw.shape == w.shape
    np.testing.assert_allclose(gx, gx_n, rtol=1e-4, atol=1e-4, err_msg=lowering)
    np.testing.assert_allclose(gw, gw_n, rtol=1e-4, atol=1e-4, err_msg=lowering)
  # Not vacuous: the gradients are far from zero.
  assert float(jnp.abs(gw_n).max()) > 0.1 and float(jnp.abs(gx_n).max()) > 0.1


@pytest.mark.parametrize("height,width", [(28, 28), (7, 7), (5, 8), (1, 1), (2, 3)])
def test_winograd_matches_native_on_any_map_size(height, width):
  """F(2x2, 3x3) tiles pad odd sizes up and crop; values and both gradients."""
  seed = height * 10 + width
  x = _normal(seed, (3, height, width, 16))
  w = _normal(seed + 1, (3, 3, 16, 8), 0.2)
  cot = _normal(seed + 2, (3, height, width, 8))
  y_n, (gx_n, gw_n) = _conv_and_grads(conv_lib.conv2d_native, x, w, cot, 1)
  y_w, (gx_w, gw_w) = _conv_and_grads(
      lambda x, w, s: winograd.conv2d_winograd(x, w), x, w, cot, 1)
  scale = float(jnp.abs(y_n).max())
  assert scale > 0.5
  # Relative to the output's scale: float32 rounding of sums of 144 products.
  np.testing.assert_allclose(y_w / scale, y_n / scale, atol=2e-6)
  np.testing.assert_allclose(gx_w, gx_n, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw_w, gw_n, rtol=1e-4, atol=1e-4)


def test_winograd_rejects_other_kernels_and_vmaps():
  with pytest.raises(ValueError, match="3x3"):
    winograd.conv2d_winograd(jnp.zeros((1, 4, 4, 2)), jnp.zeros((5, 5, 2, 2)))
  # Per-run weights under vmap (the sweep's use) give the per-run convolutions.
  xs, ws = _normal(0, (2, 1, 6, 6, 4)), _normal(1, (2, 3, 3, 4, 5))
  got = jax.vmap(winograd.conv2d_winograd)(xs, ws)
  for i in range(2):
    np.testing.assert_allclose(got[i], conv_lib.conv2d_native(xs[i], ws[i], 1),
                               rtol=1e-5, atol=1e-5)


def test_conv_native_matches_an_explicit_same_convolution():
  """Pins the SAME padding convention (extra padding after) for an even size."""
  x = _normal(0, (1, 6, 6, 1))
  w = _normal(1, (3, 3, 1, 1))
  got = np.asarray(conv_lib.conv2d_patches(x, w, 2))[0, :, :, 0]
  xs, ws = np.asarray(x)[0, :, :, 0], np.asarray(w)[:, :, 0, 0]
  # size 6, kernel 3, stride 2: output 3, total padding 1 -> (0 before, 1 after).
  xp = np.pad(xs, ((0, 1), (0, 1)))
  ref = np.array([[np.sum(xp[2 * i:2 * i + 3, 2 * j:2 * j + 3] * ws) for j in range(3)]
                  for i in range(3)])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("other", ["patches", "winograd"])
def test_models_built_with_either_lowering_share_params(other):
  shape, key = (28, 28, 1), jax.random.key(7)
  native = F.make_classifier(10, shape, WIDTH, "native", key)
  patches = F.make_classifier(10, shape, WIDTH, other, key)
  pn, pp = pure_leaves(native.params), pure_leaves(patches.params)
  assert pn.keys() == pp.keys() and len(pn) == 8 * 3 + 2
  for k in pn:
    assert pn[k].shape == pp[k].shape and np.array_equal(pn[k], pp[k]), k
  assert jax.tree_util.tree_structure(native.params) == jax.tree_util.tree_structure(
      patches.params)
  assert native.graphdef != patches.graphdef  # the lowering really differs
  x = _images(shape, n=2, seed=3)
  ln = _logits(native.graphdef, native.params, native.stats, x)
  lp = _logits(patches.graphdef, patches.params, patches.stats, x)
  np.testing.assert_allclose(lp, ln, rtol=1e-4, atol=1e-4)
  # Parameters of one are served by the other's graph.
  cross = _logits(patches.graphdef, native.params, native.stats, x)
  np.testing.assert_allclose(cross, ln, rtol=1e-4, atol=1e-4)

  gn = F.make_generator(shape, None, "native", key)
  gp = F.make_generator(shape, None, other, key)
  a, b = pure_leaves(gn.params), pure_leaves(gp.params)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  z = _normal(4, (2, *shape))
  np.testing.assert_allclose(_generate(gp.graphdef, gp.params, z)[0],
                             _generate(gn.graphdef, gn.params, z)[0],
                             rtol=1e-4, atol=1e-4)


def test_lowering_resolution():
  assert jax.default_backend() == "cpu"
  assert conv_lib.resolve_lowering("auto") == "winograd"
  for name in ("native", "patches", "winograd"):
    assert conv_lib.resolve_lowering(name) == name
  conv = conv_lib.Conv2d(1, 2, 3, rngs=nnx.Rngs(params=0))
  assert conv.lowering == "winograd"
  model = AllCNN(10, 1, WIDTH, lowering="auto", rngs=nnx.Rngs(params=0))
  assert {b.conv.lowering for b in model.blocks} == {"winograd"}


@pytest.mark.parametrize("bad", ["cudnn", "", "Native", None])
def test_unknown_lowering_raises(bad):
  with pytest.raises(ValueError, match="lowering"):
    conv_lib.resolve_lowering(bad)
  with pytest.raises(ValueError, match="lowering"):
    conv_lib.Conv2d(1, 2, 3, lowering=bad, rngs=nnx.Rngs(params=0))
  with pytest.raises(ValueError, match="lowering"):
    F.make_classifier(10, (28, 28, 1), WIDTH, bad, jax.random.key(0))
  with pytest.raises(ValueError, match="lowering"):
    F.make_generator((28, 28, 1), None, bad, jax.random.key(0))


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
