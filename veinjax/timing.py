"""Timing on this machine: which device, and the median time of a jitted call (compare and the benchmarks).

A timed call is warmed up first (the first call compiles) and each run waits for its result
(`block_until_ready`), so the figures are device compute, not dispatch.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import jax


def device_description() -> str:
  """The device code runs on, e.g. "NVIDIA H100 80GB HBM3 (gpu)" or "CPU <model>, 2 cores"."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    return f"{device.device_kind} ({device.platform})"
  cpu = platform.processor() or platform.machine()
  try:  # Linux names the CPU model here; platform.processor() often says only "x86_64"
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"CPU {cpu}, {os.cpu_count()} cores"


def run_seconds(fn: Callable[[], object], runs: int, warmup: int = 2) -> list[float]:
  """Seconds of each of `runs` calls of `fn()` after `warmup` untimed ones; each waits for its result."""
  if runs < 1:
    raise ValueError(f"runs={runs} must be >= 1.")
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 2) -> float:
  """Median milliseconds of `fn()` (see `run_seconds`)."""
  return 1000.0 * statistics.median(run_seconds(fn, runs, warmup))
