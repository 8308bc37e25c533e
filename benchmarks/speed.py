r"""Training and inference speed of the real train step, with the device's matmul peak beside it (issue 15).

  python -m benchmarks.speed                                 # resnet34_unet, 512x512, batch 4, bf16 + fp32
  python -m benchmarks.speed --size=512 --batch=16 --infer_batch=32 \
      --models=resnet34_unet,light_unet:mobilenetv3_small,ultralight_unet --json_out=speed.jsonl
  python -m benchmarks.speed --parallelism=jit --precisions=bf16 --config.loss=bce_dice
  python -m benchmarks.speed --peer        # + segmentation_models_pytorch's Unet("resnet34") in the same run
  python -m benchmarks.speed --pipeline    # + the tf.data input pipeline's augmented images/s (TensorFlow)
  python -m benchmarks.speed --xla_convolutions  # + each train step with XLA's own convolutions (before/after)
  python -m benchmarks.speed --one_pass_variance  # + each train step with flax's one-pass BatchNorm variance
  python -m benchmarks.speed --table_from=speed.jsonl        # the Markdown table of earlier JSON lines

Prints one JSON line per measurement as it is made (`kind`: matmul, train, infer, pipeline, peer,
head_to_head), then a Markdown table. Per model (`model` or `model:encoder`) and precision (`--precisions`:
bf16 = `config.half_precision`, fp32):

- train: images/s of the REAL train step (`steps.create_train_state` + `steps.wrap_train_step` under
  `--parallelism`, pmap or jit, through `parallel.DataParallel`; the config's optimizer and loss, Adam + BCE
  by default: `--config.<field>=...` overrides any other field of configs/default.py) on a synthetic batch
  (random [0, 1) image, random 0/1 label) already on the devices; the median of `--steps` steps after
  `--warmup`, each waiting for its result. `compile_s`: trace + lower + XLA compile (ahead of time; the
  timed steps run that executable); `first_call_s`: that + the first step and its wait, what a trainer
  waits for (JSON lines of runs before this split have no `first_call_s`, and their `compile_s` was the
  first call). `flops_per_step`: XLA's cost analysis of that compiled step (all devices; a multiply-add
  counts 2; on CPU it counts the CPU convolution workarounds of `veinjax.models.layers` / `light_layers`
  that the step really runs), so `achieved_tflops` = flops / median step seconds.
- infer: `steps.predict_logits` jitted on one device, ms per frame at batch 1 and images/s at
  `--infer_batch`, the input already on the device (device compute, not the host-to-device copy).
- memory: `peak_bytes_in_use` of `device.memory_stats()` (the largest over the devices used; null where
  the backend reports none, e.g. CPU). The counter is the process's peak so far and cannot be reset, so
  `peak_is_this_measurement` says whether it rose during this measurement (true: this measurement's peak;
  false: it stayed below an earlier one and the figure is an upper bound); bf16 runs before fp32 by default
  so that both train peaks are exact. `xla_bytes_per_device` (train) and `xla_bytes_bn` (infer): the
  compiled executable's arguments + outputs + temporaries - donated (XLA's memory analysis, any backend).
- matmul: the FLOP/s a plain jitted square matmul reaches here, float32 (JAX's default precision) and
  bfloat16, per device (`--matmul_size`: 4096 on accelerators, 1024 on CPU; a chain of `--matmul_reps`
  products in one call so that launch overhead does not count); train lines carry the peak of their dtype
  and `fraction_of_matmul_peak` (achieved / (peak x devices)).

Every JSON line also names the device (`veinjax.timing.device_description`), the jax version, the device
count, `os.cpu_count()`, this process's CPU affinity, `XLA_FLAGS`, the `XLA_PYTHON_CLIENT_*` settings and
the 1-minute load average (a busy machine's figures are not comparable with a quiet one's).

`--peer` (needs `pip install torch segmentation-models-pytorch`; never a veinjax requirement, imported only
then): smp `Unet("resnet34", encoder_weights=None, in_channels=1, classes=1)`, Adam 1e-3 + BCEWithLogits at
the same size and batch, train images/s and inference ms at batch 1; on CUDA with channels_last, cuDNN
benchmark mode, torch.compile and, for bf16, bf16 autocast; on CPU eager, for bf16 with CPU bf16 autocast
(oneDNN's bf16 kernels, which use AMX or AVX-512 BF16 where the CPU has them). Its lines carry the
veinjax/peer speed ratios of `resnet34_unet` (resnet34) in the same precision measured in the same run (> 1:
veinjax is faster). Those two are minutes apart; then `--peer_rounds` alternating rounds (default 4:
an even count, so each framework goes first as often) time both again, each round --steps train steps and
--steps batch-1 frames of each framework (veinjax then PyTorch, then PyTorch then veinjax, ...), on the same
compiled step, model and state: a `head_to_head` line with each round's ms, the speed ratio of each pair
of rounds (A B B A: a drift linear over the pair cancels) and their median, the figure to quote on a
machine whose speed drifts. With --peer, JAX is left half the GPU's memory
(XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 unless set) so that PyTorch has room.

`--xla_convolutions`: each train step is timed a second time, traced inside `layers.lax_convolutions()`
(XLA's own convolutions, without veinjax's CPU workarounds: the small-map matmul and the matmul weight
gradient); its line has `convolutions: "xla"` and `veinjax_over_xla_convolutions_train` (> 1: the
workarounds help). On GPU and TPU both steps are the same program.

`--one_pass_variance`: each train step is timed a second time, traced inside
`layers.one_pass_batch_variance()` (BatchNorm's batch variance as mean(x^2) - mean(x)^2, flax's default and
veinjax's before issue 18; veinjax computes it in two passes for float32 accuracy); its line has
`batch_variance: "one_pass"` and `veinjax_over_one_pass_variance_train` (< 1: the two passes cost time).

`--pipeline` (TensorFlow): `veinjax.data.pipeline.create_train_dataset` on synthetic frames with the config's
augmentation, augmented images/s (median of `--steps` epochs after one warm-up epoch). Only then is
TensorFlow imported: without `--pipeline` (the accelerator machine has no TensorFlow) nothing imports it.

Bad input (an unknown model or encoder, a size not divisible by 32, a batch that does not divide over the
devices, --peer without torch, a negative or odd --peer_rounds) stops before anything is compiled, with a
message naming the flag and the valid choices, exit status 2. benchmarks/gpu_speed.sh is the prepared run for
a lent GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import synthetic
from veinjax import models
from veinjax import parallel
from veinjax import steps
from veinjax import timing
from veinjax.models import cost
from veinjax.models import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout, for configs/default.py
PRECISIONS = ("fp32", "bf16")
# bf16 first: the device's peak-memory counter cannot be reset, and the smaller footprint measured first
# keeps both train steps' peaks exact (see `peak_is_this_measurement`).
DEFAULT_PRECISIONS = ("bf16", "fp32")
DEFAULT_MODELS = ("resnet34_unet",)
PEER_MISSING = "--peer needs torch and segmentation_models_pytorch: pip install torch segmentation-models-pytorch"


class BenchmarkError(ValueError):
  """Bad input to the benchmark: the message names the flag and the valid choices."""


# ---- Configuration and input checks ----


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py's get_config() (the paper's recipe: Adam 1e-3, BCE)."""
  spec = importlib.util.spec_from_file_location("veinjax_default_config", os.path.join(ROOT, "configs",
                                                                                       "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def parse_models(specs: Sequence[str]) -> list[tuple[str, str | None]]:
  """`model` or `model:encoder` strings -> [(model, encoder or None for a fixed-encoder model)], checked."""
  parsed = []
  if not specs:
    raise BenchmarkError(f"--models is empty; valid models: {', '.join(models.MODEL_NAMES)}")
  for spec in specs:
    name, _, encoder = spec.strip().partition(":")
    if name not in models.MODEL_NAMES:
      raise BenchmarkError(f"--models: unknown model {name!r}; valid models: {', '.join(models.MODEL_NAMES)} "
                           "(optionally `model:encoder`)")
    if encoder and encoder not in models.ENCODER_NAMES:
      raise BenchmarkError(f"--models: unknown encoder {encoder!r} in {spec!r}; valid encoders: "
                           f"{', '.join(models.ENCODER_NAMES)}")
    if name in models.FIXED_ENCODERS:
      if encoder and encoder != models.DEFAULT_ENCODER:
        raise BenchmarkError(f"--models: {name!r} has a fixed encoder ({models.FIXED_ENCODERS[name]}); drop "
                             f"':{encoder}' (encoders apply only to "
                             f"{', '.join(n for n in models.MODEL_NAMES if n not in models.FIXED_ENCODERS)})")
      parsed.append((name, None))
    else:
      parsed.append((name, encoder or models.DEFAULT_ENCODERS[name]))
  return parsed


def bench_config(model: str, encoder: str | None, *, size: int, batch: int, precision: str = "fp32",
                 parallelism: str = "pmap",
                 base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """A copy of `base` (default: configs/default.py) with the benchmark's model, size, batch and precision."""
  if precision not in PRECISIONS:
    raise BenchmarkError(f"--precisions: unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
  config = (default_config() if base is None else base).copy_and_resolve_references()  # a deep copy
  config.model = model
  if encoder is not None:
    config.encoder = encoder
  config.image_size = int(size)
  config.batch_size = int(batch)
  config.half_precision = precision == "bf16"
  config.parallelism = parallelism
  return config


def check_inputs(specs: Sequence[str], *, size: int, batch: int, infer_batch: int, num_steps: int,
                 warmup: int, precisions: Sequence[str], parallelism: str,
                 devices: Sequence[jax.Device] | None = None) -> list[tuple[str, str | None]]:
  """Every check that needs no compilation, so bad input stops before anything slow; the parsed models."""
  parsed = parse_models(specs)
  try:
    models.check_input_size(size, size)
  except ValueError as e:
    raise BenchmarkError(f"--size={size}: {e}") from None
  if num_steps < 1:
    raise BenchmarkError(f"--steps={num_steps} must be >= 1")
  if warmup < 0:
    raise BenchmarkError(f"--warmup={warmup} must be >= 0")
  if infer_batch < 1:
    raise BenchmarkError(f"--infer_batch={infer_batch} must be >= 1")
  if not precisions:
    raise BenchmarkError(f"--precisions is empty; choose from {', '.join(PRECISIONS)}")
  for precision in precisions:
    if precision not in PRECISIONS:
      raise BenchmarkError(f"--precisions: unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
  if parallelism not in parallel.PARALLELISM:
    raise BenchmarkError(f"--parallelism={parallelism!r}; choose one of {', '.join(parallel.PARALLELISM)}")
  par = parallel.DataParallel(parallelism, devices)
  try:
    par.check_batch_size(batch, "--batch")
  except ValueError as e:
    raise BenchmarkError(str(e)) from None
  return parsed


# ---- What every line carries ----


def environment() -> dict:
  """The machine and software a figure comes from (in every JSON line)."""
  try:
    affinity = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    affinity = os.cpu_count()
  try:
    load = round(os.getloadavg()[0], 2)
  except OSError:
    load = None
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {
      "device": timing.device_description(),
      "platform": jax.default_backend(),
      "device_count": jax.device_count(),
      "jax_version": jax.__version__,
      "jaxlib_version": getattr(jaxlib, "__version__", None),
      "cpu_count": os.cpu_count(),
      "cpu_affinity": affinity,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # The GPU allocator's settings (preallocation, memory fraction), where set.
      "xla_client_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("XLA_PYTHON_CLIENT_")},
      "load_avg_1m": load,
  }


# ---- Measurements ----


def peak_bytes(devices: Sequence[jax.Device]) -> int | None:
  """The largest `peak_bytes_in_use` over `devices`; None where the backend does not report it."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except  # some backends raise instead of returning None
      stats = None
    if not stats or "peak_bytes_in_use" not in stats:
      return None
    peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def _memory_fields(before: int | None, devices: Sequence[jax.Device]) -> dict:
  after = peak_bytes(devices)
  return {"peak_bytes_in_use": after,
          "peak_is_this_measurement": None if after is None or before is None else after > before}


def _xla_bytes(compiled: Any) -> int | None:
  """Arguments + outputs + temporaries - aliased of a compiled computation, per device; None if unknown."""
  try:
    stats = compiled.memory_analysis()
    if isinstance(stats, (list, tuple)):
      stats = stats[0]
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # not every backend / version has it
    return None


def _compile_and_first_call(fn, *args) -> tuple[Any, Any, dict]:
  """Compiles `fn` for `args` ahead of time, then calls the executable once: (executable, first result,
  {compile_s, first_call_s}).

  `compile_s` = trace + lower + XLA compile; `first_call_s` = that + the first run and its wait (what a
  trainer sees before its first step returns). The timed steps then run the same executable, and its cost
  and memory analyses are read from it. Where this JAX cannot compile `fn` ahead of time: executable None,
  `fn` called instead, compile_s None."""
  start = time.perf_counter()
  try:
    compiled = fn.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    _log(f"no ahead-of-time compile (so no XLA cost / memory analysis): {type(e).__name__}: {e}")
    compiled = None
    start = time.perf_counter()  # the first call alone, without the failed attempt
  compile_s = time.perf_counter() - start if compiled is not None else None
  call = fn if compiled is None else compiled
  out = jax.block_until_ready(call(*args))
  return compiled, out, {"compile_s": compile_s, "first_call_s": time.perf_counter() - start}


def _flops(compiled: Any) -> float | None:
  try:
    return cost.flops_of(compiled)
  except Exception:  # pylint: disable=broad-except
    return None


def synthetic_batch(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """{'image': float32 [b, S, S, C] uniform in [0, 1), 'label': int32 [b, S, S] random classes} (numpy)."""
  rng = np.random.default_rng(seed)
  size, channels = config.image_size, config.in_channels
  return {"image": rng.random((batch, size, size, channels), dtype=np.float32),
          "label": rng.integers(0, max(int(config.num_classes), 2), (batch, size, size), dtype=np.int32)}


def initial_variables(config, seed: int = 0) -> dict:
  """{'params', 'batch_stats'} of the config's model (float32 either way, so shared by both precisions)."""
  config = config.copy_and_resolve_references()
  config.half_precision = False
  model = steps.create_model(config)
  return jax.device_get(steps.init_variables(model, config, jax.random.key(seed)))


def measure_matmul(n: int, dtype: Any, *, reps: int = 1, num_steps: int = 5, warmup: int = 2) -> dict:
  """FLOP/s of a jitted chain of `reps` [n, n] @ [n, n] products on the first device."""
  dtype = jnp.dtype(dtype)
  device = jax.devices()[0]
  a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype), device)
  # Scaled so the chain neither overflows nor underflows.
  b = jax.device_put((jax.random.normal(jax.random.key(1), (n, n), jnp.float32) / math.sqrt(n)).astype(dtype),
                     device)

  @jax.jit
  def chain(a, b):
    return jax.lax.fori_loop(0, reps, lambda _, x: jnp.dot(x, b, preferred_element_type=dtype), a)

  seconds = statistics.median(timing.run_seconds(lambda: chain(a, b), num_steps, max(warmup, 1)))
  flops = 2.0 * n ** 3 * reps
  return {"dtype": dtype.name, "n": n, "reps": reps, "seconds": seconds, "tflops": flops / seconds / 1e12,
          "matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None) or "default")}


def measure_train(config, *, num_steps: int = 5, warmup: int = 2, variables: dict | None = None,
                  devices: Sequence[jax.Device] | None = None, keep_timer: bool = False):
  """The config's real train step under its parallelism: images/s, compile seconds, FLOPs, memory.

  With `keep_timer`: (result, timer), `timer(n)` the seconds of n more steps of the same compiled step."""
  par = parallel.DataParallel(config.parallelism, devices)
  before = peak_bytes(par.local_devices)
  try:
    par.check_batch_size(config.batch_size, "--batch")
  except ValueError as e:
    raise BenchmarkError(str(e)) from None
  model = steps.create_model(config, bn_axis_name=par.axis_name)
  learning_rate_fn = steps.create_learning_rate_fn(config, steps_per_epoch=100)
  if variables is None:
    variables = initial_variables(config, config.seed)
  host_state = steps.create_train_state(config, model, learning_rate_fn, variables=variables)
  state = par.replicate(host_state)
  del host_state
  batch = par.shard(synthetic_batch(config, config.batch_size, config.seed))
  train_step = steps.wrap_train_step(config, par, learning_rate_fn)

  compiled, (state, metrics), first = _compile_and_first_call(train_step, state, batch)
  step_fn = train_step if compiled is None else compiled
  per_device_flops = _flops(compiled)

  def one_step():
    nonlocal state, metrics
    state, metrics = step_fn(state, batch)
    return state, metrics

  times = timing.run_seconds(one_step, num_steps, warmup)
  loss = float(np.asarray(par.first(metrics)["loss"]))
  step_s = statistics.median(times)
  flops = None if per_device_flops is None else per_device_flops * par.num_devices
  result = {
      "images_per_s": config.batch_size / step_s,
      "step_ms": 1e3 * step_s,
      "step_ms_min": 1e3 * min(times),
      **first,
      "flops_per_step": flops,
      "achieved_tflops": None if flops is None else flops / step_s / 1e12,
      "xla_bytes_per_device": _xla_bytes(compiled),
      "train_loss": loss if math.isfinite(loss) else None,
      **_memory_fields(before, par.local_devices),
  }
  if keep_timer:  # more timed steps later (`--peer` rounds), on the same compiled step and state
    return result, lambda runs: timing.run_seconds(one_step, runs, warmup=0)
  del state, metrics, batch
  return result


def measure_infer(config, *, infer_batch: int = 32, num_steps: int = 5, warmup: int = 2,
                  variables: dict | None = None, keep_timer: bool = False):
  """`steps.predict_logits` jitted on the first device: ms per frame at batch 1, images/s at `infer_batch`.

  With `keep_timer`: (result, timer), `timer(n)` the seconds of n more batch-1 calls."""
  device = jax.devices()[0]
  model = steps.create_model(config)
  if variables is None:
    variables = initial_variables(config, config.seed)
  variables = jax.device_put(variables, device)
  forward = jax.jit(functools.partial(steps.predict_logits, model))
  before = peak_bytes([device])
  result = {}
  for batch, key in ((1, "b1"), (infer_batch, "bn")):
    if key == "bn" and infer_batch == 1:
      result.update(images_per_s=1e3 / result["ms_per_frame"], compile_s_bn=result["compile_s_b1"],
                    achieved_tflops_bn=result["achieved_tflops_b1"], xla_bytes_bn=_xla_bytes(compiled))
      break
    images = jax.device_put(synthetic_batch(config, batch, config.seed)["image"], device)
    compiled, _, first = _compile_and_first_call(forward, variables, images)
    call = functools.partial(forward if compiled is None else compiled, variables, images)
    flops = _flops(compiled)
    times = timing.run_seconds(call, num_steps, warmup)
    seconds = statistics.median(times)
    if key == "b1":
      b1_call = call
      result.update(ms_per_frame=1e3 * seconds, ms_per_frame_min=1e3 * min(times),
                    compile_s_b1=first["compile_s"], first_call_s_b1=first["first_call_s"],
                    achieved_tflops_b1=None if flops is None else flops / seconds / 1e12)
    else:
      result.update(images_per_s=batch / seconds, compile_s_bn=first["compile_s"],
                    achieved_tflops_bn=None if flops is None else flops / seconds / 1e12,
                    xla_bytes_bn=_xla_bytes(compiled))
  result.update(_memory_fields(before, [device]))
  if keep_timer:  # more timed batch-1 calls later (`--peer` rounds)
    return result, lambda runs: timing.run_seconds(b1_call, runs, warmup=0)
  return result


def _synthetic_frames(num: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 frames [n, S, S, 1] and masks [n, S, S] of `benchmarks.synthetic.synthetic_frame`."""
  rng = np.random.default_rng(seed)
  frames = [synthetic.synthetic_frame(rng, size) for _ in range(num)]
  return np.stack([f for f, _ in frames])[..., None], np.stack([m for _, m in frames])


def measure_pipeline(config, *, epochs: int = 5, num_examples: int = 64) -> dict:
  """Augmented training images/s of the tf.data pipeline (imports TensorFlow: only with --pipeline)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  # imports TensorFlow

  config = config.copy_and_resolve_references()
  config.in_channels = 1
  num_examples = max(num_examples, config.batch_size)
  images, masks = _synthetic_frames(num_examples, config.image_size, config.seed)
  raw = tf.data.Dataset.from_tensor_slices(
      {"image": images, "mask": masks, "id": np.array([f"frame_{i:04d}" for i in range(num_examples)])})

  def epoch(index: int) -> tuple[int, float]:
    start, count = time.perf_counter(), 0
    for batch in pipeline.create_train_dataset(config, epoch=index, raw=raw).as_numpy_iterator():
      count += int(batch["image"].shape[0])
    return count, time.perf_counter() - start

  epoch(0)  # warm-up: resizes and holds the split, traces the loader
  rates = []
  for index in range(1, epochs + 1):
    count, seconds = epoch(index)
    rates.append(count / seconds)
  return {"images_per_s": statistics.median(rates), "examples": num_examples,
          "augment": {k: v for k, v in config.augment.items()}}


def import_peer():
  """(torch, segmentation_models_pytorch), or a BenchmarkError with the install command (the import is
  benchmarks.torch_training's, shared with the accuracy benchmarks)."""
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top
  try:
    return torch_training.import_torch()
  except torch_training.MissingPeerError as e:
    raise BenchmarkError(f"{PEER_MISSING} ({e})") from None


def measure_peer(*, size: int, batch: int, precision: str = "fp32", num_steps: int = 5,
                 warmup: int = 2, keep_timers: bool = False):
  """smp Unet("resnet34") with Adam 1e-3 + BCEWithLogits: train images/s and inference ms at batch 1.

  On CUDA: channels_last, torch.compile, bf16 autocast for precision "bf16". On CPU: eager, bf16 autocast for
  "bf16" (what a PyTorch user would run on a CPU with bf16 units, veinjax's bf16 counterpart there). With
  `keep_timers`: (result, train timer, batch-1 inference timer), each `timer(n)` the seconds of n more calls.
  """
  torch, smp = import_peer()
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if cuda:
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its algorithms, as XLA autotunes
  torch.manual_seed(0)
  net = smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1).to(device)
  layout = torch.channels_last if cuda else torch.contiguous_format
  net = net.to(memory_format=layout)
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  loss_fn = torch.nn.BCEWithLogitsLoss()
  forward = torch.compile(net) if cuda else net
  x = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=layout)
  y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
  frame = torch.rand(1, 1, size, size, device=device).contiguous(memory_format=layout)

  def autocast():
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

  def sync():
    if cuda:
      torch.cuda.synchronize()

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      logits = forward(x)
    loss = loss_fn(logits.float(), y)
    loss.backward()
    optimizer.step()
    return loss

  def infer():
    with torch.inference_mode(), autocast():
      return forward(frame)

  def seconds(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
      start = time.perf_counter()
      fn()
      sync()
      times.append(time.perf_counter() - start)
    return times

  def timed(fn) -> tuple[float, list[float]]:
    first = seconds(fn, 1)[0]
    for _ in range(warmup):
      fn()
    sync()
    return first, seconds(fn, num_steps)

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  net.train()
  train_compile_s, train_times = timed(train_step)
  train_peak = int(torch.cuda.max_memory_allocated()) if cuda else None
  net.eval()
  infer_compile_s, infer_times = timed(infer)
  step_s = statistics.median(train_times)
  result = {
      "peer": 'segmentation_models_pytorch Unet("resnet34", encoder_weights=None, in_channels=1, classes=1)',
      "torch_version": torch.__version__, "smp_version": getattr(smp, "__version__", None),
      "torch_device": torch.cuda.get_device_name() if cuda else "cpu", "torch_threads": torch.get_num_threads(),
      "channels_last": cuda, "torch_compile": cuda, "autocast_bf16": precision == "bf16",
      "cudnn_benchmark": cuda, "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
      # Eager PyTorch compiles nothing (on CUDA torch.compile does, inside the first call): both are its first
      # step, comparable with veinjax's first_call_s.
      "images_per_s": batch / step_s, "step_ms": 1e3 * step_s, "compile_s": train_compile_s,
      "first_call_s": train_compile_s,
      "ms_per_frame": 1e3 * statistics.median(infer_times), "infer_compile_s": infer_compile_s,
      "train_peak_bytes_allocated": train_peak,
  }
  if not keep_timers:
    return result

  def train_timer(runs: int) -> list[float]:
    net.train()
    return seconds(train_step, runs)

  def infer_timer(runs: int) -> list[float]:
    net.eval()
    return seconds(infer, runs)

  return result, train_timer, infer_timer


def alternating_rounds(timers: Sequence[Callable[[int], list[float]]], rounds: int,
                       runs: int) -> list[list[float]]:
  """Per timer, the median seconds of `runs` calls in each of `rounds` rounds: [timer][round].

  The timers take turns, in order in even rounds and in reverse order in odd ones (A B, B A, A B, ...). On a
  machine whose speed drifts during the measurement (this VM's does, by up to ~30%) one round alone still
  favours whoever went first, but a pair of rounds (A B B A) does not, to first order: see `pair_ratios`.
  Measuring one framework fully before the other puts the whole drift into the ratio.
  """
  medians: list[list[float]] = [[] for _ in timers]
  for r in range(rounds):
    order = range(len(timers)) if r % 2 == 0 else reversed(range(len(timers)))
    for i in order:
      medians[i].append(statistics.median(timers[i](runs)))
  return medians


def pair_ratios(our_s: Sequence[float], peer_s: Sequence[float]) -> list[float]:
  """The veinjax-over-peer speed ratio (> 1: veinjax faster) of each pair of rounds (A B, B A): the peer's
  seconds over ours, each summed over the pair, which cancels a drift that is linear over the pair."""
  return [(peer_s[i] + peer_s[i + 1]) / (our_s[i] + our_s[i + 1]) for i in range(0, len(our_s) - 1, 2)]


def head_to_head(ours: tuple[Callable, Callable], peer: tuple[Callable, Callable], *, rounds: int,
                 runs: int) -> dict:
  """veinjax's and the peer's train step and batch-1 inference (each a (train, infer) pair of timers) in
  `rounds` alternating rounds (an even count): the median step / frame ms of each round, the speed ratio of
  each pair of rounds (`pair_ratios`) and the median of those ratios."""
  record = {"rounds": rounds, "runs_per_round": runs}
  for name, our_timer, peer_timer in (("train", ours[0], peer[0]), ("infer", ours[1], peer[1])):
    our_s, peer_s = alternating_rounds([our_timer, peer_timer], rounds, runs)
    ratios = pair_ratios(our_s, peer_s)
    record.update({f"veinjax_{name}_ms_per_round": [1e3 * t for t in our_s],
                   f"peer_{name}_ms_per_round": [1e3 * t for t in peer_s],
                   f"veinjax_over_peer_{name}_per_pair": ratios,
                   f"veinjax_over_peer_{name}": statistics.median(ratios)})
  return record


# ---- Output ----


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return "n/a" if value is None else format(value * scale, spec)


def _rate(value) -> str:
  """images/s with 3 significant digits below 100 (a CPU's 0.245), whole numbers above (a GPU's 731)."""
  return "n/a" if value is None else format(value, ".3g" if value < 100 else ".0f")


def _compile_cell(record: dict) -> str:
  if "first_call_s" not in record:  # a line from before the split: its compile_s was the first call
    return f"n/a ({_fmt(record.get('compile_s'), '.1f')})"
  return f"{_fmt(record.get('compile_s'), '.1f')} ({_fmt(record['first_call_s'], '.1f')})"


def markdown_table(records: Sequence[dict]) -> str:
  """The Markdown table of a run's JSON records (or of several runs' concatenated): one row per train
  measurement with its inference figures beside it, then the machine, the matmul peak, the peer and the
  input pipeline."""
  trains = [r for r in records if r.get("kind") == "train"]
  infers = {(r["model"], r["encoder"], r["precision"], r["size"]): r for r in records if r.get("kind") == "infer"}
  infer_batches = sorted({r["infer_batch"] for r in infers.values()})
  bn = "/".join(f"b{b}" for b in infer_batches) or "b?"
  lines = [
      f"| model | encoder | precision | size | batch | train images/s | step ms | compile s (first call s) | "
      f"TFLOP/s | of matmul peak | peak GiB | XLA GiB/device | infer ms/frame (b1) | infer images/s ({bn}) |",
      "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in trains:
    xla_only = r.get("convolutions") == "xla"  # a train-only line (--xla_convolutions)
    one_pass = r.get("batch_variance") == "one_pass"  # a train-only line (--one_pass_variance)
    infer = {} if xla_only or one_pass else infers.get((r["model"], r["encoder"], r["precision"], r["size"]), {})
    convolutions = " (XLA's convolutions)" if xla_only else " (one-pass BN variance)" if one_pass else ""
    lines.append(
        f"| `{r['model']}`{convolutions} | {r['encoder'] or '(own)'} | {r['precision']} | {r['size']} | "
        f"{r['batch']} ({r['parallelism']}) | {_rate(r.get('images_per_s'))} | "
        f"{_fmt(r.get('step_ms'), '.1f')} | {_compile_cell(r)} | "
        f"{_fmt(r.get('achieved_tflops'), '.3g')} | {_fmt(r.get('fraction_of_matmul_peak'), '.0%')} | "
        f"{'≤' if r.get('peak_is_this_measurement') is False else ''}"
        f"{_fmt(r.get('peak_bytes_in_use'), '.2f', 2.0 ** -30)} | "
        f"{_fmt(r.get('xla_bytes_per_device'), '.2f', 2.0 ** -30)} | {_fmt(infer.get('ms_per_frame'), '.2f')} | "
        f"{_rate(infer.get('images_per_s'))} |")
  if not records:
    return "\n".join(lines)
  env = records[0]
  loads = sorted({r["load_avg_1m"] for r in records if r.get("load_avg_1m") is not None})
  peaks = []
  for dtype in ("float32", "bfloat16"):
    found = [m for m in records if m.get("kind") == "matmul" and m.get("dtype") == dtype]
    if found:
      values = ", ".join(f"{m['tflops']:.3g}" for m in found)
      peaks.append(f"{dtype} {values} TFLOP/s (n={found[0]['n']})")
  lines.append("")
  lines.append(
      f"{env['device']}, {env['device_count']} device(s), jax {env['jax_version']}, {env['cpu_count']} CPUs "
      f"({env['cpu_affinity']} usable), load average {'-'.join(str(x) for x in sorted(set(loads[:1] + loads[-1:]))) or 'n/a'}; "
      f"median of {env['steps']} steps after {env['warmup']} warm-up ones, data already on the device; "
      f"matmul peak per device: {'; '.join(peaks) or 'n/a'}. Peak GiB: the devices' peak_bytes_in_use during "
      "the train measurement (≤: it did not rise, the figure is the process's earlier peak; n/a: not reported, "
      "e.g. CPU); XLA GiB: the compiled train step's arguments + outputs + temporaries - donated, per device.")
  for e in records:
    if e.get("kind") == "peer" and "error" in e:
      lines.append(f"Peer {e['precision']}: failed ({e['error']}).")
    elif e.get("kind") == "peer":
      lines.append(
          f"Peer smp Unet(resnet34) {e['precision']} (torch {e['torch_version']}, {e['torch_device']}, "
          f"{'channels_last + torch.compile' if e['torch_compile'] else 'eager'}"
          f"{' + bf16 autocast' if e['autocast_bf16'] else ''}), {e['size']}x{e['size']}, batch {e['batch']}: "
          f"train {_rate(e['images_per_s'])} images/s, infer {e['ms_per_frame']:.2f} ms/frame; veinjax/peer: train "
          f"{_fmt(e.get('veinjax_over_peer_train_images_per_s'), '.2f')}x, infer "
          f"{_fmt(e.get('veinjax_over_peer_infer_frames_per_s'), '.2f')}x (> 1: veinjax faster).")
    elif e.get("kind") == "head_to_head" and "error" in e:
      lines.append(f"veinjax/peer {e['precision']} alternating rounds: failed ({e['error']}).")
    elif e.get("kind") == "head_to_head":
      def pairs_text(name: str) -> str:  # pylint: disable=cell-var-from-loop
        per_pair = ", ".join(f"{x:.2f}" for x in e[f"veinjax_over_peer_{name}_per_pair"])
        return f"{name} {e[f'veinjax_over_peer_{name}']:.2f}x ({per_pair})"
      lines.append(f"veinjax/peer {e['precision']}, {e['size']}x{e['size']}, batch {e['batch']}, in "
                   f"{e['rounds']} alternating rounds of {e['runs_per_round']} train steps and "
                   f"{e['runs_per_round']} batch-1 frames each (median over the pairs of rounds; each pair's "
                   f"ratio in brackets): {pairs_text('train')}, {pairs_text('infer')} (> 1: veinjax faster).")
    elif e.get("kind") == "pipeline":
      lines.append(f"Input pipeline: {e['images_per_s']:.1f} augmented images/s ({e['size']}x{e['size']}, "
                   f"batch {e['batch']}, the config's augmentation).")
  return "\n".join(lines)


def read_records(path: str) -> list[dict]:
  """The JSON lines of a file (other lines, e.g. a Markdown table, are skipped)."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.startswith("{")]


def _emit(record: dict, json_file) -> None:
  line = json.dumps(record, allow_nan=False)
  print(line, flush=True)
  if json_file is not None:
    json_file.write(line + "\n")
    json_file.flush()


def _log(message: str) -> None:
  print(f"[speed] {message}", file=sys.stderr, flush=True)


def run(*, model_specs: Sequence[str], size: int, batch: int, infer_batch: int, parallelism: str,
        precisions: Sequence[str], num_steps: int, warmup: int, matmul_size: int = 0, matmul_reps: int = 0,
        peer: bool = False, peer_precisions: Sequence[str] | None = None, pipeline: bool = False,
        xla_convolutions: bool = False, one_pass_variance: bool = False,
        base: ml_collections.ConfigDict | None = None,
        json_out: str = "", peer_rounds: int = 4) -> list[dict]:
  """The whole benchmark: prints JSON lines as it goes and the Markdown table at the end; all records."""
  parsed = check_inputs(model_specs, size=size, batch=batch, infer_batch=infer_batch, num_steps=num_steps,
                        warmup=warmup, precisions=precisions, parallelism=parallelism)
  peer_precisions = list(precisions if not peer_precisions else peer_precisions)
  for precision in peer_precisions:
    if precision not in PRECISIONS:
      raise BenchmarkError(f"--peer_precisions: unknown precision {precision!r}; choose from "
                           f"{', '.join(PRECISIONS)}")
  if peer_rounds < 0 or peer_rounds % 2:
    raise BenchmarkError(f"--peer_rounds={peer_rounds}: give 0 (no alternating rounds) or an even count (each "
                         "framework goes first as often: the ratios are of pairs of rounds), e.g. 4")
  if peer:
    import_peer()  # fail now, not after the veinjax measurements
  base = default_config() if base is None else base
  env = environment()
  common = {"benchmark": "veinjax.speed", **env, "size": size, "parallelism": parallelism,
            "steps": num_steps, "warmup": warmup}
  records: list[dict] = []
  json_file = open(json_out, "w") if json_out else None  # pylint: disable=consider-using-with
  try:
    def emit(record: dict) -> dict:
      record = {**common, **record}
      records.append(record)
      _emit(record, json_file)
      return record

    accelerator = jax.default_backend() != "cpu"
    n = matmul_size or (4096 if accelerator else 1024)
    reps = matmul_reps or (10 if accelerator else 1)
    matmul = {}
    for precision, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
      _log(f"matmul {dtype.__name__} {n}x{n} x{reps}")
      matmul[precision] = emit({"kind": "matmul", "precision": precision,
                                **measure_matmul(n, dtype, reps=reps, num_steps=num_steps, warmup=warmup)})

    ours = {}  # (model, encoder, precision) -> (train record, infer record), for the peer's ratios
    our_timers = {}  # precision -> (train timer, batch-1 infer timer) of resnet34_unet, for the peer rounds
    for name, encoder in parsed:
      variables = None
      for precision in precisions:
        config = bench_config(name, encoder, size=size, batch=batch, precision=precision,
                              parallelism=parallelism, base=base)
        if variables is None:
          _log(f"{name}:{encoder} init")
          variables = initial_variables(config, config.seed)
        ident = {"model": name, "encoder": encoder, "precision": precision,
                 "optimizer": config.optimizer, "loss": config.loss}
        _log(f"{name}:{encoder} {precision} train (batch {batch}, {parallelism})")
        # The peer's model: keep its compiled step and state for the alternating rounds after the peer.
        # (Kept buffers stay allocated: a later measurement's device peak includes them.)
        keep = (peer and peer_rounds > 0 and (name, encoder) == ("resnet34_unet", "resnet34")
                and precision in peer_precisions)
        train = measure_train(config, num_steps=num_steps, warmup=warmup, variables=variables, keep_timer=keep)
        if keep:
          train, train_timer = train
        peak = matmul[precision]["tflops"] * jax.device_count()

        def train_line(result: dict, convolutions: str, **extra) -> dict:  # pylint: disable=cell-var-from-loop
          return {"kind": "train", **ident, "convolutions": convolutions, "batch": batch, **result,
                  "matmul_peak_tflops": matmul[precision]["tflops"],
                  "fraction_of_matmul_peak": (None if result["achieved_tflops"] is None
                                              else result["achieved_tflops"] / peak),
                  **extra}

        train_record = emit(train_line(train, "veinjax"))
        if xla_convolutions:  # the same step traced without veinjax's CPU convolution workarounds
          _log(f"{name}:{encoder} {precision} train with XLA's convolutions only")
          with layers.lax_convolutions():
            plain = measure_train(config, num_steps=num_steps, warmup=warmup, variables=variables)
          emit(train_line(plain, "xla",
                          veinjax_over_xla_convolutions_train=train["images_per_s"] / plain["images_per_s"]))
        if one_pass_variance:  # the same step traced with flax's one-pass BatchNorm variance
          _log(f"{name}:{encoder} {precision} train with the one-pass BatchNorm variance")
          with layers.one_pass_batch_variance():
            one_pass = measure_train(config, num_steps=num_steps, warmup=warmup, variables=variables)
          emit(train_line(one_pass, "veinjax", batch_variance="one_pass",
                          veinjax_over_one_pass_variance_train=train["images_per_s"] / one_pass["images_per_s"]))
        _log(f"{name}:{encoder} {precision} infer (batch 1 and {infer_batch})")
        infer = measure_infer(config, infer_batch=infer_batch, num_steps=num_steps, warmup=warmup,
                              variables=variables, keep_timer=keep)
        if keep:
          infer, infer_timer = infer
          our_timers[precision] = (train_timer, infer_timer)
        infer_record = emit({"kind": "infer", **ident, "batch": 1, "infer_batch": infer_batch, **infer})
        ours[(name, encoder, precision)] = (train_record, infer_record)

    if pipeline:
      config = bench_config(*parsed[0], size=size, batch=batch, parallelism=parallelism, base=base)
      _log("input pipeline (TensorFlow)")
      emit({"kind": "pipeline", "batch": batch, **measure_pipeline(config, epochs=num_steps)})
    if peer:
      for precision in peer_precisions:
        _log(f"peer smp Unet(resnet34) {precision}")
        rounds = peer_rounds if precision in our_timers else 0
        if peer_rounds and not rounds:
          _log(f"no alternating rounds for the peer {precision}: resnet34_unet:resnet34 {precision} was not "
               "measured (--models, --precisions)")
        try:
          result = measure_peer(size=size, batch=batch, precision=precision, num_steps=num_steps, warmup=warmup,
                                keep_timers=rounds > 0)
        except Exception as e:  # pylint: disable=broad-except  # e.g. torch.compile failing: keep the table
          _log(f"peer {precision} failed: {type(e).__name__}: {e}")
          emit({"kind": "peer", "precision": precision, "batch": batch, "error": f"{type(e).__name__}: {e}"})
          continue
        if rounds:
          result, peer_train_timer, peer_infer_timer = result
        ratios = {"veinjax_over_peer_train_images_per_s": None, "veinjax_over_peer_infer_frames_per_s": None}
        if ("resnet34_unet", "resnet34", precision) in ours:
          train_record, infer_record = ours[("resnet34_unet", "resnet34", precision)]
          ratios = {"veinjax_over_peer_train_images_per_s": train_record["images_per_s"] / result["images_per_s"],
                    "veinjax_over_peer_infer_frames_per_s": result["ms_per_frame"] / infer_record["ms_per_frame"]}
        emit({"kind": "peer", "precision": precision, "batch": batch, **result, **ratios})
        if rounds:
          _log(f"veinjax and peer {precision}: {rounds} alternating rounds of {num_steps} steps and frames")
          try:
            compared = head_to_head(our_timers[precision], (peer_train_timer, peer_infer_timer), rounds=rounds,
                                    runs=num_steps)
          except Exception as e:  # pylint: disable=broad-except  # as the peer's own measurement: keep the table
            _log(f"alternating rounds {precision} failed: {type(e).__name__}: {e}")
            compared = {"error": f"{type(e).__name__}: {e}"}
          emit({"kind": "head_to_head", "precision": precision, "batch": batch, **compared})
    print(markdown_table(records), flush=True)
  finally:
    if json_file is not None:
      json_file.close()
  return records


# ---- Command line ----


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list("models", list(DEFAULT_MODELS), "Models to time, `model` or `model:encoder`.")
  flags.DEFINE_integer("size", 512, "Input height and width (divisible by 32).")
  flags.DEFINE_integer("batch", 4, "Global train batch (a multiple of the device count).")
  flags.DEFINE_integer("infer_batch", 32, "Batch of the inference throughput figure (batch 1 is always timed).")
  flags.DEFINE_enum("parallelism", "pmap", list(parallel.PARALLELISM), "The train step under pmap or jit.")
  flags.DEFINE_list("precisions", list(DEFAULT_PRECISIONS), "bf16 (config.half_precision) and / or fp32, in "
                    "this order (the peak-memory counter only rises: smaller footprints first).")
  flags.DEFINE_integer("steps", 5, "Timed steps (the median is reported).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after the first (compiling) call.")
  flags.DEFINE_integer("matmul_size", 0, "Square matmul size of the peak (0: 4096 on accelerators, 1024 on CPU).")
  flags.DEFINE_integer("matmul_reps", 0, "Matmuls chained in one call (0: 10 on accelerators, 1 on CPU).")
  flags.DEFINE_bool("peer", False, "Also time smp Unet('resnet34') in PyTorch (needs torch and "
                    "segmentation_models_pytorch).")
  flags.DEFINE_list("peer_precisions", [], "The peer's precisions (empty: --precisions).")
  flags.DEFINE_integer("peer_rounds", 4, "With --peer: after both frameworks' own measurements, this many "
                       "alternating rounds (veinjax then PyTorch, then PyTorch then veinjax, ...; an even "
                       "count) of --steps train steps and --steps batch-1 inferences of resnet34_unet each; "
                       "the ratio of each pair of rounds and their median, robust to a machine whose speed "
                       "drifts (0: none).")
  flags.DEFINE_bool("pipeline", False, "Also time the tf.data input pipeline (imports TensorFlow).")
  flags.DEFINE_bool("xla_convolutions", False, "Also time each train step with XLA's own convolutions only "
                    "(without veinjax's CPU workarounds, `layers.lax_convolutions()`): their before/after.")
  flags.DEFINE_bool("one_pass_variance", False, "Also time each train step with flax's one-pass BatchNorm "
                    "variance (`layers.one_pass_batch_variance()`): the cost of veinjax's two-pass variance.")
  flags.DEFINE_string("json_out", "", "Also write the JSON lines to this file.")
  flags.DEFINE_string("table_from", "", "Measure nothing: print the Markdown table of this file's JSON lines "
                      "(one run's or several runs' concatenated).")
  config_flags.DEFINE_config_file(
      "config", os.path.join(ROOT, "configs", "default.py"),
      "Base config (optimizer, loss, ...); --models, --size, --batch, --parallelism and --precisions set "
      "model, encoder, image_size, batch_size, parallelism and half_precision.", lock_config=True)


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    print(f"speed: error: unexpected arguments {argv[1:]} (flags are --name=value)", file=sys.stderr)
    sys.exit(2)
  warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
  f = flags.FLAGS
  if f.table_from:
    print(markdown_table(read_records(f.table_from)))
    return
  if f.peer:
    # JAX takes 75% of a GPU's memory when its backend starts (after this line); leave PyTorch room.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  try:
    run(model_specs=f.models, size=f.size, batch=f.batch, infer_batch=f.infer_batch, parallelism=f.parallelism,
        precisions=f.precisions, num_steps=f.steps, warmup=f.warmup, matmul_size=f.matmul_size,
        matmul_reps=f.matmul_reps, peer=f.peer, peer_precisions=f.peer_precisions, pipeline=f.pipeline,
        xla_convolutions=f.xla_convolutions, one_pass_variance=f.one_pass_variance, peer_rounds=f.peer_rounds,
        base=f.config, json_out=f.json_out)
  except BenchmarkError as e:
    print(f"speed: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
