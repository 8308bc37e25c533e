"""The veinjax model zoo: pure Flax Linen segmentation networks, built by name.

  model = create_model("resnet34_unet", num_classes=1)
  variables = model.init(jax.random.key(0), x, train=False)        # {"params", "batch_stats"}
  logits = model.apply(variables, x, train=False)                   # float32 [N, H, W, num_classes]
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])

`x` is NHWC float with any channel count (1 grayscale, 3 RGB) and H, W divisible by 32.

| name            | architecture                                                           |
|-----------------|------------------------------------------------------------------------|
| `resnet34_unet` | the paper's model: U-Net decoder (smp `Unet`) on a ResNet (`encoder`)  |
| `unet`          | original U-Net (Ronneberger 2015), same padding, BatchNorm             |
| `fcn8s`         | FCN-8s (Long 2015) on VGG-16 with BatchNorm                            |
| `deeplabv3plus` | DeepLab v3+ (Chen 2018) on a ResNet (`encoder`), output stride 16      |

Models import without TensorFlow.
"""

from __future__ import annotations

import numbers
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from veinjax.models import deeplab
from veinjax.models import fcn
from veinjax.models import resnet
from veinjax.models import unet
from veinjax.models.layers import check_input_size
from veinjax.models.layers import count_params

MODEL_NAMES = ("resnet34_unet", "unet", "fcn8s", "deeplabv3plus")
ENCODER_NAMES = tuple(resnet.RESNET_ENCODERS)
DEFAULT_ENCODER = "resnet34"
# Models with a fixed encoder (the `encoder` argument must stay the default), and what it is.
FIXED_ENCODERS = {"unet": "U-Net contracting path", "fcn8s": "VGG-16 with BatchNorm"}
_ENCODER_MODELS = tuple(name for name in MODEL_NAMES if name not in FIXED_ENCODERS)

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODER_NAMES",
    "FIXED_ENCODERS",
    "MODEL_NAMES",
    "check_input_size",
    "count_params",
    "create_model",
]


def create_model(
    name: str,
    *,
    num_classes: int = 1,
    encoder: str = DEFAULT_ENCODER,
    dtype: Any = jnp.float32,
    bn_axis_name: str | None = None,
) -> nn.Module:
  """Builds a segmentation model by name.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: logits per pixel; 1 = one sigmoid "vein" logit, > 1 = softmax over classes.
    encoder: one of `ENCODER_NAMES`, for `resnet34_unet` and `deeplabv3plus` (the name
      `resnet34_unet` is the paper's model; with `encoder="resnet50"` it is a ResNet50-UNet). `unet` and
      `fcn8s` have their own fixed encoders and accept only the default value.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and returned logits stay float32.
    bn_axis_name: pmap / shard_map axis name over which BatchNorm averages its batch statistics.

  Returns:
    An unbound flax.linen.Module; call `init(key, x, train=False)` / `apply(variables, x, train=...)`.

  Raises:
    ValueError: unknown name or encoder (the message lists the valid choices), an encoder given to a
      model with a fixed encoder, or num_classes < 1.
  """
  if name not in MODEL_NAMES:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
  if encoder not in ENCODER_NAMES:
    raise ValueError(f"unknown encoder {encoder!r}; valid encoders: {', '.join(ENCODER_NAMES)}")
  if name not in _ENCODER_MODELS and encoder != DEFAULT_ENCODER:
    raise ValueError(
        f"model {name!r} has a fixed encoder ({FIXED_ENCODERS[name]}); encoder={encoder!r} applies only "
        f"to {', '.join(_ENCODER_MODELS)}"
    )
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f"num_classes must be an integer >= 1 (1 = one sigmoid logit), got {num_classes!r}")
  dtype = jnp.dtype(dtype)
  common = dict(num_classes=int(num_classes), dtype=dtype, bn_axis_name=bn_axis_name)
  encoder_cls = resnet.RESNET_ENCODERS[encoder]
  if name == "resnet34_unet":
    return unet.EncoderUNet(encoder=encoder_cls, **common)
  if name == "unet":
    return unet.UNet(**common)
  if name == "fcn8s":
    return fcn.FCN8s(**common)
  return deeplab.DeepLabV3Plus(encoder=encoder_cls, **common)
