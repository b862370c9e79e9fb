"""2-D convolution with a choice of lowering, same parameters either way.

On a CPU (jaxlib 0.10), XLA's native convolution runs through YNNPACK at top
level and is fast for the forward pass, but its filter gradient is slow at
large batch and, inside `lax.while_loop`, keeps a transposed layout that falls
back to a path ~40x slower (benchmarks/RESULTS.md). Written as "gather the
kh*kw shifted views, then one matmul" (`patches`), the same convolution uses
the multi-threaded GEMM for the forward pass and both gradients, in loops too
(the gradient of a slice is a pad, of a concat a slice). On GPU/TPU the native
convolution (cuDNN / the TPU conv unit) is the fast path.

`winograd` runs every 3x3 stride-1 convolution as Winograd F(2x2, 3x3)
(`geniu_jax.models.winograd`: 2.25x fewer multiply-accumulates, a 4x instead
of 9x copy of the input) and the rest as patches; it is what `auto` picks on
CPU. All lowerings read the same `kernel` of shape (kh, kw, c_in, c_out), so a
checkpoint trained with one is served by any other; they agree to float32
rounding.
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

from geniu_jax.models.winograd import conv2d_winograd

Lowering = Literal["auto", "native", "patches", "winograd"]
LOWERINGS: tuple[str, ...] = get_args(Lowering)


def resolve_lowering(lowering: str) -> str:
  """Maps `auto` to `winograd` on CPU and `native` on accelerators."""
  if lowering not in LOWERINGS:
    raise ValueError(
        f"unknown conv lowering {lowering!r}; expected one of {LOWERINGS}")
  if lowering != "auto":
    return lowering
  return "winograd" if jax.default_backend() == "cpu" else "native"


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  # TF/Flax "SAME": output = ceil(size / stride), extra padding goes after.
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv2d_native(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """NHWC x HWIO convolution with SAME padding through `lax.conv_general_dilated`."""
  kh, kw = kernel.shape[:2]
  pads = (_same_padding(x.shape[1], kh, stride), _same_padding(x.shape[2], kw, stride))
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), pads,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d_patches(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """The same convolution as `conv2d_native`, as shifted views + one matmul."""
  kh, kw, c_in, c_out = kernel.shape
  n, h, w, _ = x.shape
  if kh == 1 and kw == 1:
    x = x[:, ::stride, ::stride, :]
    return jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])
  (ph0, ph1), (pw0, pw1) = _same_padding(h, kh, stride), _same_padding(w, kw, stride)
  xp = jnp.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
  out_h, out_w = -(-h // stride), -(-w // stride)
  views = [
      jax.lax.slice(
          xp, (0, i, j, 0),
          (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c_in),
          (1, stride, stride, 1))
      for i in range(kh) for j in range(kw)
  ]
  # Feature order (kh, kw, c_in) matches kernel.reshape(-1, c_out).
  patches = jnp.concatenate(views, axis=-1)
  return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(kh * kw * c_in, c_out))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, lowering: str) -> jax.Array:
  """SAME convolution through a resolved lowering (`native|patches|winograd`)."""
  if lowering == "native":
    return conv2d_native(x, kernel, stride)
  # Winograd pays off where there is a 3x3 window over >1 input channels; the
  # single-channel first layer is tiny and im2col (9 columns) suits it better.
  if (lowering == "winograd" and stride == 1 and kernel.shape[:2] == (3, 3)
      and kernel.shape[2] > 1):
    return conv2d_winograd(x, kernel)
  return conv2d_patches(x, kernel, stride)


class Conv2d(nnx.Module):
  """SAME-padded 2-D convolution (bias off by default: a BatchNorm follows).

  Args:
    in_features: input channels.
    out_features: output channels.
    kernel_size: square kernel side.
    stride: square stride.
    lowering: `native`, `patches`, `winograd` or `auto` (see module docstring).
    use_bias: add a learned per-channel bias.
    dtype: compute dtype (e.g. bfloat16), None for the input's; the
      parameters stay float32.
    rngs: NNX random streams; `params` initialises the kernel.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int,
               stride: int = 1, *, lowering: Lowering = "auto",
               use_bias: bool = False, dtype=None, rngs: nnx.Rngs):
    init = jax.nn.initializers.he_normal()
    self.kernel = nnx.Param(
        init(rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.stride = stride
    self.lowering = resolve_lowering(lowering)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...]
    if self.dtype is not None:   # mixed precision: float32 kernel, computed in dtype
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = conv2d(x, kernel, self.stride, self.lowering)
    return y if self.bias is None else y + self.bias[...].astype(y.dtype)
