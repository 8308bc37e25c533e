"""Bricks of the light models: a conv factory whose depthwise and stem convs are fast on XLA:CPU, the
depthwise-separable block, and a cheap integer-factor bilinear upsampling.

XLA:CPU computes a depthwise convolution (`feature_group_count` = channels) far slower than the same
arithmetic written as k*k shifted multiply-adds, which it fuses into one loop: a 3x3 depthwise conv on
128x128x16 took 12 ms against 0.1 ms (one core, jax 0.10), slower even than a dense conv with 16 times the
arithmetic. The same holds, less extremely, for a dense kxk conv on very few input channels (a stem on a
grayscale image: 0.8 against 0.1 ms). So on CPU `conv_general_dilated` below computes those two kinds as
shifted multiply-adds (accumulated in float32), and hands every other case to
`layers.conv_general_dilated` (which keeps its own small-map path). Same parameters either way; results
equal up to float rounding (tests/light_layers_test.py, gradients included). Inside
`layers.lax_convolutions()` (FLOP counting) both are XLA's own convolutions again;
`python benchmarks/light_models.py --xla_convs` times whole models both ways. The price: XLA compiles the
many slices more slowly (a training step of `light_unet` about twice as long as with grouped convs).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from veinjax.models import layers

ModuleDef = layers.ModuleDef


# A dense conv with at most this many input channels (a stem on grayscale or RGB) is shifted multiply-adds
# on CPU too: XLA:CPU took 0.80 ms for a 3x3/2 conv 1 -> 16 channels on 256x256 (one core), these 0.10 ms.
_THIN_INPUT = 4


def _is_nhwc(lhs, dimension_numbers) -> bool:
  return (lhs.ndim == 4 and dimension_numbers is not None
          and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
          and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
          and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`layers.conv_general_dilated`, except that on XLA:CPU depthwise and thin-input convs are shift-adds."""
  channels = lhs.shape[-1]
  eligible = (layers.cpu_workarounds_active() and _is_nhwc(lhs, dimension_numbers)
              and batch_group_count == 1 and not isinstance(padding, str)
              and all(d == 1 for d in (lhs_dilation or (1, 1))))
  is_depthwise = feature_group_count == channels > 1 and rhs.shape[2:] == (1, channels)
  is_thin = feature_group_count == 1 and channels <= _THIN_INPUT and rhs.shape[0] * rhs.shape[1] > 1
  if not (eligible and (is_depthwise or is_thin)):
    return layers.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  out = shift_add(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)), tuple(rhs_dilation or (1, 1)),
                  depthwise=is_depthwise)
  return out.astype(preferred_element_type or lhs.dtype)


def shift_add(x: jax.Array, kernel: jax.Array, strides, padding, dilation, depthwise: bool) -> jax.Array:
  """A conv of NHWC `x` with an HWIO `kernel` as a sum over taps of strided slices times the tap's weights.

  Depthwise (`kernel` HW1C): each slice times a per-channel weight. Otherwise (few input channels):
  each input channel of each slice, broadcast, times its row of weights.
  """
  kh, kw, cin, _ = kernel.shape
  (sh, sw), (dh, dw) = strides, dilation
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  _, height, width, _ = x.shape
  out_size = ((height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  x, kernel = x.astype(acc), kernel.astype(acc)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = layers.tap_slice(x, (i * dh, j * dw), out_size, strides)
      if depthwise:
        terms = [tap * kernel[i, j, 0]]
      else:
        terms = [tap[..., k:k + 1] * kernel[i, j, k] for k in range(cin)]
      for term in terms:
        out = term if out is None else out + term
  return out


def make_conv(dtype: layers.Dtype = jnp.float32) -> ModuleDef:
  """`layers.make_conv` with the CPU paths above; a depthwise conv is `feature_group_count=channels`."""
  return functools.partial(layers.make_conv(dtype), conv_general_dilated=conv_general_dilated)


class DepthwiseSeparable(nn.Module):
  """kxk depthwise conv-BN-act, then 1x1 pointwise conv-BN-act (MobileNet v1's block), over the channel
  concatenation of its inputs.

  The concatenation is never formed: depthwise conv, BN and activation act per channel and the pointwise
  conv is a sum over input channels, so each input gets its own depthwise conv, BN and pointwise kernel
  and the pointwise results are added: the same function and parameter count as on the concatenation,
  without writing the concatenated tensor (a decoder block at stride 2 ran ~15% faster on one CPU core).
  `conv` is `make_conv(...)` (fast depthwise on CPU), `norm` `layers.make_norm(...)`.
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  kernel_size: int = 3
  act: str = "relu"

  @nn.compact
  def __call__(self, *inputs: jax.Array) -> jax.Array:
    act, k = ACTIVATIONS[self.act], self.kernel_size
    out = None
    for i, x in enumerate(inputs):
      x = self.conv(x.shape[-1], (k, k), padding=layers.conv_padding(k), feature_group_count=x.shape[-1],
                    name=f"dw_conv{i}")(x)
      x = act(self.norm(name=f"dw_bn{i}")(x))
      x = self.conv(self.features, (1, 1), padding="VALID", name=f"pw_conv{i}")(x)
      out = x if out is None else out + x
    return act(self.norm(name="pw_bn")(out))


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
  """Integer-factor bilinear upsampling of NHWC, equal to `layers.resize_bilinear` (PyTorch's
  align_corners=False, edges replicated), as two weighted sums of shifted copies per axis: on one CPU
  core `jax.image.resize` (resampling matrices) took 0.30 ms for 128x128x1 -> 256x256, this 0.07 ms.
  """
  for axis in (1, 2):
    size = x.shape[axis]
    padded = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), x,
                              jax.lax.slice_in_dim(x, size - 1, size, axis=axis)], axis=axis)
    prev, here, after = (jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i in range(3))
    phases = []
    for p in range(factor):
      d = (p + 0.5) / factor - 0.5  # Source offset of output phase p, in input pixels.
      phases.append(here * (1 - abs(d)) + (prev if d < 0 else after) * abs(d))
    x = jnp.stack(phases, axis=axis + 1)
    x = x.reshape(x.shape[:axis] + (size * factor,) + x.shape[axis + 2:])
  return x


# torchvision's "RE" and "HS"; hard-swish is x * relu6(x + 3) / 6 (PyTorch's nn.Hardswish).
ACTIVATIONS = {"relu": nn.relu, "hardswish": jax.nn.hard_swish}
