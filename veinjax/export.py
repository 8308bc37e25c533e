"""Exporting a trained run as a self-contained file for a device: SavedModel, TFLite or ONNX.

  path = export_workdir("runs/realtime", "tflite", output="vein.tflite", quantize="int8")
  model = veinjax.exported.load(path)          # then model(frame_uint8) -> probabilities

Every export is the same function: uint8 frames [1, S, S, C] at the run's image size (S = config.image_size,
C = config.in_channels) -> float32 class probabilities [1, S, S, K] (the sigmoid of one logit when the run
has num_classes = 1, else the softmax). The preprocessing is inside the graph (x / 255, then the run's
input_mean / input_std when it records one), exactly as `veinjax.data.pipeline.preprocess_for_model` does it
for a frame already at the model's size; a device needs nothing else. Bringing a frame to S x S (and the
mask back) stays the caller's job, as `veinjax.inference.Predictor` does on the host.

How each format is made:
- saved_model: `jax2tf` with native serialization (the StableHLO module inside an XlaCallModule op), lowered
  for CPU, CUDA and TPU so the same directory serves on any of them.
- tflite: the TensorFlow Lite converter, from the same function lowered for CPU; quantize = float16
  (weights in float16), dynamic (int8 weights, float activations) or int8 (int8 weights and activations,
  calibrated on `num_calibration_frames` frames of the run's own train split; input uint8, output float32).
- onnx: the TFLite file above converted by tf2onnx (`from_tflite`; tf2onnx cannot read an XlaCallModule),
  so each quantisation of the TFLite file has its ONNX twin.

Exports do not depend on the machine that made them: the CPU-only small-map convolution path of
`veinjax.models.layers` is chosen when a function is traced, so every export is traced inside
`layers.lax_convolutions()`, the plain `lax.conv_general_dilated` graph (tests/export_test.py checks the
export against the JAX model). Next to each export, `<output>.json` records what it expects and where it
came from (`veinjax.exported` reads it to check frames).

This module needs TensorFlow (and tf2onnx for ONNX); running an export does not (`veinjax.exported`).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from veinjax import inference
from veinjax import steps
from veinjax import workdir as workdir_lib
from veinjax.exported import INPUT_NAME, METADATA_SUFFIX
from veinjax.models import layers

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
ONNX_OPSET = 17
_SAVED_MODEL_PLATFORMS = ("cpu", "cuda", "tpu")


def check_options(fmt: str, quantize: str) -> None:
  """Raises ValueError naming --format / --quantize for an unknown or unsupported choice."""
  steps.check_choice(fmt, FORMATS, "--format")
  steps.check_choice(quantize, QUANTIZATIONS, "--quantize")
  if fmt == "saved_model" and quantize != "none":
    raise ValueError(f"--quantize={quantize} applies to tflite and onnx exports; a SavedModel is float32 "
                     "(use --format=tflite or --format=onnx, or --quantize=none).")


def default_output(workdir: str, fmt: str, quantize: str) -> str:
  """WORKDIR/export/model[_<quantize>].<ext> (a directory for saved_model)."""
  suffix = "" if quantize == "none" else f"_{quantize}"
  extension = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}[fmt]
  name = "saved_model" if fmt == "saved_model" else f"model{suffix}{extension}"
  return os.path.join(workdir, "export", name)


def frame_function(model, variables, config: ml_collections.ConfigDict):
  """The exported computation: uint8 [N, S, S, C] -> float32 probabilities [N, S, S, K] (jax-traceable)."""
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  (its checked input_normalization)
  normalization = pipeline.input_normalization(config)
  variables = jax.tree.map(jnp.asarray, variables)

  def probabilities(frames_uint8):
    images = frames_uint8.astype(jnp.float32) / 255.0  # as pipeline._to_unit_interval
    if normalization is not None:
      mean, std = normalization
      images = (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return inference.probabilities_from_logits(steps.predict_logits(model, variables, images))

  return probabilities


def _tf_function(function, config, platforms):
  """`function` as a tf.function of one uint8 [1, S, S, C] argument, traced on the plain convolution path."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  signature = [tf.TensorSpec((1, config.image_size, config.image_size, config.in_channels), tf.uint8,
                             name=INPUT_NAME)]
  with layers.lax_convolutions():
    converted = jax2tf.convert(function, with_gradient=False, native_serialization_platforms=platforms)
    module = tf.Module()
    module.serve = tf.function(converted, input_signature=signature, autograph=False)
    concrete = module.serve.get_concrete_function()  # traced here, inside the context
  return module, concrete


