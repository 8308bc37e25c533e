r"""Real time end to end: uint8 frame in, mask out, per model, runtime and core count, with PyTorch peers.

  python -m benchmarks.realtime                                  # the README's real-time table (~10 min)
  python -m benchmarks.realtime --models=ultralight_unet --cores=1 --runs=200
  python -m benchmarks.realtime --torch_python=/path/to/venv/bin/python      # peers from another venv

For each model (`model` or `model:encoder`, randomly initialised: speed does not depend on the weights) it
makes the float TFLite file and its int8 twin (calibrated on synthetic frames: for timing only) and the ONNX
file, exactly as export.py does (`veinjax.export`), then times, in a fresh process pinned to the first
`--cores` CPUs (`taskset`-like, before any runtime starts, each runtime told the same thread count):
- XLA: the jitted JAX function (the CPU paths veinjax picks at trace time), numpy frame in, numpy mask out;
- TFLite: ai-edge-litert (XNNPACK) through `veinjax.exported`, float and int8;
- ONNX: onnxruntime through `veinjax.exported`.
End to end means what a device does per frame: a uint8 frame [S, S] at the model's size in, the
preprocessing (/255 and the run's normalisation, inside each graph), the forward pass at batch 1, the
sigmoid and the 0.5 threshold, a uint8 mask [S, S] out; median of `--runs` frames (16 different synthetic
frames in turn) after `--warmup`. The PyTorch peers (segmentation_models_pytorch U-Nets, benchmarks/
torch_peers.py) run in the same way with `--torch_python` (default: this interpreter) when it has torch and
smp; else the table says they were skipped. Nothing else should run on the machine meanwhile (its load
average is printed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from absl import app
from absl import flags

_DEFAULT_MODELS = ["ultralight_unet", "light_unet:mobilenetv3_small", "light_unet:mobilenetv3_large",
                   "resnet34_unet"]
_MODELS = flags.DEFINE_list("models", _DEFAULT_MODELS, "`model` or `model:encoder` to time.")
_SIZE = flags.DEFINE_integer("size", 256, "Frame height and width (divisible by 32).")
_CORES = flags.DEFINE_list("cores", ["1", "2"], "Core counts to time on (each in its own pinned process).")
_RUNS = flags.DEFINE_integer("runs", 200, "Timed frames per measurement (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed frames first (after compilation).")
_RUNTIMES = flags.DEFINE_list("runtimes", ["xla", "tflite", "tflite_int8", "onnx"], "What to time.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", sys.executable,
                                    "A Python with torch + segmentation-models-pytorch for the peers; '' skips.")
_OUTPUT = flags.DEFINE_string("output", "", "Also write every measurement as JSON here.")
_WORKER = flags.DEFINE_string("worker", "", "(internal) time the exports in this directory and print JSON lines.")



def realtime_model() -> str:
  """configs/realtime.py's model as this benchmark names it (`model` or `model:encoder`): the targets' model."""
  from configs import realtime as realtime_config  # pylint: disable=g-import-not-at-top
  from veinjax import models  # pylint: disable=g-import-not-at-top
  config = realtime_config.get_config()
  return config.model if config.model in models.FIXED_ENCODERS else f"{config.model}:{config.encoder}"


_RUNTIME_NAMES = {"xla": "XLA (jax.jit)", "tflite": "TFLite (XNNPACK)", "tflite_int8": "TFLite (XNNPACK)",
                  "onnx": "onnxruntime"}


def _spec(candidate: str) -> tuple[str, str | None]:
  name, _, encoder = candidate.partition(":")
  return name, encoder or None


def _slug(candidate: str) -> str:
  return candidate.replace(":", "__")


def _config(candidate: str, size: int):
  """configs/realtime.py at `size` with the candidate's model (1 channel, 1 class)."""
  from configs import realtime  # pylint: disable=g-import-not-at-top
  from veinjax import models  # pylint: disable=g-import-not-at-top
  config = realtime.get_config()
  name, encoder = _spec(candidate)
  config.model, config.image_size = name, size
  # Without one, the model's own default encoder, not the realtime config's (mobilenetv3_small): a bare
  # `resnet34_unet` is the paper's model.
  config.encoder = encoder or models.DEFAULT_ENCODERS.get(name, models.DEFAULT_ENCODER)
  return config


def _synthetic_frames(size: int, count: int = 16):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import synthetic  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  return np.stack([synthetic.synthetic_frame(rng, size)[0][..., None] for _ in range(count)])


