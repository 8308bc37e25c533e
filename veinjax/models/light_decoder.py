"""A light U-Net decoder for real time on a small CPU: depthwise-separable blocks, few channels.

`LightUNetDecoder` has the shape of smp's U-Net decoder (one block per skip, deepest first: x2 nearest
upsample, joined by the encoder feature of that resolution), but each block is one
`light_layers.DepthwiseSeparable` conv (3x3 depthwise-BN-ReLU, 1x1 pointwise-BN-ReLU) over both instead of two
dense 3x3 convs, with a fraction of the channels. With four blocks on a stride-32 encoder it stops at stride
2: `LightUNet` puts a 1x1 conv there and upsamples the logits bilinearly to the input size (as DeepLab v3+
does from stride 4), because a full-resolution stage is the costliest part of a small decoder on a CPU (memory
traffic, not arithmetic). It sits on any encoder that returns features at strides 2 ... 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from veinjax.models import layers
from veinjax.models import light_layers
from veinjax.models import mobilenet

ModuleDef = layers.ModuleDef


class LightDecoderBlock(nn.Module):
  """x2 nearest upsample, then one depthwise-separable conv to `features` over it and `skip` (if any)."""

  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
    inputs = [layers.upsample_nearest2x(x)]
    if skip is not None:
      if skip.shape[:3] != inputs[0].shape[:3]:
        raise ValueError(
            f"LightDecoderBlock: skip feature {tuple(skip.shape)} does not match the upsampled input "
            f"{tuple(inputs[0].shape)} in N, H, W; the encoder must return features at strides 2, 4, 8, 16, "
            "32"
        )
      inputs.append(skip.astype(x.dtype))
    return light_layers.DepthwiseSeparable(self.features, self.conv, self.norm, name="conv")(*inputs)


class LightUNetDecoder(nn.Module):
  """One `LightDecoderBlock` per entry of `decoder_channels`, deepest encoder feature first.

  Takes the encoder features high to low resolution; the deepest is the input, the others the skips
  (deepest first); blocks beyond the skips get none. Output stride: 32 / 2**len(decoder_channels).
  """

  decoder_channels: Sequence[int] = (64, 32, 24, 16)
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
    conv = light_layers.make_conv(self.dtype)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, running_variance=self.bn_running_variance)
    x = features[-1]
    skips = list(features[-2::-1])[:len(self.decoder_channels)]
    skips += [None] * (len(self.decoder_channels) - len(skips))
    for i, (channels, skip) in enumerate(zip(self.decoder_channels, skips)):
      x = LightDecoderBlock(channels, conv, norm, name=f"block{i + 1}")(x, skip)
    return x


class LightUNet(nn.Module):
  """`LightUNetDecoder` on a swappable encoder, a 1x1 conv to the logits, bilinear to the input size.

  Attributes:
    encoder: encoder factory, e.g. `mobilenet.MobileNetV3Small`; called with `dtype`, `bn_axis_name`,
      `bn_running_variance`.
    num_classes: logits per pixel (1 = one sigmoid logit).
    decoder_channels: output channels of the decoder blocks (4 blocks: stride-2 logits, upsampled).
    dtype: computation dtype; parameters and the returned logits are float32.
    bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap), or None.
    bn_running_variance: BatchNorm's running variance, "biased" (flax's) or "unbiased" (PyTorch's).
  """

  encoder: ModuleDef = mobilenet.MobileNetV3Small
  num_classes: int = 1
  decoder_channels: Sequence[int] = (64, 32, 24, 16)
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_input(x)
    height, width = x.shape[1:3]
    features = self.encoder(dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                            bn_running_variance=self.bn_running_variance, name="encoder")(x, train)
    decoder = LightUNetDecoder(self.decoder_channels, self.dtype, self.bn_axis_name, self.bn_running_variance,
                               name="decoder")
    y = decoder(features, train)
    logits = layers.segmentation_head(y, self.num_classes, 1, self.dtype)
    if height % logits.shape[1] or logits.shape[1] > height:
      raise ValueError(
          f"LightUNet: the decoder's output {logits.shape[1]}x{logits.shape[2]} is not an integer fraction "
          f"of the input {height}x{width}; give at most one decoder block per encoder stride")
    factor = height // logits.shape[1]
    return logits if factor == 1 else light_layers.upsample_bilinear(logits, factor)
