"""U-Net decoders: the encoder-agnostic one of ResNet34-UNet, and the original U-Net.

`EncoderUNet` is segmentation_models_pytorch's `Unet(encoder)`: five `DecoderBlock`s (x2 nearest upsample,
concatenate the encoder feature of that resolution, two 3x3 conv-BN-ReLU) on the features of any encoder
with strides 2, 4, 8, 16, 32, then a 3x3 conv to the logits. With `ResNet34` it is the paper's
ResNet34-UNet: 24,430,097 parameters for 1 input channel and 1 class, as `smp.Unet("resnet34",
in_channels=1, classes=1)`.

`UNet` is Ronneberger et al. (2015) with "same" padding and BatchNorm: 64-128-256-512-1024 double-conv
stages (`widths`: narrower or fewer for a light U-Net) and four 2x2 max-pools, 2x2 transposed-conv
("up-conv") upsampling that halves the channels, and a 1x1 conv to the logits. It needs H, W divisible by
16 only, but, like every veinjax model, it accepts sizes divisible by 32, so all models train and evaluate
on exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from veinjax.models import layers
from veinjax.models import resnet

ModuleDef = layers.ModuleDef
# The original U-Net's contracting stages (Ronneberger et al. 2015).
UNET_WIDTHS = (64, 128, 256, 512, 1024)


class DecoderBlock(nn.Module):
  """x2 nearest upsample, concatenate `skip` (if any) on channels, two 3x3 conv-BN-ReLU."""

  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
    x = layers.upsample_nearest2x(x)
    if skip is not None:
      if skip.shape[:3] != x.shape[:3]:
        raise ValueError(
            f"DecoderBlock: skip feature {tuple(skip.shape)} does not match the upsampled input "
            f"{tuple(x.shape)} in N, H, W; the encoder must return features at strides 2, 4, 8, 16, 32"
        )
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    x = layers.ConvBNReLU(self.features, self.conv, self.norm, name="conv1")(x)
    return layers.ConvBNReLU(self.features, self.conv, self.norm, name="conv2")(x)


class UNetDecoder(nn.Module):
  """smp's Unet decoder: one `DecoderBlock` per entry of `decoder_channels`, deepest feature first.

  Takes the encoder features high to low resolution (as encoders return them). The deepest one is the
  decoder input; the others are the skips, deepest first; blocks beyond the skips get none.
  Output: stride 1 (with five blocks on a stride-32 encoder), `decoder_channels[-1]` channels.
  """

  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"
  kernel_init: layers.Initializer = layers.conv_kernel_init

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
    conv = layers.make_conv(self.dtype, kernel_init=self.kernel_init)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, running_variance=self.bn_running_variance)
    x = features[-1]
    skips = list(features[-2::-1])
    if len(skips) > len(self.decoder_channels):
      raise ValueError(
          f"UNetDecoder has {len(self.decoder_channels)} blocks but the encoder gave "
          f"{len(skips)} skip features; give one decoder channel count per skip at least"
      )
    skips += [None] * (len(self.decoder_channels) - len(skips))
    for i, (channels, skip) in enumerate(zip(self.decoder_channels, skips)):
      x = DecoderBlock(channels, conv, norm, name=f"block{i + 1}")(x, skip)
    return x


class EncoderUNet(nn.Module):
  """A U-Net decoder on a swappable encoder (smp's `Unet`); with `resnet.ResNet34` it is ResNet34-UNet.

  Attributes:
    encoder: encoder factory, e.g. `resnet.ResNet34`; called with `dtype`, `bn_axis_name`,
      `bn_running_variance`.
    num_classes: logits per pixel (1 = one sigmoid logit).
    decoder_channels: output channels of the five decoder blocks.
    dtype: computation dtype; parameters and the returned logits are float32.
    bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap), or None.
    bn_running_variance: BatchNorm's running variance, "biased" (flax's) or "unbiased" (PyTorch's).
    decoder_kernel_init: the decoder convs' kernel initialiser (`layers.conv_kernel_init`, He-normal on
      fan-out; smp's: `layers.smp_decoder_kernel_init`).
    head_kernel_init: the head's kernel initialiser; None = flax's default (LeCun normal; smp's:
      `layers.smp_head_kernel_init`). The head's bias starts at 0 either way.
  """

  encoder: layers.ModuleDef = resnet.ResNet34
  num_classes: int = 1
  decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"
  decoder_kernel_init: layers.Initializer = layers.conv_kernel_init
  head_kernel_init: layers.Initializer | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_input(x)
    features = self.encoder(dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                            bn_running_variance=self.bn_running_variance, name="encoder")(x, train)
    y = UNetDecoder(self.decoder_channels, self.dtype, self.bn_axis_name, self.bn_running_variance,
                    self.decoder_kernel_init, name="decoder")(features, train)
    return layers.segmentation_head(y, self.num_classes, 3, self.dtype, kernel_init=self.head_kernel_init)


class UNetEncoder(nn.Module):
  """U-Net's contracting path: double 3x3 conv-BN-ReLU stages, a 2x2 max-pool before all but the first.

  Returns each stage's output, high to low resolution (strides 1, 2, 4, 8, 16).
  """

  widths: Sequence[int] = UNET_WIDTHS
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"

  @property
  def out_channels(self) -> tuple[int, ...]:
    return tuple(self.widths)

  @property
  def reductions(self) -> tuple[int, ...]:
    return tuple(2**i for i in range(len(self.widths)))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    conv = layers.make_conv(self.dtype)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, running_variance=self.bn_running_variance)
    x = jnp.asarray(x, self.dtype)
    features = []
    for i, width in enumerate(self.widths):
      if i > 0:
        x = layers.max_pool(x, (2, 2), strides=(2, 2))
      x = layers.ConvBNReLU(width, conv, norm, name=f"down{i}_conv1")(x)
      x = layers.ConvBNReLU(width, conv, norm, name=f"down{i}_conv2")(x)
      features.append(x)
    return features


class UpBlock(nn.Module):
  """U-Net expansive step: 2x2/2 transposed conv to `features`, concatenate `skip`, two conv-BN-ReLU.

  The up-conv has no bias: the BatchNorm after the next conv removes a per-channel offset anyway.
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
    up = layers.make_conv(self.dtype, nn.ConvTranspose)
    x = up(self.features, (2, 2), strides=(2, 2), padding="VALID", name="upconv")(x)
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    x = layers.ConvBNReLU(self.features, self.conv, self.norm, name="conv1")(x)
    return layers.ConvBNReLU(self.features, self.conv, self.norm, name="conv2")(x)


class UNet(nn.Module):
  """The original U-Net (Ronneberger et al. 2015) with same padding and BatchNorm.

  Attributes:
    num_classes: logits per pixel (1 = one sigmoid logit).
    widths: channels of the contracting stages (the original's five by default; fewer stages pool fewer
      times, so the input needs H, W divisible by 2 ** (len(widths) - 1) only).
    dtype: computation dtype; parameters and the returned logits are float32.
    bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap), or None.
    bn_running_variance: BatchNorm's running variance, "biased" (flax's) or "unbiased" (PyTorch's).
  """

  num_classes: int = 1
  widths: Sequence[int] = UNET_WIDTHS
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_input(x)
    conv = layers.make_conv(self.dtype)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, running_variance=self.bn_running_variance)
    features = UNetEncoder(self.widths, self.dtype, self.bn_axis_name, self.bn_running_variance,
                           name="encoder")(x, train)
    y = features[-1]
    for i, skip in enumerate(reversed(features[:-1])):
      y = UpBlock(skip.shape[-1], conv, norm, self.dtype, name=f"up{i + 1}")(y, skip)
    return layers.segmentation_head(y, self.num_classes, 1, self.dtype)
