"""Preemption: SIGTERM (what TPU and spot VMs send before they are taken away) stops training cleanly.

  watcher = PreemptionWatcher()          # installs the handler (main thread)
  ...
  if watcher.reached(step):              # after each step: True once a SIGTERM arrived (on any host)
    save a checkpoint, stop
  watcher.close()                        # restores the previous handler

On one process the handler only sets a flag, so the step in flight finishes and the loop decides. On several
processes (`jax.distributed`), JAX's preemption sync manager already listens for SIGTERM on every host and
`multihost_utils.reached_preemption_sync_point(step)` turns true at the same step on all of them, so every
host saves the same checkpoint before stopping; no handler of ours is installed then.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging


class Preempted(Exception):
  """Raised inside the loop once a preemption checkpoint is written (caught by train_and_evaluate)."""


class PreemptionWatcher:
  """Watches for SIGTERM; `reached(step)` says whether to save and stop after `step`."""

  def __init__(self):
    self._requested = threading.Event()
    self._previous = None
    self._multi_process = jax.process_count() > 1
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    if not self._requested.is_set():
      logging.warning("SIGTERM received: finishing the current step, then writing a checkpoint and stopping.")
    self._requested.set()

  def reached(self, step: int) -> bool:
    """True when training should checkpoint and stop after `step` (all hosts agree on the step)."""
    if self._multi_process:
      try:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # no preemption sync manager in this jax.distributed set-up
        return False
    return self._requested.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