def _jax_function(config):
  """The uint8 frame [1, S, S, 1] -> probabilities function of a randomly initialised model, and its size."""
  import jax  # pylint: disable=g-import-not-at-top
  from veinjax import export as export_lib  # pylint: disable=g-import-not-at-top
  from veinjax import models  # pylint: disable=g-import-not-at-top
  from veinjax import steps  # pylint: disable=g-import-not-at-top
  model = steps.create_model(config)
  variables = steps.init_variables(model, config, jax.random.key(0))
  return export_lib.frame_function(model, variables, config), models.count_params(variables["params"])


def make_exports(candidates: Sequence[str], size: int, directory: str) -> dict[str, int]:
  """Writes <slug>.tflite, <slug>_int8.tflite, <slug>.onnx (+ their .json) per candidate; returns params."""
  from veinjax import export as export_lib  # pylint: disable=g-import-not-at-top
  from veinjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  params = {}
  calibration = _synthetic_frames(size)
  for candidate in candidates:
    config = _config(candidate, size)
    function, params[candidate] = _jax_function(config)
    base = os.path.join(directory, _slug(candidate))
    for quantize, path in (("none", f"{base}.tflite"), ("int8", f"{base}_int8.tflite")):
      with open(path, "wb") as f:
        f.write(export_lib.tflite_bytes(function, config, quantize, calibration))
      workdir_lib.write_json(path + ".json", export_lib.metadata(config, "", "", "tflite", quantize, None))
    with open(f"{base}.tflite", "rb") as f:
      export_lib.save_onnx(f.read(), f"{base}.onnx")
    workdir_lib.write_json(f"{base}.onnx.json", export_lib.metadata(config, "", "", "onnx", "none", None))
    print(f"exported {candidate}", file=sys.stderr, flush=True)
  return params


def _median_ms(end_to_end, frames, runs: int, warmup: int) -> tuple[float, float]:
  """(median, fastest) milliseconds of `end_to_end` over `runs` frames in turn after `warmup`."""
  import itertools  # pylint: disable=g-import-not-at-top
  import statistics  # pylint: disable=g-import-not-at-top
  from veinjax import timing  # pylint: disable=g-import-not-at-top
  frame = itertools.cycle(frames)
  seconds = timing.run_seconds(lambda: end_to_end(next(frame)), runs, warmup)
  return 1e3 * statistics.median(seconds), 1e3 * min(seconds)


def _worker(directory: str) -> None:
  """Times every export in `directory` in this (already pinned) process; one JSON line per measurement."""
  cores = len(os.sched_getaffinity(0))
  frames = _synthetic_frames(_SIZE.value)[..., 0]  # uint8 [16, S, S], as a gray camera frame arrives
  for candidate in _MODELS.value:
    base = os.path.join(directory, _slug(candidate))
    for runtime in _RUNTIMES.value:
      if runtime == "xla":
        import jax  # pylint: disable=g-import-not-at-top
        import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
        import numpy as np  # pylint: disable=g-import-not-at-top
        function, _ = _jax_function(_config(candidate, _SIZE.value))
        mask = jax.jit(lambda frame, f=function: (f(frame[None, :, :, None])[0, :, :, 0] > 0.5).astype(jnp.uint8))
        end_to_end = lambda frame, m=mask: np.asarray(m(frame))
      else:
        from veinjax import exported  # pylint: disable=g-import-not-at-top
        path = {"tflite": f"{base}.tflite", "tflite_int8": f"{base}_int8.tflite", "onnx": f"{base}.onnx"}[runtime]
        end_to_end = exported.load(path, num_threads=cores).mask
      ms, min_ms = _median_ms(end_to_end, frames, _RUNS.value, _WARMUP.value)
      print(json.dumps({"model": candidate, "runtime": _RUNTIME_NAMES[runtime],
                        "quantize": "int8" if runtime == "tflite_int8" else "none", "cores": cores, "ms": ms,
                        "min_ms": min_ms}), flush=True)


def _run_lines(command: Sequence[str], env: dict | None = None) -> list[dict]:
  result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _worker_command(cores: int, directory: str) -> tuple[list[str], dict]:
  env = dict(os.environ)
  if cores == 1:  # as light_models.pin_to_cores: XLA's Eigen pool off on one core
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cores])
  flags_ = [f"--worker={directory}", f"--models={','.join(_MODELS.value)}", f"--size={_SIZE.value}",
            f"--runs={_RUNS.value}", f"--warmup={_WARMUP.value}", f"--runtimes={','.join(_RUNTIMES.value)}"]
  return ["taskset", "-c", cpus, sys.executable, "-m", "benchmarks.realtime", *flags_], env


