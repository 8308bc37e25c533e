"""ResNet encoders (He et al. 2016) that return their skip features for a segmentation decoder.

The layout is torchvision's (and so segmentation_models_pytorch's): a 7x7/2 stem conv (no bias) + BN +
ReLU, a 3x3/2 max-pool with padding 1, four stages of residual blocks, the stride on the first block of
stages 2-4 (on the 3x3 conv of a Bottleneck, "ResNet v1.5"), and a 1x1 conv + BN projection shortcut
wherever a block changes the shape. There is no classifier: `ResNetEncoder` returns the stem output and
the output of each stage, high to low resolution (strides 2, 4, 8, 16, 32), and declares their channel
counts in `out_channels`, so any decoder can sit on it.

Factories in the flax imagenet style:

  ResNet34 = functools.partial(ResNetEncoder, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
  features = ResNet34(dtype=jnp.bfloat16).apply(variables, x, train=False)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from veinjax.models import layers

ModuleDef = layers.ModuleDef


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN (ReLU between), plus the shortcut, then ReLU (ResNet-18/34).

  `conv` and `norm` are factories (see `layers.make_conv` / `layers.make_norm`), so the block carries
  no dtype or train flag of its own. Output channels: `features * expansion`.
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1

  expansion = 1  # Class constant, not a dataclass field.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(
        self.features,
        (3, 3),
        strides=(self.strides, self.strides),
        padding=layers.conv_padding(3, self.dilation),
        kernel_dilation=(self.dilation, self.dilation),
        name="conv1",
    )(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(
        self.features,
        (3, 3),
        padding=layers.conv_padding(3, self.dilation),
        kernel_dilation=(self.dilation, self.dilation),
        name="conv2",
    )(y)
    y = self.norm(name="bn2")(y)
    if residual.shape != y.shape:
      residual = _projection(residual, y.shape[-1], self.strides, self.conv, self.norm)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, each conv-BN, plus the shortcut (ResNet-50)."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(
        self.features,
        (3, 3),
        strides=(self.strides, self.strides),
        padding=layers.conv_padding(3, self.dilation),
        kernel_dilation=(self.dilation, self.dilation),
        name="conv2",
    )(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.features * self.expansion, (1, 1), padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3")(y)
    if residual.shape != y.shape:
      residual = _projection(residual, y.shape[-1], self.strides, self.conv, self.norm)
    return nn.relu(residual + y)


def _projection(x: jax.Array, features: int, strides: int, conv: ModuleDef, norm: ModuleDef) -> jax.Array:
  """The 1x1 conv + BN shortcut used where a block changes the shape (torchvision's `downsample`)."""
  x = conv(features, (1, 1), strides=(strides, strides), padding="VALID", name="downsample_conv")(x)
  return norm(name="downsample_bn")(x)


class ResNetEncoder(nn.Module):
  """A ResNet without its classifier, returning [stem, stage1, ..., stage4] features.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-34.
    block_cls: `BasicBlock` or `Bottleneck`.
    output_stride: 32 (plain), 16 or 8. Below 32 the last stage(s) trade their stride 2 for dilation
      (every 3x3 conv of such a stage dilated, as segmentation_models_pytorch does), as DeepLab needs.
    dtype: computation dtype; parameters stay float32.
    bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap), or None.
    bn_running_variance: BatchNorm's running variance, "biased" (flax's) or "unbiased" (PyTorch's).
    conv, norm: the convolution and normalisation modules (wrapped by `layers.make_conv/make_norm`).
    stem_kernel_init: the 7x7 stem conv's kernel initialiser (torchvision's, as every other conv, by
      default; smp's from-scratch stem: `layers.smp_stem_kernel_init`).
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  output_stride: int = 32
  stem_features: int = 64
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  stem_kernel_init: layers.Initializer = layers.conv_kernel_init

  @property
  def out_channels(self) -> tuple[int, ...]:
    """Channels of each returned feature, high to low resolution."""
    stages = tuple(self.stem_features * 2**i * self.block_cls.expansion for i in range(len(self.stage_sizes)))
    return (self.stem_features,) + stages

  @property
  def reductions(self) -> tuple[int, ...]:
    """Stride (input size / feature size) of each returned feature."""
    return tuple(stride for stride, _ in self._stage_strides_and_dilations())

  def _stage_strides_and_dilations(self) -> list[tuple[int, int]]:
    """(total stride, dilation) after the stem and after each stage."""
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f"ResNetEncoder.output_stride must be 8, 16 or 32, got {self.output_stride}")
    out = [(2, 1)]
    stride, dilation = 4, 1  # After the stem's max-pool.
    for i in range(len(self.stage_sizes)):
      if i > 0:
        if stride < self.output_stride:
          stride *= 2
        else:
          dilation *= 2
      out.append((stride, dilation))
    return out

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    conv = layers.make_conv(self.dtype, self.conv)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, self.norm, self.bn_running_variance)
    plan = self._stage_strides_and_dilations()

    x = jnp.asarray(x, self.dtype)
    x = conv(self.stem_features, (7, 7), strides=(2, 2), padding=layers.conv_padding(7),
             kernel_init=self.stem_kernel_init, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    features = [x]
    # Zero padding, not max_pool's -inf: the same maxima after a ReLU (every window holds a value >= 0),
    # and an int8 TFLite export cannot quantise -inf (XNNPACK and the reference kernels reject the pad).
    x = layers.max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), strides=(2, 2))

    previous_stride = 4
    for i, num_blocks in enumerate(self.stage_sizes):
      stride, dilation = plan[i + 1]
      for j in range(num_blocks):
        x = self.block_cls(
            features=self.stem_features * 2**i,
            conv=conv,
            norm=norm,
            strides=stride // previous_stride if j == 0 else 1,
            dilation=dilation,
            name=f"layer{i + 1}_{j}",
        )(x)
      previous_stride = stride
      features.append(x)
    return features


ResNet18 = functools.partial(ResNetEncoder, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNetEncoder, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNetEncoder, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)

# Encoder name -> factory; the `encoder` choices of `create_model`.
RESNET_ENCODERS = {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50}
