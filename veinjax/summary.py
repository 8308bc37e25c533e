"""TensorBoard summaries and the pictures of a segmentation: colour maps, overlays, panels.

`SummaryWriter` writes TensorBoard event files with the `tensorboard` package alone (its event writer and
protos), so training logs curves without importing TensorFlow. Only process 0 writes; on other processes the
writer is a no-op, so callers need no `if process_index == 0`.

The picture helpers turn a model input (any float range), labels and predictions into uint8 RGB arrays:
`panel` puts input | label | prediction side by side (TensorBoard images and `eval.py --save_predictions`).
"""

from __future__ import annotations

import io
import logging
import os
import time

import jax
import numpy as np

# Background black; the first foreground class (the vein) red, then other classes.
PALETTE = np.array([[0, 0, 0], [230, 40, 40], [40, 200, 60], [50, 110, 240], [240, 200, 30], [200, 60, 220]],
                   np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """A model input [H, W, C] (C = 1 or 3, any float range) -> uint8 RGB [H, W, 3], min-max scaled per image."""
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  lo, hi = float(image.min()), float(image.max())
  scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
  rgb = np.repeat(scaled, 3, axis=-1) if scaled.shape[-1] == 1 else scaled[..., :3]
  return np.round(rgb * 255).astype(np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
  """Class indices [H, W] -> uint8 RGB [H, W, 3] (`PALETTE`, cycling past its end)."""
  labels = np.asarray(labels).astype(np.int64)
  return PALETTE[labels % len(PALETTE)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """The input with the foreground classes of `labels` blended over it (uint8 RGB)."""
  base = to_uint8(image).astype(np.float32)
  colors = colorize(labels).astype(np.float32)
  mask = (np.asarray(labels) > 0)[..., None]
  return np.where(mask, (1 - alpha) * base + alpha * colors, base).round().astype(np.uint8)


def panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
  """[input | label overlay | prediction overlay] as one uint8 RGB image with 2-pixel white gaps."""
  h = np.asarray(image).shape[0]
  gap = np.full((h, 2, 3), 255, np.uint8)
  return np.concatenate([to_uint8(image), gap, overlay(image, label), gap, overlay(image, prediction)], axis=1)


def encode_png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


class SummaryWriter:
  """Scalar and image TensorBoard summaries in `logdir` (written by process 0 only)."""

  def __init__(self, logdir: str):
    self._writer = None
    if jax.process_index() == 0:
      # Imported here: only the writing process needs tensorboard.
      from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=g-import-not-at-top
      self._writer = EventFileWriter(logdir, flush_secs=30)

  def _write(self, step: int, values) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(**v) for v in values])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def scalars(self, step: int, values: dict) -> None:
    """Writes {tag: number}; non-finite and non-scalar values are skipped (TensorBoard cannot plot them)."""
    if self._writer is None:
      return
    entries = [dict(tag=tag, simple_value=float(v)) for tag, v in values.items()
               if np.ndim(v) == 0 and np.isfinite(float(v))]
    if entries:
      self._write(step, entries)

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """Writes one uint8 RGB image [H, W, 3]."""
    if self._writer is None:
      return
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    image = np.asarray(image, np.uint8)
    proto = summary_pb2.Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=3,
                                      encoded_image_string=encode_png(image))
    self._write(step, [dict(tag=tag, image=proto)])

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class _OnlyOwnInfo(logging.Filter):
  """Passes warnings and errors from everywhere, INFO only from veinjax and the running main."""

  def __init__(self, keep_dirs):
    super().__init__()
    self._keep = tuple(keep_dirs)

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.pathname.startswith(self._keep)


def quiet_library_logs(main_file: str) -> None:
  """Hides the INFO chatter of orbax, TFDS and JAX (a dozen lines per checkpoint) from absl logging, so a
  run's progress lines stay readable; their warnings and errors still show. For train.py and eval.py; the
  library itself never changes logging."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  keep = (os.path.dirname(os.path.abspath(__file__)), os.path.abspath(main_file))
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _OnlyOwnInfo) for f in handler.filters):
    handler.addFilter(_OnlyOwnInfo(keep))
