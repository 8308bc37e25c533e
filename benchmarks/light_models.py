r"""Light models for real time: parameters, forward GFLOPs and CPU inference time per frame.

  python -m benchmarks.light_models                 # 256x256x1, batch 1, one CPU core
  python -m benchmarks.light_models --cores=0       # every core of this process's affinity mask
  python -m benchmarks.light_models --models=light_unet:mobilenetv3_large,ultralight_unet --size=512

For each candidate (`model` or `model:encoder`): parameters, forward GFLOPs per image (XLA's cost analysis,
`veinjax.models.cost`, as the model table), and the median wall time of the jitted eval-mode forward pass
(`train=False`) on one frame, a numpy array handed in each call, over `--runs` runs after `--warmup`
(and the fastest run, the figure least disturbed by other processes; frames/s is from the median);
`--xla_convs` adds the time with XLA's own convolutions (no CPU shift-add paths). The real-time target
is >= 100 frames/s end to end on one core: the model must leave most of 10 ms per frame to decoding,
preprocessing and post-processing. The process is pinned to `--cores` CPUs before JAX starts
(XLA sizes its thread pools then), with Eigen's multi-threading off for one core; the machine's load
average is printed beside the table, as other processes on the same cores slow every figure down.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence

from absl import app
from absl import flags


_DEFAULT_MODELS = ["resnet34_unet", "encoder_unet:mobilenetv3_small", "light_unet:mobilenetv3_large",
                   "light_unet", "ultralight_unet"]
_MODELS = flags.DEFINE_list("models", _DEFAULT_MODELS, "Candidates, `model` or `model:encoder`.")
_SIZE = flags.DEFINE_integer("size", 256, "Input height and width (divisible by 32).")
_IN_CHANNELS = flags.DEFINE_integer("in_channels", 1, "Input channels (1 grayscale, 3 RGB).")
_CORES = flags.DEFINE_integer("cores", 1, "CPU cores to run on (0: all of this process's).")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed runs after compilation.")
_RUNS = flags.DEFINE_integer("runs", 100, "Timed runs; the median is reported (at least 50).")
_XLA_CONVS = flags.DEFINE_bool(
    "xla_convs", False, "Also time each model with XLA's own convolutions everywhere (no shift-add CPU paths "
    "for depthwise and stem convs, see veinjax/models/light_layers.py).")


def pin_to_cores(cores: int) -> list[int]:
  """Restricts this process to its first `cores` CPUs (0: leaves it alone); must run before JAX starts."""
  available = sorted(os.sched_getaffinity(0))
  if cores <= 0 or cores >= len(available):
    return available
  chosen = available[:cores]
  os.sched_setaffinity(0, chosen)
  if cores == 1:
    flags_ = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = flags_.strip()
  return chosen


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def time_forward(model, size: int, in_channels: int, warmup: int, runs: int) -> dict:
  """Median / min milliseconds of one jitted eval forward pass on one frame, and compile seconds."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  frame = np.random.default_rng(0).standard_normal((1, size, size, in_channels)).astype(np.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), frame)
  forward = jax.jit(functools.partial(model.apply, train=False))
  start = time.perf_counter()
  forward(variables, frame).block_until_ready()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    forward(variables, frame).block_until_ready()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    forward(variables, frame).block_until_ready()
    times.append((time.perf_counter() - start) * 1e3)
  return {"ms": statistics.median(times), "min_ms": min(times), "compile_s": compile_s}


def markdown_table(rows: Sequence[dict], size: int, in_channels: int, cores: str) -> str:
  header = (f"| model | encoder | parameters | GFLOPs / {size}x{size}x{in_channels} | ms / frame ({cores}) | "
            "fastest run (ms) | frames / s |\n|---|---|---:|---:|---:|---:|---:|")
  xla = "xla_ms" in rows[0]
  if xla:
    header = header.replace(" frames / s |\n", " frames / s | ms, XLA's convs |\n") + "---:|"
  lines = [f"| `{r['model']}` | {r['encoder']} | {r['params']:,} | {r['gflops']:.3g} | {r['ms']:.2f} | "
           f"{r['min_ms']:.2f} | {1e3 / r['ms']:.0f} |" + (f" {r['xla_ms']:.2f} |" if xla else "")
           for r in rows]
  return "\n".join([header] + lines)


def main(argv: Sequence[str]) -> None:
  del argv
  if _RUNS.value < 50:
    raise app.UsageError(f"--runs must be at least 50 (a median of fewer is noise), got {_RUNS.value}")
  cpus = pin_to_cores(_CORES.value)
  # Imported only now: JAX must start after the process is pinned.
  import jax  # pylint: disable=g-import-not-at-top
  from veinjax import models  # pylint: disable=g-import-not-at-top
  from veinjax.models import cost  # pylint: disable=g-import-not-at-top
  from veinjax.models import layers  # pylint: disable=g-import-not-at-top

  models.check_input_size(_SIZE.value, _SIZE.value)
  rows = []
  for candidate in _MODELS.value:
    name, _, encoder = candidate.partition(":")
    encoder = encoder or models.DEFAULT_ENCODERS.get(name)
    counted = cost.measure(name, encoder, _SIZE.value, _IN_CHANNELS.value, num_classes=1, batch=1)
    model = models.create_model(name, encoder=encoder)
    timed = time_forward(model, _SIZE.value, _IN_CHANNELS.value, _WARMUP.value, _RUNS.value)
    row = {"model": name, "encoder": encoder or models.FIXED_ENCODERS[name], **counted, **timed}
    if _XLA_CONVS.value:
      with layers.lax_convolutions():  # Traced (jitted) inside: XLA's convolutions everywhere.
        row["xla_ms"] = time_forward(model, _SIZE.value, _IN_CHANNELS.value, _WARMUP.value, _RUNS.value)["ms"]
    rows.append(row)
    print(f"measured {candidate}: {row}", file=sys.stderr, flush=True)
  cores = f"{len(cpus)} core{'s' if len(cpus) > 1 else ''}"
  print(markdown_table(rows, _SIZE.value, _IN_CHANNELS.value, cores))
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  print(f"\nBatch 1, 1 class, eval forward pass; median of {_RUNS.value} runs after {_WARMUP.value} warm-up "
        f"runs on CPUs {cpus} of {os.cpu_count()} ({cpu_name()}, "
        f"jax {jax.__version__}, backend {jax.default_backend()}); load average {load} (1, 5, 15 min). "
        "GFLOPs: XLA cost analysis, a multiply-add counts as 2.")


if __name__ == "__main__":
  app.run(main)
