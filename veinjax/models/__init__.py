"""The veinjax model zoo: pure Flax Linen segmentation networks, built by name.

  model = create_model("resnet34_unet", num_classes=1)
  variables = model.init(jax.random.key(0), x, train=False)        # {"params", "batch_stats"}
  logits = model.apply(variables, x, train=False)                   # float32 [N, H, W, num_classes]
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])

`x` is NHWC float with any channel count (1 grayscale, 3 RGB) and H, W divisible by 32.

| name              | default `encoder`   | architecture                                                    |
|-------------------|---------------------|-----------------------------------------------------------------|
| `resnet34_unet`   | resnet34            | the paper's model: the U-Net decoder of smp `Unet` on `encoder` |
| `unet`            | (its own)           | original U-Net (Ronneberger 2015), same padding, BatchNorm;     |
|                   |                     | `unet_widths` sets its stages (default 64-128-256-512-1024)     |
| `fcn8s`           | (its own: VGG-16)   | FCN-8s (Long 2015) on VGG-16 with BatchNorm                     |
| `deeplabv3plus`   | resnet34            | DeepLab v3+ (Chen 2018) on `encoder`, output stride 16          |
| `encoder_unet`    | resnet34            | the same U-Net decoder on any `encoder`, under an honest name:  |
|                   |                     | `create_model("encoder_unet", encoder="mobilenetv3_small")`     |
| `light_unet`      | mobilenetv3_small   | light decoder for real time: one depthwise-separable conv per   |
|                   |                     | block, 64-32-24-16 channels, stride-2 logits upsampled          |
| `ultralight_unet` | (its own)           | 0.17M parameters: a narrow MobileNetV3-style encoder under the  |
|                   |                     | light decoder (48-24-16), stride-4 logits upsampled             |

Encoders (`ENCODER_NAMES`; any of them under any model with an `encoder`): `resnet18`, `resnet34`,
`resnet50` (torchvision's ResNets), `mobilenetv3_small`, `mobilenetv3_large` (torchvision's MobileNetV3
`features`). `resnet34_unet` and `encoder_unet` are one network; the first name is the paper's and stays.

Two options train as the PyTorch reference, smp's `Unet("resnet34")`, does (issue 18), neither changing
the variables' names or shapes: `bn_running_variance="unbiased"` (PyTorch's BatchNorm running variance,
every model) and `model_init="smp"` (smp's initialisation; smp's U-Net on a ResNet encoder only).

Models import without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import numbers
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from veinjax.models import deeplab
from veinjax.models import fcn
from veinjax.models import layers
from veinjax.models import light_decoder
from veinjax.models import mobilenet
from veinjax.models import resnet
from veinjax.models import ultralight
from veinjax.models import unet
from veinjax.models.layers import BN_RUNNING_VARIANCES
from veinjax.models.layers import check_input_size
from veinjax.models.layers import count_params

MODEL_NAMES = (
    "resnet34_unet", "unet", "fcn8s", "deeplabv3plus", "encoder_unet", "light_unet", "ultralight_unet"
)
_ENCODERS = {**resnet.RESNET_ENCODERS, **mobilenet.MOBILENET_ENCODERS}
ENCODER_NAMES = tuple(_ENCODERS)
DEFAULT_ENCODER = "resnet34"
# Models with a fixed encoder (`encoder` is None or DEFAULT_ENCODER, and ignored), and what it is.
FIXED_ENCODERS = {
    "unet": "U-Net contracting path",
    "fcn8s": "VGG-16 with BatchNorm",
    "ultralight_unet": "UltraLight (MobileNetV3-style, 8-128 channels)",
}
_ENCODER_MODELS = tuple(name for name in MODEL_NAMES if name not in FIXED_ENCODERS)
# The encoder of each model with an `encoder` when none is given.
DEFAULT_ENCODERS = {name: DEFAULT_ENCODER for name in _ENCODER_MODELS} | {"light_unet": "mobilenetv3_small"}
# Initialisations (`model_init`): veinjax's own, or segmentation_models_pytorch's (see `layers`), which is
# defined for smp's Unet on a torchvision ResNet, i.e. these models on these encoders.
MODEL_INITS = ("veinjax", "smp")
SMP_INIT_MODELS = ("resnet34_unet", "encoder_unet")
SMP_INIT_ENCODERS = tuple(resnet.RESNET_ENCODERS)
# The original U-Net's contracting stages; `unet_widths` narrows it (e.g. 16-32-64-128-256, a common light
# U-Net) or makes it shallower (fewer stages, fewer poolings). At most 6 stages: inputs are divisible by 32.
UNET_WIDTHS = unet.UNET_WIDTHS
MAX_UNET_STAGES = 6
# Those encoders with smp's from-scratch stem (built once, so that two such models compare equal).
_SMP_ENCODERS = {name: functools.partial(factory, stem_kernel_init=layers.smp_stem_kernel_init)
                 for name, factory in resnet.RESNET_ENCODERS.items()}

__all__ = [
    "BN_RUNNING_VARIANCES",
    "DEFAULT_ENCODER",
    "DEFAULT_ENCODERS",
    "ENCODER_NAMES",
    "FIXED_ENCODERS",
    "MAX_UNET_STAGES",
    "MODEL_INITS",
    "MODEL_NAMES",
    "SMP_INIT_ENCODERS",
    "SMP_INIT_MODELS",
    "UNET_WIDTHS",
    "check_input_size",
    "count_params",
    "create_model",
]


def create_model(
    name: str,
    *,
    num_classes: int = 1,
    encoder: str | None = None,
    dtype: Any = jnp.float32,
    bn_axis_name: str | None = None,
    bn_running_variance: str = "biased",
    model_init: str = "veinjax",
    unet_widths: Sequence[int] | None = None,
) -> nn.Module:
  """Builds a segmentation model by name.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: logits per pixel; 1 = one sigmoid "vein" logit, > 1 = softmax over classes.
    encoder: one of `ENCODER_NAMES`, for the models not in `FIXED_ENCODERS`; None: the model's
      `DEFAULT_ENCODERS` entry (resnet34; mobilenetv3_small for `light_unet`). (The name `resnet34_unet`
      is the paper's model; with `encoder="resnet50"` it is a ResNet50-UNet, better asked for as
      `encoder_unet`.) `unet`, `fcn8s` and `ultralight_unet` have their own fixed encoders and accept
      only None or `DEFAULT_ENCODER`, which they ignore.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and returned logits stay float32.
    bn_axis_name: pmap / shard_map axis name over which BatchNorm averages its batch statistics.
    bn_running_variance: the running variance every BatchNorm keeps in training: "biased" (flax's, the
      batch variance it normalises with) or "unbiased" (PyTorch's: times n / (n - 1), n values per
      channel over all replicas). Training-mode outputs are the same either way.
    model_init: "veinjax" (every conv He-normal on fan-out as torchvision's, head LeCun normal) or "smp"
      (segmentation_models_pytorch's: decoder convs kaiming-uniform on fan-in, head xavier-uniform, a
      stem for other than 3 input channels PyTorch's default conv init; the rest of the encoder
      torchvision's, as veinjax's), for `SMP_INIT_MODELS` on `SMP_INIT_ENCODERS` only.
    unet_widths: `unet` only: the channels of its contracting stages, one to `MAX_UNET_STAGES` positive
      integers (None: `UNET_WIDTHS`, the original's). The expansive path mirrors them.

  Returns:
    An unbound flax.linen.Module; call `init(key, x, train=False)` / `apply(variables, x, train=...)`.

  Raises:
    ValueError: unknown name, encoder, bn_running_variance or model_init (the message lists the valid
      choices), an encoder given to a model with a fixed encoder, num_classes < 1, or model_init="smp"
      for a model it is not defined for, unet_widths for another model than `unet` or not 1 to
      `MAX_UNET_STAGES` positive integers.
  """
  if name not in MODEL_NAMES:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
  if encoder is not None and encoder not in ENCODER_NAMES:
    raise ValueError(f"unknown encoder {encoder!r}; valid encoders: {', '.join(ENCODER_NAMES)}")
  if name not in _ENCODER_MODELS and encoder not in (None, DEFAULT_ENCODER):
    raise ValueError(
        f"model {name!r} has a fixed encoder ({FIXED_ENCODERS[name]}); encoder={encoder!r} applies only "
        f"to {', '.join(_ENCODER_MODELS)}"
    )
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f"num_classes must be an integer >= 1 (1 = one sigmoid logit), got {num_classes!r}")
  layers.check_running_variance(bn_running_variance)
  if model_init not in MODEL_INITS:
    raise ValueError(f"unknown model_init {model_init!r}; choose one of {', '.join(MODEL_INITS)}")
  encoder_name = None if name in FIXED_ENCODERS else encoder or DEFAULT_ENCODERS[name]
  if model_init == "smp" and (name not in SMP_INIT_MODELS or encoder_name not in SMP_INIT_ENCODERS):
    got = f"model {name!r}" + (f" on encoder {encoder_name!r}" if encoder_name else "")
    raise ValueError(
        f"model_init='smp' is segmentation_models_pytorch's initialisation of its Unet on a ResNet, defined "
        f"for models {', '.join(SMP_INIT_MODELS)} with encoders {', '.join(SMP_INIT_ENCODERS)}; got {got}. "
        "Use model_init='veinjax' for this model.")
  if unet_widths is not None:
    _check_unet_widths(name, unet_widths)
  dtype = jnp.dtype(dtype)
  common = dict(num_classes=int(num_classes), dtype=dtype, bn_axis_name=bn_axis_name,
                bn_running_variance=bn_running_variance)
  if name == "unet":
    return unet.UNet(widths=tuple(int(w) for w in unet_widths or UNET_WIDTHS), **common)
  if name == "fcn8s":
    return fcn.FCN8s(**common)
  if name == "ultralight_unet":
    return ultralight.UltraLightUNet(**common)
  encoder_cls = _ENCODERS[encoder_name]
  if name in ("resnet34_unet", "encoder_unet"):
    if model_init == "smp":
      return unet.EncoderUNet(
          encoder=_SMP_ENCODERS[encoder_name], decoder_kernel_init=layers.smp_decoder_kernel_init,
          head_kernel_init=layers.smp_head_kernel_init, **common)
    return unet.EncoderUNet(encoder=encoder_cls, **common)
  if name == "light_unet":
    return light_decoder.LightUNet(encoder=encoder_cls, **common)
  return deeplab.DeepLabV3Plus(encoder=encoder_cls, **common)


def _check_unet_widths(name: str, widths) -> None:
  if name != "unet":
    raise ValueError(f"unet_widths applies only to model 'unet', not {name!r}")
  ok = (isinstance(widths, Sequence) and not isinstance(widths, str) and 1 <= len(widths) <= MAX_UNET_STAGES
        and all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths))
  if not ok:
    raise ValueError(f"unet_widths must be 1 to {MAX_UNET_STAGES} positive integers, the channels of each "
                     f"contracting stage (e.g. (16, 32, 64, 128, 256)); got {widths!r}")
