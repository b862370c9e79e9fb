"""Winograd F(2x2, 3x3) convolution: `geniu_jax/models/winograd.py`.

The three transforms against the matrices of Lavin & Gray (2016), and the
whole convolution against the native one on any map size, with gradients and
under vmap.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geniu_jax.models import conv as conv_lib
from geniu_jax.models import winograd

from conftest import normal

# F(2x2, 3x3): U = G g G^T, V = B^T d B, Y = A^T M A.
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


@functools.partial(jax.jit, static_argnums=(0, 4))
def _conv_and_grads(conv, x, w, cot, stride):
  def loss(x, w):
    return jnp.sum(conv(x, w, stride) * cot)
  return conv(x, w, stride), jax.grad(loss, argnums=(0, 1))(x, w)


@pytest.mark.parametrize("height,width", [(28, 28), (7, 7), (5, 8), (1, 1), (2, 3)])
def test_winograd_matches_native_on_any_map_size(height, width):
  """F(2x2, 3x3) tiles pad odd sizes up and crop; values and both gradients."""
  seed = height * 10 + width
  x = normal(seed, (3, height, width, 16))
  w = normal(seed + 1, (3, 3, 16, 8), 0.2)
  cot = normal(seed + 2, (3, height, width, 8))
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
  xs, ws = normal(0, (2, 1, 6, 6, 4)), normal(1, (2, 3, 3, 4, 5))
  got = jax.vmap(winograd.conv2d_winograd)(xs, ws)
  for i in range(2):
    np.testing.assert_allclose(got[i], conv_lib.conv2d_native(xs[i], ws[i], 1),
                               rtol=1e-5, atol=1e-5)


class TransformsTest(chex.TestCase):
  """Each transform against its matrix form in float64, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_filter_transform_is_g_kernel_g_transposed(self):
    kernel = normal(50, (3, 3, 2, 3))
    got = np.asarray(self.variant(winograd.filter_transform)(kernel))
    assert got.shape == (16, 2, 3)
    k64 = np.asarray(kernel, np.float64)
    for c in range(2):
      for o in range(3):
        want = G @ k64[:, :, c, o] @ G.T
        np.testing.assert_allclose(got[:, c, o].reshape(4, 4), want, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_input_transform_takes_every_padded_4x4_tile(self):
    n, h, w, c = 2, 5, 4, 3
    x = normal(51, (n, h, w, c))
    got = np.asarray(self.variant(winograd.input_transform)(x))
    th, tw = 3, 2      # ceil(5 / 2), ceil(4 / 2) output tiles
    assert got.shape == (16, n * th * tw, c)
    # One row and column of SAME padding before, enough after for the last tile.
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 2 * th + 1 - h),
                                             (1, 2 * tw + 1 - w), (0, 0)))
    got = got.reshape(4, 4, n, th, tw, c)
    for b in range(n):
      for i in range(th):
        for j in range(tw):
          for ch in range(c):
            d = xp[b, 2 * i:2 * i + 4, 2 * j:2 * j + 4, ch]
            np.testing.assert_allclose(got[:, :, b, i, j, ch], BT @ d @ BT.T,
                                       rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_output_transform_places_every_2x2_tile_and_crops(self):
    n, h, w, o = 1, 3, 5, 2
    th, tw = 2, 3
    m = normal(52, (16, n * th * tw, o))
    got = np.asarray(self.variant(winograd.output_transform, static_argnums=1)(m, (n, h, w)))
    assert got.shape == (n, h, w, o)
    tiles = np.asarray(m, np.float64).reshape(4, 4, n, th, tw, o)
    full = np.zeros((n, 2 * th, 2 * tw, o))
    for i in range(th):
      for j in range(tw):
        for ch in range(o):
          full[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2, ch] = AT @ tiles[:, :, 0, i, j, ch] @ AT.T
    np.testing.assert_allclose(got, full[:, :h, :w], rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_conv2d_winograd_of_a_centred_delta_is_the_identity(self):
    # 1 at the kernel's centre from channel c to c: the identity map, up to
    # the transforms' rounding; odd sizes exercise the padding and the crop.
    x = normal(53, (2, 5, 3, 4))
    kernel = np.zeros((3, 3, 4, 4), np.float32)
    kernel[1, 1] = np.eye(4)
    got = self.variant(winograd.conv2d_winograd)(x, jnp.asarray(kernel))
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)
