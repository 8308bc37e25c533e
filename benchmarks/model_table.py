r"""Prints the model table: parameters and forward GFLOPs per image for every model of the zoo.

  python -m benchmarks.model_table                     # 512x512 grayscale, 1 class, batch 1
  python -m benchmarks.model_table --size=256 --in_channels=3
  python -m benchmarks.model_table --models=encoder_unet:mobilenetv3_small,light_unet,ultralight_unet

Parameters count weights, biases and BatchNorm scale and bias (not the BN running statistics).
FLOPs are XLA's cost analysis of the compiled eval-mode forward pass (`train=False`), divided by the
batch size; XLA counts a multiply-add as 2 FLOPs, so GMACs are half the figure. Nothing is allocated or
run: parameters and input are abstract shapes, so this works on any machine (CPU compile only, slow).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app
from absl import flags


import jax

from veinjax import models
from veinjax.models.cost import measure

# Every model once; encoder_unet on a MobileNet (on its default resnet34 it is resnet34_unet's row).
_DEFAULT_MODELS = [name for name in models.MODEL_NAMES if name != "encoder_unet"]
_DEFAULT_MODELS.insert(_DEFAULT_MODELS.index("light_unet"), "encoder_unet:mobilenetv3_small")
_MODELS = flags.DEFINE_list("models", _DEFAULT_MODELS, "Models to measure, `model` or `model:encoder`.")
_ENCODER = flags.DEFINE_string(
    "encoder", "", "Encoder of the models that take one, where `--models` names none (empty: each "
    "model's default, models.DEFAULT_ENCODERS).")
_SIZE = flags.DEFINE_integer("size", 512, "Input height and width (divisible by 32).")
_IN_CHANNELS = flags.DEFINE_integer("in_channels", 1, "Input channels (1 grayscale, 3 RGB).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1, "Output classes.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size compiled; FLOPs are reported per image.")


_DESCRIPTIONS = {
    "resnet34_unet": "U-Net decoder of smp `Unet` (the paper's model with resnet34)",
    "unet": "U-Net (Ronneberger 2015), same padding, BN",
    "fcn8s": "FCN-8s, fc6/fc7 4096 wide, bilinear upsampling",
    "deeplabv3plus": "DeepLab v3+, output stride 16, ASPP 6/12/18",
    "encoder_unet": "the U-Net decoder of smp `Unet` on any encoder",
    "light_unet": "light decoder: a depthwise-separable conv per block, 64-32-24-16, stride-2 logits",
    "ultralight_unet": "light decoder 48-24-16 on its own narrow encoder, stride-4 logits",
}


def _gflops(value: float) -> str:
  """One decimal, as the table always had; two significant digits below 1 (the light models)."""
  return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def markdown_table(rows: Sequence[tuple[str, str, dict]], size: int, in_channels: int) -> str:
  header = (
      f"| model | encoder | description | parameters | forward GFLOPs / {size}x{size}x{in_channels} image |\n"
      "|---|---|---|---:|---:|"
  )
  lines = [
      f"| `{name}` | {encoder} | {_DESCRIPTIONS.get(name, '')} | {r['params']:,} | {_gflops(r['gflops'])} |"
      for name, encoder, r in rows
  ]
  return "\n".join([header] + lines)


def main(argv: Sequence[str]) -> None:
  del argv
  models.check_input_size(_SIZE.value, _SIZE.value)
  rows = []
  for candidate in _MODELS.value:
    name, _, encoder = candidate.partition(":")
    encoder = encoder or _ENCODER.value or models.DEFAULT_ENCODERS.get(name)
    result = measure(name, encoder, _SIZE.value, _IN_CHANNELS.value, _NUM_CLASSES.value, _BATCH.value)
    rows.append((name, models.FIXED_ENCODERS.get(name, encoder), result))
    print(f"measured {candidate}: {result}", file=sys.stderr, flush=True)
  print(markdown_table(rows, _SIZE.value, _IN_CHANNELS.value))
  print(
      f"\nParameters: weights, biases, BN scale and bias (not running statistics), num_classes="
      f"{_NUM_CLASSES.value}. GFLOPs: XLA cost analysis of the compiled eval forward pass on "
      f"{jax.default_backend()}, per image; a multiply-add counts as 2 FLOPs (GMACs = GFLOPs / 2), and taps "
      "that fall on zero padding are not counted."
  )


if __name__ == "__main__":
  app.run(main)