def _peers(cores: int) -> tuple[list[dict], str]:
  if not _TORCH_PYTHON.value:
    return [], "PyTorch peers skipped (--torch_python='')."
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peers.py")
  lines = _run_lines([_TORCH_PYTHON.value, script, f"--cores={cores}", f"--size={_SIZE.value}",
                      f"--runs={_RUNS.value}", f"--warmup={_WARMUP.value}"])
  errors = [line["error"] for line in lines if "error" in line]
  if errors:
    return [], f"PyTorch peers skipped: {errors[0]} (or --torch_python=PATH of a Python that has them)."
  return lines, ""


def table(rows: Sequence[dict], params: dict, cores: Sequence[int]) -> str:
  """Markdown: one row per (model, runtime, quantisation), ms and frames/s per core count."""
  keys = []
  for r in rows:
    key = (r["model"], r["runtime"], r["quantize"])
    if key not in keys:
      keys.append(key)
  header = "| model | parameters | runtime | weights | " + " | ".join(
      f"ms / frame ({c} core{'s' if c > 1 else ''}) | frames / s ({c})" for c in cores) + " |"
  lines = [header, "|---|---:|---|---|" + "---:|---:|" * len(cores)]
  for model, runtime, quantize in keys:
    cells = []
    for c in cores:
      hit = [r for r in rows if (r["model"], r["runtime"], r["quantize"], r["cores"]) == (model, runtime, quantize, c)]
      cells += [f"{hit[0]['ms']:.2f}", f"{1e3 / hit[0]['ms']:.0f}"] if hit else ["", ""]
    count = params.get(model) or next((r["params"] for r in rows if r["model"] == model and "params" in r), 0)
    lines.append(f"| `{model}` | {count:,} | {runtime} | {'int8' if quantize == 'int8' else 'float32'} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def targets(rows: Sequence[dict], model: str | None = None) -> list[str]:
  """The issue's two speed targets, from the measured rows, for `model` (default: the realtime config's)."""
  model = model or realtime_model()
  out = []
  ours = [r for r in rows if r["model"] == model]
  one = [r for r in ours if r["cores"] == 1]
  if one:
    best = min(one, key=lambda r: r["ms"])
    out.append(f"{model} on 1 core, fastest runtime ({best['runtime']}, {best['quantize']}): "
               f"{best['ms']:.2f} ms/frame = {1e3 / best['ms']:.0f} frames/s (target >= 100).")
  two = [r for r in ours if r["cores"] == 2]
  peers = [r for r in rows if r["model"].startswith("smp") and r["cores"] == 2]
  if two and peers:
    best, lightest = min(two, key=lambda r: r["ms"]), min(peers, key=lambda r: r["params"])
    out.append(f"2 cores: {model} {best['ms']:.2f} ms vs {lightest['model']} {lightest['ms']:.2f} ms: "
               f"{lightest['ms'] / best['ms']:.1f}x faster (target >= 4x).")
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  if _WORKER.value:
    _worker(_WORKER.value)
    return
  if _RUNS.value < 50:
    raise app.UsageError(f"--runs must be at least 50 (a median of fewer is noise), got {_RUNS.value}")
  cores = [int(c) for c in _CORES.value]
  with tempfile.TemporaryDirectory() as directory:
    params = make_exports(_MODELS.value, _SIZE.value, directory)
    rows, notes = [], []
    for c in cores:
      command, env = _worker_command(c, directory)
      rows += _run_lines(command, env)
      peers, note = _peers(c)
      rows += peers
      notes += [note] if note and note not in notes else []
      print(f"timed on {c} core(s)", file=sys.stderr, flush=True)
  print(table(rows, params, cores))
  from veinjax import timing  # pylint: disable=g-import-not-at-top
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  print(f"\n{_SIZE.value}x{_SIZE.value} uint8 frame in, uint8 mask out, batch 1; median of {_RUNS.value} frames "
        f"after {_WARMUP.value} warm-up, each core count in its own pinned process; {timing.device_description()}; "
        f"load average {load} (1, 5, 15 min).")
  for line in targets(rows) + notes:
    print(line)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"rows": rows, "params": params}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