def save_saved_model(function, config, path: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  module, concrete = _tf_function(function, config, _SAVED_MODEL_PLATFORMS)
  tf.saved_model.save(module, path, signatures={"serving_default": concrete})


def tflite_bytes(function, config, quantize: str, calibration_frames: np.ndarray | None = None) -> bytes:
  """The TFLite flatbuffer of `function` (see the module docstring for each quantisation)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  module, concrete = _tf_function(function, config, ("cpu",))
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
  if quantize in ("float16", "dynamic", "int8"):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  if quantize == "int8":
    if calibration_frames is None or len(calibration_frames) == 0:
      raise ValueError("--quantize=int8 needs calibration frames from the run's train split, and none were "
                       "found; check the run's dataset (--config.dataset.*) or use --quantize=dynamic.")
    converter.representative_dataset = lambda: ([frame[None]] for frame in calibration_frames)
  return converter.convert()


def save_onnx(tflite_model: bytes, path: str) -> None:
  """ONNX from a TFLite flatbuffer, through tf2onnx."""
  try:
    import tf2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("--format=onnx needs tf2onnx (and onnx): pip install tf2onnx onnx") from e
  with tempfile.TemporaryDirectory() as tmp:
    source = os.path.join(tmp, "model.tflite")
    with open(source, "wb") as f:
      f.write(tflite_model)
    tf2onnx.convert.from_tflite(source, opset=ONNX_OPSET, output_path=path)


def split_examples(config: ml_collections.ConfigDict, split: str,
                   count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """uint8 frames [N, S, S, C] (what an export takes) and masks [N, S, S] of a split of the run's data, the
  first `count` (None: all), resized as the pipeline does it; int8 calibration reads the train split's."""
  from veinjax.data import pipeline, sources  # pylint: disable=g-import-not-at-top  (TensorFlow)
  raw = sources.load_raw_split(config, split)
  frames, masks = [], []
  for example in (raw if count is None else raw.take(count)):
    image, mask = pipeline.resize_example(example["image"], example["mask"], config.image_size,
                                          config.resize_method)
    frames.append(image.numpy())
    masks.append(mask.numpy())
  if not frames:
    return np.zeros((0,), np.uint8), np.zeros((0,), np.uint8)
  return np.stack(frames), np.stack(masks)


def metadata(config, workdir: str, checkpoint: str, fmt: str, quantize: str, step: int | None) -> dict:
  """What an export expects and returns, and where it came from (written as <output>.json)."""
  size, channels = int(config.image_size), int(config.in_channels)
  return {
      "format": fmt, "quantize": quantize,
      "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [1, size, size, channels]},
      "output": {"dtype": "float32", "shape": [1, size, size, int(config.num_classes)],
                 "meaning": "sigmoid of one logit" if config.num_classes == 1 else "softmax over classes"},
      "resize_method": config.resize_method,
      "input_mean": list(config.get("input_mean", ()) or ()), "input_std": list(config.get("input_std", ()) or ()),
      "model": config.model, "encoder": config.get("encoder", ""), "dataset": config.dataset.name,
      "workdir": os.path.abspath(workdir), "checkpoint": checkpoint, "step": step,
  }


def export_workdir(workdir: str, fmt: str, output: str | None = None, quantize: str = "none",
                   checkpoint: str = "best", num_calibration_frames: int = 100) -> str:
  """Exports a train.py run's `checkpoint` as `fmt`; returns the written path (see the module docstring).

  Raises:
    ValueError: an unknown format or quantisation, a workdir without the checkpoint, int8 without frames.
  """
  check_options(fmt, quantize)
  if not os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    raise ValueError(f"--workdir={workdir} holds no {workdir_lib.CONFIG_FILE}: give a train.py workdir.")
  config = workdir_lib.load_config(workdir)
  variables, meta = steps.restore_variables(config, steps.create_model(config), workdir, checkpoint)
  config = ml_collections.ConfigDict(config.to_dict())
  config.half_precision = False  # the export computes in float32 (quantisation is --quantize's job)
  model = steps.create_model(config)
  function = frame_function(model, variables, config)
  output = output or default_output(workdir, fmt, quantize)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  if fmt == "saved_model":
    tmp = output.rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_saved_model(function, config, tmp)
    shutil.rmtree(output, ignore_errors=True)
    os.replace(tmp, output)
  else:
    frames = split_examples(config, "train", num_calibration_frames)[0] if quantize == "int8" else None
    flatbuffer = tflite_bytes(function, config, quantize, frames)
    tmp = f"{output}.tmp"
    if fmt == "tflite":
      with open(tmp, "wb") as f:
        f.write(flatbuffer)
    else:
      save_onnx(flatbuffer, tmp)
    os.replace(tmp, output)
  workdir_lib.write_json(output.rstrip(os.sep) + METADATA_SUFFIX,
                         metadata(config, workdir, checkpoint, fmt, quantize, meta.get("step")))
  logging.info("Exported %s (%s, quantize=%s) to %s", workdir, fmt, quantize, output)
  return output
