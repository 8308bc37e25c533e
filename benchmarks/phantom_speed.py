r"""Frames per second of the phantom generators (numpy and scipy, one process, no TensorFlow).

  python -m benchmarks.phantom_speed                       # 256x256: 7 runs of 50 frames each
  python -m benchmarks.phantom_speed --size=128 --runs=5 --ablate

For `phantom_random.generate_randomized_example` (default ranges) and, for reference, `phantom.generate_example`
it prints frames/s, the median over runs of frames / wall time, and CPU ms per frame (the process's CPU time,
all threads, median over runs), with the load average before and after: on a shared machine the wall time
depends on what else runs, the CPU time much less. Run r generates the frames of seeds r * frames ... (r + 1)
* frames - 1, after one warm-up frame. --ablate adds one row per randomisation group switched off.
"""

import os
import time

from absl import app
from absl import flags
import numpy as np

from veinjax.data import phantom
from veinjax.data import phantom_random

_SIZE = flags.DEFINE_integer("size", 256, "Frame height = width.")
_FRAMES = flags.DEFINE_integer("frames", 50, "Frames per run.")
_RUNS = flags.DEFINE_integer("runs", 7, "Timed runs; the median is reported.")
_ABLATE = flags.DEFINE_bool("ablate", False, "Also time each randomisation group switched off.")
_REFERENCE = flags.DEFINE_bool("reference", True, "Also time phantom.generate_example.")


def time_generator(generate, size: int, frames: int, runs: int):
  """(median frames/s over runs, median CPU ms per frame, [frames/s of each run])."""
  generate(0, size)  # warm-up: caches, imports
  rates, cpu = [], []
  for run in range(runs):
    wall, proc = time.perf_counter(), time.process_time()
    for seed in range(run * frames, (run + 1) * frames):
      generate(seed, size)
    rates.append(frames / (time.perf_counter() - wall))
    cpu.append((time.process_time() - proc) / frames * 1000)
  return float(np.median(rates)), float(np.median(cpu)), rates


def main(argv):
  del argv
  size, frames, runs = _SIZE.value, _FRAMES.value, _RUNS.value
  rows = [("phantom_random (default ranges)", phantom_random.generate_randomized_example)]
  if _ABLATE.value:
    for group in phantom_random.GROUPS:
      params = phantom_random.RandomizationRanges().without(group)
      rows.append((f"  {group} off", lambda seed, n, p=params: phantom_random.generate_randomized_example(seed, n, p)))
  if _REFERENCE.value:
    rows.append(("phantom (vein_phantom, reference)", phantom.generate_example))
  load_before = os.getloadavg()
  print(f"{size}x{size}, {runs} runs x {frames} frames, {os.cpu_count()} CPUs; load average before "
        f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
  print(f"{'generator':36s} {'frames/s':>9s} {'CPU ms/frame':>13s}   frames/s per run")
  for name, generate in rows:
    rate, cpu, rates = time_generator(generate, size, frames, runs)
    print(f"{name:36s} {rate:9.1f} {cpu:13.2f}   {' '.join(f'{r:.1f}' for r in rates)}")
  load_after = os.getloadavg()
  print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
  app.run(main)
