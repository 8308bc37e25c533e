"""TensorBoard event files written with the `tensorboard` package alone (its event writer and protos).

Training logs curves and pictures without importing TensorFlow. Only process 0 writes; on other processes
the writer is a no-op, so callers need no `if process_index == 0`.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from veinjax import viz


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
                                      encoded_image_string=viz.encode_png(image))
    self._write(step, [dict(tag=tag, image=proto)])

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


