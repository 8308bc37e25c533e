"""FCN-8s (Long et al. 2015) on a VGG-16 encoder.

Choices, where a modern reimplementation has to pick:
- Encoder: VGG-16 with BatchNorm (torchvision's `vgg16_bn` layout: 13 3x3 convs in stages of 2, 2, 3,
  3, 3 with 64-128-256-512-512 channels, a 2x2 max-pool after each stage), convs without bias since BN
  follows. BN is what lets FCN train from scratch with Adam like the other models.
- fc6 / fc7 as convolutions with the paper's widths: fc6 a 7x7 conv to 4096 channels, fc7 a 1x1 conv to
  4096, each + BN + ReLU, "same" padding (no pad-100-and-crop trick: sizes divisible by 32 line up
  exactly). They hold ~119M of the model's ~134M parameters; `fc_features` shrinks them if needed.
- No dropout (the paper's 0.5 after fc6 / fc7): BN regularises, and the models then need no dropout RNG.
- Score layers: 1x1 convs with bias on fc7 (stride 32), pool4 (16) and pool3 (8); fused by summation.
- Upsampling: fixed bilinear (`jax.image.resize`) x2, x2, x8 instead of the paper's transposed convs.
  The paper initialises its transposed convs to bilinear and fixes the last one; fixed bilinear is the
  parameter-free equivalent and works for any input size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from veinjax.models import layers


class VGGEncoder(nn.Module):
  """VGG with BatchNorm, no classifier: returns pool1..pool5 (strides 2, 4, 8, 16, 32).

  Attributes:
    stage_sizes: 3x3 convs per stage, (2, 2, 3, 3, 3) for VGG-16.
    widths: channels per stage.
    dtype: computation dtype; parameters stay float32.
    bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap), or None.
    bn_running_variance: BatchNorm's running variance, "biased" (flax's) or "unbiased" (PyTorch's).
  """

  stage_sizes: Sequence[int] = (2, 2, 3, 3, 3)
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"

  @property
  def out_channels(self) -> tuple[int, ...]:
    return tuple(self.widths)

  @property
  def reductions(self) -> tuple[int, ...]:
    return tuple(2 ** (i + 1) for i in range(len(self.widths)))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    conv = layers.make_conv(self.dtype)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, running_variance=self.bn_running_variance)
    x = jnp.asarray(x, self.dtype)
    features = []
    for i, (num_convs, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(num_convs):
        x = layers.ConvBNReLU(width, conv, norm, name=f"conv{i + 1}_{j + 1}")(x)
      x = layers.max_pool(x, (2, 2), strides=(2, 2))
      features.append(x)
    return features


VGG16 = functools.partial(VGGEncoder, stage_sizes=(2, 2, 3, 3, 3), widths=(64, 128, 256, 512, 512))


class FCN8s(nn.Module):
  """FCN-8s: VGG-16 + fc6/fc7 convs, score fusion with pool4 and pool3, bilinear upsampling to input.

  Attributes:
    num_classes: logits per pixel (1 = one sigmoid logit).
    fc_features: width of fc6 and fc7 (4096 in the paper).
    fc6_kernel: kernel size of fc6 (7 in the paper: VGG's 7x7 pool5 grid).
    encoder: encoder factory returning pool1..pool5; `VGG16` by default.
    dtype: computation dtype; parameters and the returned logits are float32.
    bn_axis_name: axis name for cross-replica BatchNorm statistics (pmap), or None.
    bn_running_variance: BatchNorm's running variance, "biased" (flax's) or "unbiased" (PyTorch's).
  """

  num_classes: int = 1
  fc_features: int = 4096
  fc6_kernel: int = 7
  encoder: layers.ModuleDef = VGG16
  dtype: layers.Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_running_variance: str = "biased"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_input(x)
    height, width = x.shape[1:3]
    conv = layers.make_conv(self.dtype)
    norm = layers.make_norm(train, self.dtype, self.bn_axis_name, running_variance=self.bn_running_variance)
    _, _, pool3, pool4, pool5 = self.encoder(
        dtype=self.dtype, bn_axis_name=self.bn_axis_name, bn_running_variance=self.bn_running_variance,
        name="encoder"
    )(x, train)

    h = layers.ConvBNReLU(self.fc_features, conv, norm, kernel_size=self.fc6_kernel, name="fc6")(pool5)
    h = layers.ConvBNReLU(self.fc_features, conv, norm, kernel_size=1, name="fc7")(h)

    # Fuse in float32: scores are small tensors, and the sums of three logit maps should not round.
    score = layers.segmentation_head(h, self.num_classes, 1, self.dtype, name="score_fr")
    score = layers.resize_bilinear(score, *pool4.shape[1:3])
    score += layers.segmentation_head(pool4, self.num_classes, 1, self.dtype, name="score_pool4")
    score = layers.resize_bilinear(score, *pool3.shape[1:3])
    score += layers.segmentation_head(pool3, self.num_classes, 1, self.dtype, name="score_pool3")
    return layers.resize_bilinear(score, height, width)
