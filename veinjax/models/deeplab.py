"""DeepLab v3+ (Chen et al. 2018) on a ResNet encoder at output stride 16.

- Encoder: any encoder factory taking `output_stride` (a `resnet.ResNetEncoder`); at output stride 16 its
  last stage keeps stride 1 and dilates its 3x3 convs by 2.
- ASPP on the deepest feature: a 1x1 conv, three 3x3 convs with atrous rates 6, 12, 18 and image pooling
  (global average, 1x1 conv, broadcast back), each 256 channels + BN + ReLU; concatenated and projected
  by a 1x1 conv-BN-ReLU to 256. (Double the rates for output stride 8.)
- Decoder: the ASPP output upsampled bilinearly to the stride-4 feature, concatenated with that feature
  projected to 48 channels (1x1 conv-BN-ReLU), two 3x3 conv-BN-ReLU with 256 channels, a 1x1 conv to
  the logits, bilinear x4 to the input size.
- Regular (not depthwise-separable) convolutions, as in the paper's ResNet variant; no dropout (the
  models then need no dropout RNG).
- The image-pooling branch normalises one value per image and channel: in training, use batches of 2 or
  more (PyTorch refuses batch 1 there; here the branch would get zero gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from veinjax.models import layers
from veinjax.models import resnet

ModuleDef = layers.ModuleDef


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: 1x1, 3x3 at each rate, image pooling; concat; 1x1 projection."""

  conv: ModuleDef
  norm: ModuleDef
  features: int = 256
  rates: Sequence[int] = (6, 12, 18)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branches = [layers.ConvBNReLU(self.features, self.conv, self.norm, kernel_size=1, name="conv1x1")(x)]
    for rate in self.rates:
      branches.append(
          layers.ConvBNReLU(
              self.features, self.conv, self.norm, dilation=rate, name=f"atrous{rate}"
          )(x)
      )
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = layers.ConvBNReLU(self.features, self.conv, self.norm, kernel_size=1, name="pool")(pooled)
    # Bilinear upsampling of a 1x1 map is a broadcast.
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
    x = jnp.concatenate(branches, axis=-1)
    return layers.ConvBNReLU(self.features, self.conv, self.norm, kernel_size=1, name="project")(x)


class DeepLabV3Plus(nn.Module):
  """DeepLab v3+: dilated encoder, ASPP, 48-channel low-level skip at stride 4, x4 bilinear upsampling.

  Attributes:
    encoder: encoder factory accepting `output_stride`, `dtype`, `bn_axis_name`, `bn_running_variance`;
      `resnet.ResNet34` by default, and exposing `reductions` (the stride of each feature) to find the
      stride-4 one.
    num_classes: logits per pixel (1 = one sigmoid logit).
    output_stride: stride of the deepest encoder feature (16 as in the paper's default).
    atrous_rates: ASPP rates, for output stride 16.
    aspp_features, low_level_features, decoder_features: channel widths (256, 48, 256 in the paper).
    dtype: computation dtype; parameters and the returned logits are float32.
    bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap), or None.
    bn_running_variance: BatchNorm's running variance, "biased" (flax's) or "unbiased" (PyTorch's).
  """

  encoder: ModuleDef = resnet.ResNet34
  num_classes: int = 1
  output_stride: int = 16
  atrous_rates: Sequence[int] = (6, 12, 18)
  aspp_features: int = 256
  low_level_features: int = 48
  decoder_features: int = 256
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_input(x)
    height, width = x.shape[1:3]
    conv = layers.make_conv(self.dtype)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, running_variance=self.bn_running_variance)
    encoder = self.encoder(
        output_stride=self.output_stride, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
        bn_running_variance=self.bn_running_variance, name="encoder"
    )
    features = encoder(x, train)
    low = features[encoder.reductions.index(4)]

    y = ASPP(conv, norm, self.aspp_features, self.atrous_rates, name="aspp")(features[-1])
    y = layers.resize_bilinear(y, *low.shape[1:3])
    low = layers.ConvBNReLU(self.low_level_features, conv, norm, kernel_size=1, name="low_level")(low)
    y = jnp.concatenate([y, low], axis=-1)
    y = layers.ConvBNReLU(self.decoder_features, conv, norm, name="decoder_conv1")(y)
    y = layers.ConvBNReLU(self.decoder_features, conv, norm, name="decoder_conv2")(y)
    logits = layers.segmentation_head(y, self.num_classes, 1, self.dtype)
    return layers.resize_bilinear(logits, height, width)
