"""3x3 stride-1 convolution as Winograd's minimal filtering F(2x2, 3x3).

Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks".
Each 2x2 output tile is computed from a 4x4 input tile with 16 elementwise
products instead of 36: the input tile d and the filter g are taken to a
4x4 "Winograd domain" (V = B^T d B, U = G g G^T), multiplied there, summed
over input channels -- one batched matmul of 16 (tiles x C) @ (C x O)
products -- and brought back by Y = A^T M A. The three transforms are exact
linear maps with coefficients 0, +-1 and +-1/2, so the result is the same
convolution up to float32 rounding (relative error ~1e-6, see the tests).

Why it is here: on a CPU the multiply-accumulates of the matmul are the cost,
and F(2x2, 3x3) needs 2.25x fewer of them than the direct or im2col
convolution, in the forward pass and in both gradients (autodiff through the
linear transforms gives the transposed transforms around batched matmuls of
the same size). It also writes a 4x (not 9x) copy of the input where
im2col writes the patch tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# All three transforms are written as add/sub chains, not matmuls: as an einsum
# the filter transform becomes a (C*O x 3) @ (3 x 4) dot that XLA's CPU backend
# ran slower than the layer's own products.


def _filter_rows(g0, g1, g2):
  # Rows of G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
  half_sum = 0.5 * (g0 + g2)
  return g0, half_sum + 0.5 * g1, half_sum - 0.5 * g1, g2


def _input_rows(t0, t1, t2, t3):
  # Rows of B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
  return t0 - t2, t1 + t2, t2 - t1, t1 - t3


def _output_rows(m0, m1, m2, m3):
  # Rows of A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
  return m0 + m1 + m2, m1 - m2 - m3


def filter_transform(kernel: jax.Array) -> jax.Array:
  """U = G g G^T for every (c_in, c_out): (3, 3, C, O) -> (16, C, O)."""
  rows = _filter_rows(kernel[0], kernel[1], kernel[2])        # each (3, C, O)
  u = [col for r in rows for col in _filter_rows(r[0], r[1], r[2])]
  return jnp.stack(u)


def input_transform(x: jax.Array) -> jax.Array:
  """V = B^T d B of every 4x4 tile (stride 2) of the SAME-padded input.

  Args:
    x: (N, H, W, C) input.

  Returns:
    (16, N * ceil(H/2) * ceil(W/2), C), the Winograd-domain tiles.
  """
  n, h, w, c = x.shape
  th, tw = -(-h // 2), -(-w // 2)
  xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  # Row 2t + p of the padded input is xr[:, t, p]: tile rows 2t .. 2t+3 are
  # then four contiguous slices, whose gradients are plain pads (a strided
  # slice's gradient is an interior pad, which XLA fuses poorly).
  xr = xp.reshape(n, th + 1, 2, tw + 1, 2, c)
  rows = _input_rows(*[xr[:, a // 2:a // 2 + th, a % 2] for a in range(4)])
  tiles = []
  for r in rows:
    tiles += _input_rows(*[r[:, :, b // 2:b // 2 + tw, b % 2] for b in range(4)])
  return jnp.stack(tiles).reshape(16, n * th * tw, c)


def output_transform(m: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
  """Y = A^T M A back to (N, H, W, O) from (16, tiles, O) products."""
  n, h, w = shape
  th, tw = -(-h // 2), -(-w // 2)
  m = m.reshape(4, 4, n, th, tw, m.shape[-1])
  s = _output_rows(m[0], m[1], m[2], m[3])
  y = [_output_rows(si[0], si[1], si[2], si[3]) for si in s]  # y[i][j]: (n, th, tw, O)
  y = jnp.stack([jnp.stack(y[0], axis=3), jnp.stack(y[1], axis=3)], axis=2)
  return y.reshape(n, 2 * th, 2 * tw, -1)[:, :h, :w]


def conv2d_winograd(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """SAME-padded 3x3 stride-1 NHWC x HWIO convolution via F(2x2, 3x3).

  Args:
    x: (N, H, W, C) input, any H and W.
    kernel: (3, 3, C, O) filter, the same array the other lowerings read.

  Returns:
    (N, H, W, O), equal to `conv2d_native(x, kernel, 1)` up to rounding.
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f"Winograd F(2x2, 3x3) needs a 3x3 kernel, got {kernel.shape[:2]}")
  products = jnp.einsum("ktc,kco->kto", input_transform(x), filter_transform(kernel))
  return output_transform(products, x.shape[:3])
