"""Convolution lowerings: `geniu_jax/models/conv.py`.

The native, patches and Winograd lowerings agree on values and both
gradients; SAME padding puts the extra row after; `resolve_lowering` and the
`Conv2d` module; models built with any lowering share their parameters.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geniu_jax.models import conv as conv_lib
from geniu_jax.models import functional as F
from geniu_jax.models.allcnn import AllCNN

from conftest import normal, pure_leaves

WIDTH = 0.0625

_logits = jax.jit(F.classifier_logits, static_argnums=0)
_generate = jax.jit(F.generator_apply, static_argnums=0)


def _images(shape, n=3, seed=0):
  # numpy randomness: jax.random would compile a sampler for every new shape.
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, *shape)), jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _conv_and_grads(conv, x, w, cot, stride):
  def loss(x, w):
    return jnp.sum(conv(x, w, stride) * cot)
  return conv(x, w, stride), jax.grad(loss, argnums=(0, 1))(x, w)


def _reference_conv(x, w, stride):
  """SAME convolution in float64 numpy loops: output ceil(size / stride), the
  odd padding row and column after."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  n, h, wd, _ = x.shape
  kh, kw, _, c_out = w.shape
  out_h, out_w = -(-h // stride), -(-wd // stride)
  pad_h = max((out_h - 1) * stride + kh - h, 0)
  pad_w = max((out_w - 1) * stride + kw - wd, 0)
  xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                  (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  out = np.zeros((n, out_h, out_w, c_out))
  for i in range(out_h):
    for j in range(out_w):
      window = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
      out[:, i, j, :] = np.einsum("nhwc,hwco->no", window, w)
  return out


@pytest.mark.parametrize("size", [7, 14, 28])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_lowerings_match_values_and_gradients(kernel, stride, size):
  seed = kernel * 100 + stride * 10 + size
  x = normal(seed, (2, size, size, 3))
  w = normal(seed + 1, (kernel, kernel, 3, 4), 0.3)
  out_size = -(-size // stride)
  cot = normal(seed + 2, (2, out_size, out_size, 4))

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


def test_conv_native_matches_an_explicit_same_convolution():
  """Pins the SAME padding convention (extra padding after) for an even size."""
  x = normal(0, (1, 6, 6, 1))
  w = normal(1, (3, 3, 1, 1))
  got = np.asarray(conv_lib.conv2d_patches(x, w, 2))[0, :, :, 0]
  xs, ws = np.asarray(x)[0, :, :, 0], np.asarray(w)[:, :, 0, 0]
  # size 6, kernel 3, stride 2: output 3, total padding 1 -> (0 before, 1 after).
  xp = np.pad(xs, ((0, 1), (0, 1)))
  ref = np.array([[np.sum(xp[2 * i:2 * i + 3, 2 * j:2 * j + 3] * ws) for j in range(3)]
                  for i in range(3)])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


class ConvAgainstLoopsTest(chex.TestCase):
  """Every lowering against float64 loops, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_every_lowering_is_the_reference_same_convolution(self):
    conv = self.variant(conv_lib.conv2d, static_argnums=(2, 3))
    # Odd and even sizes, so the padding is symmetric in one case and not the other.
    for k, (kernel, stride, h, w) in enumerate([(3, 1, 5, 6), (3, 2, 6, 5), (1, 2, 5, 4),
                                                (1, 1, 3, 3)]):
      x = normal(10 + k, (2, h, w, 3))
      kern = normal(20 + k, (kernel, kernel, 3, 2), 0.5)
      ref = _reference_conv(x, kern, stride)
      for lowering in ("native", "patches", "winograd"):
        got = conv(x, kern, stride, lowering)
        assert got.shape == ref.shape, (lowering, kernel, stride)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{lowering} k{kernel} s{stride} {h}x{w}")

  @chex.variants(with_jit=True, without_jit=True)
  def test_native_and_patches_are_the_reference_same_convolution(self):
    x = normal(30, (1, 6, 6, 2))
    w = normal(31, (3, 3, 2, 3))
    ref = _reference_conv(x, w, 2)
    for fn in (conv_lib.conv2d_native, conv_lib.conv2d_patches):
      got = self.variant(fn, static_argnums=2)(x, w, 2)
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=fn.__name__)


def test_conv2d_module_kernel_bias_and_compute_dtype():
  rngs = nnx.Rngs(params=0)
  plain = conv_lib.Conv2d(2, 3, 3, 2, lowering="native", rngs=rngs)
  assert plain.kernel[...].shape == (3, 3, 2, 3) and plain.bias is None
  assert plain.stride == 2
  x = normal(40, (1, 5, 5, 2))
  np.testing.assert_allclose(plain(x), _reference_conv(x, plain.kernel[...], 2),
                             rtol=1e-5, atol=1e-5)

  biased = conv_lib.Conv2d(2, 3, 3, lowering="native", use_bias=True,
                           rngs=nnx.Rngs(params=0))
  biased.bias[...] = jnp.array([1.0, -2.0, 0.5])
  np.testing.assert_allclose(biased(x) - conv_lib.conv2d_native(x, biased.kernel[...], 1),
                             np.broadcast_to([1.0, -2.0, 0.5], (1, 5, 5, 3)),
                             rtol=1e-5, atol=1e-5)

  # Mixed precision: float32 parameters, the convolution computed in bfloat16.
  half = conv_lib.Conv2d(2, 3, 3, lowering="native", use_bias=True, dtype=jnp.bfloat16,
                         rngs=nnx.Rngs(params=0))
  assert half.kernel[...].dtype == jnp.float32 and half.bias[...].dtype == jnp.float32
  y = half(x)
  assert y.dtype == jnp.bfloat16
  ref = conv_lib.conv2d_native(x, half.kernel[...], 1)
  np.testing.assert_allclose(np.asarray(y, np.float32), ref,
                             atol=0.05 * float(jnp.abs(ref).max()))


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
  z = normal(4, (2, *shape))
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
