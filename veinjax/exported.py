"""Running an exported veinjax model (`export.py`) with its own runtime: TFLite, ONNX or a SavedModel.

  model = veinjax.exported.load("vein.tflite", num_threads=1)
  probabilities = model(frame)      # uint8 [S, S] or [S, S, C] (or [1, S, S, C]) -> float32 [S, S, K]
  mask = model.mask(frame)          # uint8 [S, S] class indices (sigmoid > 0.5, or the argmax)

The runtime follows the file: `.tflite` runs with ai-edge-litert (XNNPACK), `.onnx` with onnxruntime, a
directory with TensorFlow (a SavedModel). Frames must already be at the export's size: `<path>.json`
(written by `veinjax.export`) says which; a frame of another size, dtype or channel count is an error naming
the file and what it expects. Neither TensorFlow nor JAX is needed for TFLite and ONNX files.
"""

from __future__ import annotations

import json
import os

import numpy as np


INPUT_NAME = "frame"  # the exported function's argument (uint8 [1, S, S, C])
METADATA_SUFFIX = ".json"  # <export>.json beside each export: what it expects, where it came from


class ExportedModel:
  """One exported file and its runtime (see the module docstring); call it on a frame."""

  def __init__(self, path: str, run, info: dict):
    self.path, self.info, self._run = path, info, run
    self.input_shape = tuple(info["input"]["shape"])  # (1, S, S, C)
    self.num_classes = int(info["output"]["shape"][-1])

  def check_frame(self, frame) -> np.ndarray:
    """`frame` as the export's uint8 [1, S, S, C] input, or ValueError naming the file and what it expects."""
    frame = np.asarray(frame)
    _, size, _, channels = self.input_shape
    if frame.dtype != np.uint8:
      raise ValueError(f"{self.path} takes uint8 frames, got {frame.dtype}; convert with "
                       "veinjax.data.decode.frame_to_uint8 (which brings 16-bit and float frames to 8-bit).")
    if frame.ndim == 2 and channels == 1:
      frame = frame[..., None]
    if frame.ndim == 3:
      frame = frame[None]
    if frame.shape != self.input_shape:
      raise ValueError(f"{self.path} takes frames of shape [{size}, {size}, {channels}] (or [{size}, {size}] "
                       f"when gray), got {list(np.asarray(frame).shape)}; resize the frame to {size}x{size} "
                       "first (veinjax.data.pipeline.resize_example, as the training pipeline does).")
    return np.ascontiguousarray(frame)

  def __call__(self, frame) -> np.ndarray:
    """Class probabilities float32 [S, S, K] of one uint8 frame at the export's size."""
    return np.asarray(self._run(self.check_frame(frame)), np.float32)[0]

  def mask(self, frame) -> np.ndarray:
    """uint8 [S, S] class indices (0 = background) of one frame."""
    return class_mask(self(frame))


def class_mask(probabilities: np.ndarray) -> np.ndarray:
  """uint8 class indices [...] of probabilities [..., K]: sigmoid > 0.5 for K = 1, else the argmax (numpy
  only, so that running an export needs no JAX; `veinjax.inference` uses it too)."""
  if probabilities.shape[-1] == 1:
    return (probabilities[..., 0] > 0.5).astype(np.uint8)
  return np.argmax(probabilities, axis=-1).astype(np.uint8)


def read_metadata(path: str) -> dict:
  """<path>.json of an export, or ValueError saying it is missing (it is written beside every export)."""
  meta_path = path.rstrip(os.sep) + METADATA_SUFFIX
  if not os.path.isfile(meta_path):
    raise ValueError(f"{meta_path} is missing: an export from veinjax's export.py has it beside the model "
                     "(copy both files together).")
  with open(meta_path) as f:
    return json.load(f)


def _tflite_runner(path: str, num_threads: int | None):
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Running {path} needs ai-edge-litert: pip install ai-edge-litert") from e
  interpreter = Interpreter(model_path=path, num_threads=num_threads)
  interpreter.allocate_tensors()
  input_index = interpreter.get_input_details()[0]["index"]
  output_index = interpreter.get_output_details()[0]["index"]

  def run(frame):
    interpreter.set_tensor(input_index, frame)
    interpreter.invoke()
    return interpreter.get_tensor(output_index)

  return run


def _onnx_runner(path: str, num_threads: int | None):
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Running {path} needs onnxruntime: pip install onnxruntime") from e
  options = onnxruntime.SessionOptions()
  if num_threads:
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
  session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  name = session.get_inputs()[0].name
  return lambda frame: session.run(None, {name: frame})[0]


def _saved_model_runner(path: str, num_threads: int | None):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if num_threads:
    try:  # only possible before TensorFlow has run anything in this process
      tf.config.threading.set_intra_op_parallelism_threads(num_threads)
      tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
      pass
  serve = tf.saved_model.load(path).signatures["serving_default"]
  return lambda frame: next(iter(serve(**{INPUT_NAME: tf.constant(frame)}).values())).numpy()


def load(path: str, num_threads: int | None = None) -> ExportedModel:
  """An exported model (.tflite, .onnx, or a SavedModel directory) with its runtime; `num_threads` caps the
  runtime's CPU threads (None: the runtime's default)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: give a file written by export.py.")
  info = read_metadata(path)
  if os.path.isdir(path):
    runner = _saved_model_runner
  elif path.endswith(".tflite"):
    runner = _tflite_runner
  elif path.endswith(".onnx"):
    runner = _onnx_runner
  else:
    raise ValueError(f"{path}: unknown export type; give a .tflite or .onnx file or a SavedModel directory.")
  return ExportedModel(path, runner(path, num_threads), info)
