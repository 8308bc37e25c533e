"""Training progress on the host: the running statistics of an epoch and a throughput clock.

`EpochStats` is saved in mid-epoch checkpoints, so that a resumed run reports the same epoch loss as an
uninterrupted one; `Clock` leaves compilation, evaluation and checkpointing out of the images/s it reports.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np


def format_seconds(seconds: float) -> str:
  """4321 -> "1h12m01s", 75 -> "1m15s"."""
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class EpochStats:
  """Running training loss and confusion matrix of the current epoch (or of a logging interval)."""

  def __init__(self, num_labels: int, saved: Mapping[str, Any] | None = None):
    saved = saved or {}
    self.loss_sum = float(saved.get("loss_sum", 0.0))
    self.steps = int(saved.get("steps", 0))
    self.confusion = np.asarray(saved.get("confusion", np.zeros((num_labels, num_labels))), np.float64)

  def add(self, loss: float, confusion: np.ndarray) -> None:
    self.loss_sum += loss
    self.steps += 1
    self.confusion += confusion

  def to_json(self) -> dict:
    return {"loss_sum": self.loss_sum, "steps": self.steps, "confusion": self.confusion.tolist()}


class Clock:
  """Training throughput measured between sync points, with compilation and evaluation left out."""

  def __init__(self, step: int):
    self.compiled = False
    self._time, self._step = time.time(), step
    self.epoch_seconds, self.epoch_steps = 0.0, 0
    self.total_seconds, self.total_steps = 0.0, 0

  def new_epoch(self) -> None:
    self.epoch_seconds, self.epoch_steps = 0.0, 0

  def lap(self, step: int, count: bool = True) -> tuple[float, int]:
    """(seconds, steps) since the last lap; `count=False` keeps them out of the epoch's throughput."""
    now = time.time()
    seconds, steps = now - self._time, step - self._step
    self._time, self._step = now, step
    if count:
      self.epoch_seconds += seconds
      self.epoch_steps += steps
      self.total_seconds += seconds
      self.total_steps += steps
    return seconds, steps

  def epoch_rate(self) -> float:
    """Training steps per second in the current epoch."""
    return self.epoch_steps / self.epoch_seconds if self.epoch_seconds > 0 else float("nan")

  def eta(self, steps_left: int) -> str:
    """Time the remaining training steps take at this run's average rate."""
    if self.total_steps == 0 or self.total_seconds <= 0:
      return "?"
    return format_seconds(steps_left * self.total_seconds / self.total_steps)
