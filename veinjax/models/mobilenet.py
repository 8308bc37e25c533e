"""MobileNetV3 encoders (Howard et al. 2019) that return their skip features for a segmentation decoder.

The layout is torchvision's `mobilenet_v3_small` / `mobilenet_v3_large` `features` (Table 1 / 2 of the
paper): a 3x3/2 stem conv-BN-hard-swish with 16 channels, inverted residual blocks ("bneck": 1x1
expansion conv-BN-act where the expansion differs from the input, kxk depthwise conv-BN-act carrying the
stride, squeeze-excitation where the table says so, 1x1 projection conv-BN, a residual where the shape is
kept), then a 1x1 conv-BN-hard-swish to 6x the last width. Squeeze-excitation is torchvision's: global
mean, 1x1 conv with bias to `make_divisible(expanded // 4)`, ReLU, 1x1 conv with bias back, hard-sigmoid
gate. No classifier (no pooling, no fc layers).

`MobileNetV3Encoder` returns the features at strides 2, 4, 8, 16, 32 (the input of every stride-2 block,
then the final 1x1 conv), as timm's `features_only` and smp's `timm-mobilenetv3_*` encoders do, and
declares their channels: (16, 16, 24, 48, 576) for small, (16, 24, 40, 112, 960) for large. With
`output_stride` 16 or 8 the last stride(s) become dilation (torchvision's `dilated=True`), for DeepLab.

Parameters, 1 input channel: small 926,720, large 2,971,664, equal to torchvision's published totals
(2,542,856 and 5,483,032 with 3 channels) minus the classifier (1,615,848 and 2,511,080) minus 288 stem
weights for 2 fewer input channels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from veinjax.models import layers
from veinjax.models import light_layers

ModuleDef = layers.ModuleDef


class Bneck(NamedTuple):
  """One row of the paper's table (torchvision's `InvertedResidualConfig`, input width implied)."""

  kernel: int
  expanded: int
  out: int
  use_se: bool
  act: str  # "relu" or "hardswish"
  stride: int


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible`: nearest multiple of `divisor`, never more than 10% below `value`."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * value else new


_R, _H = "relu", "hardswish"

MOBILENETV3_SMALL = (
    Bneck(3, 16, 16, True, _R, 2),
    Bneck(3, 72, 24, False, _R, 2),
    Bneck(3, 88, 24, False, _R, 1),
    Bneck(5, 96, 40, True, _H, 2),
    Bneck(5, 240, 40, True, _H, 1),
    Bneck(5, 240, 40, True, _H, 1),
    Bneck(5, 120, 48, True, _H, 1),
    Bneck(5, 144, 48, True, _H, 1),
    Bneck(5, 288, 96, True, _H, 2),
    Bneck(5, 576, 96, True, _H, 1),
    Bneck(5, 576, 96, True, _H, 1),
)

MOBILENETV3_LARGE = (
    Bneck(3, 16, 16, False, _R, 1),
    Bneck(3, 64, 24, False, _R, 2),
    Bneck(3, 72, 24, False, _R, 1),
    Bneck(5, 72, 40, True, _R, 2),
    Bneck(5, 120, 40, True, _R, 1),
    Bneck(5, 120, 40, True, _R, 1),
    Bneck(3, 240, 80, False, _H, 2),
    Bneck(3, 200, 80, False, _H, 1),
    Bneck(3, 184, 80, False, _H, 1),
    Bneck(3, 184, 80, False, _H, 1),
    Bneck(3, 480, 112, True, _H, 1),
    Bneck(3, 672, 112, True, _H, 1),
    Bneck(5, 672, 160, True, _H, 2),
    Bneck(5, 960, 160, True, _H, 1),
    Bneck(5, 960, 160, True, _H, 1),
)


class SqueezeExcite(nn.Module):
  """Channel gate: global mean, 1x1 conv + ReLU to `squeeze`, 1x1 conv + hard-sigmoid, times the input."""

  squeeze: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(self.conv(self.squeeze, (1, 1), padding="VALID", use_bias=True, name="fc1")(s))
    s = self.conv(x.shape[-1], (1, 1), padding="VALID", use_bias=True, name="fc2")(s)
    return x * jax.nn.hard_sigmoid(s)


class InvertedResidual(nn.Module):
  """MobileNetV3's bneck: [1x1 expand-BN-act], kxk depthwise-BN-act, [SE], 1x1 project-BN, [+ input]."""

  spec: Bneck
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    spec, act = self.spec, light_layers.ACTIVATIONS[self.spec.act]
    y = x
    if spec.expanded != x.shape[-1]:
      y = self.conv(spec.expanded, (1, 1), padding="VALID", name="expand_conv")(y)
      y = act(self.norm(name="expand_bn")(y))
    y = self.conv(
        spec.expanded, (spec.kernel, spec.kernel), strides=(self.strides, self.strides),
        padding=layers.conv_padding(spec.kernel, self.dilation), kernel_dilation=(self.dilation,) * 2,
        feature_group_count=spec.expanded, name="dw_conv")(y)
    y = act(self.norm(name="dw_bn")(y))
    if spec.use_se:
      y = SqueezeExcite(make_divisible(spec.expanded // 4), self.conv, name="se")(y)
    y = self.conv(spec.out, (1, 1), padding="VALID", name="project_conv")(y)
    y = self.norm(name="project_bn")(y)
    return x + y if self.strides == 1 and x.shape == y.shape else y


class MobileNetV3Encoder(nn.Module):
  """MobileNetV3 without its classifier, returning the features at strides 2, 4, 8, 16, 32.

  Attributes:
    blocks: the bneck table, e.g. `MOBILENETV3_SMALL`.
    last_features: channels of the final 1x1 conv (torchvision: 6x the last block's width).
    stem_features: channels of the 3x3/2 stem conv.
    output_stride: 32 (plain), 16 or 8; below 32 the last stride(s) become dilation of the blocks after.
    dtype: computation dtype; parameters stay float32.
    bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap), or None.
    bn_running_variance: BatchNorm's running variance, "biased" (flax's) or "unbiased" (PyTorch's).
  """

  blocks: Sequence[Bneck]
  last_features: int
  stem_features: int = 16
  output_stride: int = 32
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"

  @property
  def out_channels(self) -> tuple[int, ...]:
    """Channels of each returned feature, high to low resolution."""
    widths = [self.stem_features] + [b.out for b in self.blocks]
    taps = [widths[i] for i, b in enumerate(self.blocks) if b.stride == 2]
    return tuple(taps) + (self.last_features,)

  @property
  def reductions(self) -> tuple[int, ...]:
    """Stride (input size / feature size) of each returned feature."""
    taps = [stride for (stride, _), b in zip(self._plan()[:-1], self.blocks) if b.stride == 2]
    return tuple(taps) + (self._plan()[-1][0],)

  def _plan(self) -> list[tuple[int, int]]:
    """(stride, dilation) of the input of each block, then of the output of the last one."""
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f"MobileNetV3Encoder.output_stride must be 8, 16 or 32, got {self.output_stride}")
    plan, stride, dilation = [], 2, 1
    for block in self.blocks:
      plan.append((stride, dilation))
      if stride * block.stride > self.output_stride:
        dilation *= block.stride
      else:
        stride *= block.stride
    return plan + [(stride, dilation)]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    conv = light_layers.make_conv(self.dtype)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, running_variance=self.bn_running_variance)
    plan = self._plan()

    x = jnp.asarray(x, self.dtype)
    x = conv(self.stem_features, (3, 3), strides=(2, 2), padding=layers.conv_padding(3), name="stem_conv")(x)
    x = jax.nn.hard_swish(norm(name="stem_bn")(x))
    features = []
    for i, block in enumerate(self.blocks):
      (stride, dilation), (next_stride, next_dilation) = plan[i], plan[i + 1]
      if block.stride == 2:
        features.append(x)
      x = InvertedResidual(block, conv, norm, strides=next_stride // stride,
                           dilation=max(dilation, next_dilation), name=f"block{i}")(x)
    x = conv(self.last_features, (1, 1), padding="VALID", name="last_conv")(x)
    features.append(jax.nn.hard_swish(norm(name="last_bn")(x)))
    return features


MobileNetV3Small = functools.partial(MobileNetV3Encoder, blocks=MOBILENETV3_SMALL, last_features=576)
MobileNetV3Large = functools.partial(MobileNetV3Encoder, blocks=MOBILENETV3_LARGE, last_features=960)

# Encoder name (timm's, without the width multiplier) -> factory; `create_model`'s `encoder` choices.
MOBILENET_ENCODERS = {"mobilenetv3_small": MobileNetV3Small, "mobilenetv3_large": MobileNetV3Large}
