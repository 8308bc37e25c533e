"""benchmarks/speed.py: the measure functions on a tiny model, the command's JSON lines, bad input, no TF.

Tiny sizes only (32x32, ResNet18-UNet, batch 2, one timed step): these check that the benchmark runs and
reports sane figures, not the figures themselves. The command runs in subprocesses (with JAX's
optimisations mostly off, as in this suite), which also shows what it imports.
"""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmarks/ is run from the checkout, not installed

from benchmarks import speed  # noqa: E402
from benchmarks import torch_training  # noqa: E402
_ENV = {"device": "CPU", "device_count": 1, "jax_version": "0", "cpu_count": 2, "cpu_affinity": 2, "steps": 2,
        "warmup": 0}  # the environment fields of a record, for markdown_table
TINY = ["--size=32", "--batch=2", "--infer_batch=2", "--models=resnet34_unet:resnet18", "--precisions=fp32",
        "--steps=1", "--warmup=0", "--matmul_size=64"]


def _run_speed(argv, env_extra=None, prelude="", epilogue="", timeout=300):
  """`python -m benchmarks.speed ARGV` in a subprocess (via runpy, so code can run before and after)."""
  code = (f"import runpy, sys\n{prelude}\nsys.argv = {['speed'] + list(argv)!r}\n"
          "try:\n  runpy.run_module('benchmarks.speed', run_name='__main__', alter_sys=True)\n"
          "except SystemExit as e:\n  code = e.code\nelse:\n  code = 0\n"
          f"{epilogue}\nsys.exit(code)\n")
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu", **(env_extra or {})}
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=timeout)


def _positive_finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_measure_functions_return_positive_finite_numbers():
  config = speed.bench_config("resnet34_unet", "resnet18", size=32, batch=2, parallelism="jit")
  assert (config.optimizer, config.loss, config.image_size, config.batch_size) == ("adam", "bce", 32, 2)
  variables = speed.initial_variables(config)
  train = speed.measure_train(config, num_steps=1, warmup=0, variables=variables)
  for key in ("images_per_s", "step_ms", "compile_s", "first_call_s", "flops_per_step", "achieved_tflops",
              "xla_bytes_per_device", "train_loss"):
    assert _positive_finite(train[key]), (key, train)
  assert train["compile_s"] < train["first_call_s"]  # the first call = compile + the first step
  assert train["peak_bytes_in_use"] is None or train["peak_bytes_in_use"] > 0  # None on CPU
  infer = speed.measure_infer(config, infer_batch=2, num_steps=1, warmup=0, variables=variables)
  for key in ("ms_per_frame", "images_per_s", "compile_s_b1", "first_call_s_b1", "compile_s_bn",
              "achieved_tflops_b1"):
    assert _positive_finite(infer[key]), (key, infer)
  for dtype in (jnp.float32, jnp.bfloat16):
    matmul = speed.measure_matmul(64, dtype, reps=2, num_steps=1, warmup=0)
    assert _positive_finite(matmul["tflops"]) and matmul["dtype"] == jnp.dtype(dtype).name


def test_kept_timers_time_more_steps_of_the_same_compiled_step():
  config = speed.bench_config("resnet34_unet", "resnet18", size=32, batch=2, parallelism="jit")
  variables = speed.initial_variables(config)
  train, train_timer = speed.measure_train(config, num_steps=1, warmup=0, variables=variables, keep_timer=True)
  infer, infer_timer = speed.measure_infer(config, infer_batch=2, num_steps=1, warmup=0, variables=variables,
                                           keep_timer=True)
  assert _positive_finite(train["step_ms"]) and _positive_finite(infer["ms_per_frame"])
  # More calls of the same executable: the train timer's steps run on the state the earlier ones returned
  # (a donated, deleted buffer passed again would raise).
  for timer, first_call_s in ((train_timer, train["first_call_s"]), (infer_timer, infer["first_call_s_b1"])):
    seconds = timer(3)
    assert len(seconds) == 3 and all(_positive_finite(t) for t in seconds)
    assert max(seconds) < first_call_s, (seconds, first_call_s)  # no compilation inside


class _DriftingMachine:
  """A simulated clock: each call of a timer costs its work times the machine's slowness, which grows by
  `drift` per call (as this VM's speed drifts); records the order of the calls."""

  def __init__(self, drift):
    self.slowness, self.drift, self.calls = 1.0, drift, []

  def timer(self, name, work):
    def run(runs):
      seconds = []
      for _ in range(runs):
        self.calls.append(name)
        seconds.append(work * self.slowness)
        self.slowness += self.drift
      return seconds
    return run


def test_alternating_rounds_take_turns_and_keep_the_ratio_on_a_drifting_machine():
  machine = _DriftingMachine(drift=0.05)
  ours, peer = machine.timer("ours", 1.0), machine.timer("peer", 1.25)  # veinjax truly 1.25x faster
  our_s, peer_s = speed.alternating_rounds([ours, peer], rounds=4, runs=2)
  # A B B A A B B A, 2 calls each:
  assert machine.calls == ["ours"] * 2 + ["peer"] * 4 + ["ours"] * 4 + ["peer"] * 4 + ["ours"] * 2
  assert len(our_s) == len(peer_s) == 4
  # One round alone favours whoever went first (here the slowness grows 5% a call: 1.37, 1.16, 1.34, 1.18);
  # each pair of rounds cancels the drift.
  single = [p / o for o, p in zip(our_s, peer_s)]
  assert max(abs(r / 1.25 - 1) for r in single) > 0.05
  assert speed.pair_ratios(our_s, peer_s) == pytest.approx([1.25, 1.25], rel=1e-9)


def test_head_to_head_reports_each_round_and_the_median_ratio():
  machine = _DriftingMachine(drift=0.0)
  ours = (machine.timer("our train", 2.0), machine.timer("our infer", 0.5))
  peer = (machine.timer("peer train", 3.0), machine.timer("peer infer", 0.4))
  record = speed.head_to_head(ours, peer, rounds=4, runs=2)
  assert record["rounds"] == 4 and record["runs_per_round"] == 2
  assert record["veinjax_train_ms_per_round"] == [2000.0] * 4 and record["peer_infer_ms_per_round"] == [400.0] * 4
  assert record["veinjax_over_peer_train"] == pytest.approx(1.5)  # speed ratio: > 1, veinjax faster
  assert record["veinjax_over_peer_infer"] == pytest.approx(0.8)
  assert record["veinjax_over_peer_train_per_pair"] == pytest.approx([1.5] * 2)
  table = speed.markdown_table([{**_ENV, "kind": "head_to_head", "precision": "fp32", "size": 64, "batch": 4,
                                 **record}])
  assert "fp32, 64x64, batch 4, in 4 alternating rounds of 2 train steps" in table
  assert "train 1.50x (1.50, 1.50), infer 0.80x (0.80, 0.80)" in table


def test_bad_models_name_the_valid_choices():
  with pytest.raises(speed.BenchmarkError, match="unknown model 'resnet35_unet'.*valid models: resnet34_unet"):
    speed.parse_models(["resnet35_unet"])
  with pytest.raises(speed.BenchmarkError, match="unknown encoder 'resnet99'.*valid encoders: resnet18"):
    speed.parse_models(["light_unet:resnet99"])
  with pytest.raises(speed.BenchmarkError, match="fixed encoder"):
    speed.parse_models(["fcn8s:resnet18"])
  assert speed.parse_models(["resnet34_unet", "light_unet", "encoder_unet:mobilenetv3_small", "unet"]) == [
      ("resnet34_unet", "resnet34"), ("light_unet", "mobilenetv3_small"),
      ("encoder_unet", "mobilenetv3_small"), ("unet", None)]
  with pytest.raises(speed.BenchmarkError, match="--size=48"):
    speed.check_inputs(["resnet34_unet"], size=48, batch=2, infer_batch=1, num_steps=1, warmup=0,
                       precisions=["fp32"], parallelism="jit")


def test_tiny_run_prints_json_lines_and_a_table_without_tensorflow(tmp_path):
  json_out = tmp_path / "speed.jsonl"
  result = _run_speed(TINY + [f"--json_out={json_out}", "--xla_convolutions", "--one_pass_variance"],
                      epilogue="print('TENSORFLOW_IMPORTED', 'tensorflow' in sys.modules)")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  records = [json.loads(line) for line in lines]
  assert [r["kind"] for r in records] == ["matmul", "matmul", "train", "train", "train", "infer"]
  for r in records:
    assert r["device"].startswith("CPU") and r["jax_version"] and r["cpu_count"] >= 1, r
    assert "xla_flags" in r and r["platform"] == "cpu"
  train = records[2]
  assert (train["model"], train["encoder"], train["precision"], train["batch"]) == ("resnet34_unet", "resnet18",
                                                                                  "fp32", 2)
  assert _positive_finite(train["images_per_s"]) and _positive_finite(train["fraction_of_matmul_peak"])
  # --xla_convolutions: the same step again without veinjax's CPU convolution workarounds, and the ratio.
  plain = records[3]
  assert (train["convolutions"], plain["convolutions"]) == ("veinjax", "xla")
  assert plain["veinjax_over_xla_convolutions_train"] == pytest.approx(train["images_per_s"] / plain["images_per_s"])
  assert "| `resnet34_unet` (XLA's convolutions) | resnet18 | fp32 | 32 | 2 (pmap) |" in result.stdout
  # --one_pass_variance: the same step again with flax's one-pass BatchNorm variance, and the ratio.
  one_pass = records[4]
  assert (one_pass["convolutions"], one_pass["batch_variance"], "batch_variance" in train) == ("veinjax", "one_pass",
                                                                                                False)
  assert one_pass["veinjax_over_one_pass_variance_train"] == pytest.approx(
      train["images_per_s"] / one_pass["images_per_s"])
  assert "| `resnet34_unet` (one-pass BN variance) | resnet18 | fp32 | 32 | 2 (pmap) |" in result.stdout
  assert [json.loads(line) for line in json_out.read_text().splitlines()] == records
  assert "| `resnet34_unet` | resnet18 | fp32 | 32 | 2 (pmap) |" in result.stdout
  assert "TENSORFLOW_IMPORTED False" in result.stdout
  # --table_from rebuilds the same table from the JSON lines (e.g. of several capped runs).
  assert speed.markdown_table(speed.read_records(str(json_out))) in result.stdout


def test_import_does_not_import_tensorflow():
  code = "import sys, benchmarks.speed; print('tensorflow' in sys.modules)"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "False"


def test_bad_input_on_the_command_line_exits_2_with_the_reason():
  result = _run_speed(["--models=resnet34_unet,nope"])
  assert result.returncode == 2, result.stderr[-3000:]
  assert "unknown model 'nope'" in result.stderr and "ultralight_unet" in result.stderr
  result = _run_speed(["--batch=3"], env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert result.returncode == 2, result.stderr[-3000:]
  assert "--batch=3" in result.stderr and "2 devices" in result.stderr
  for rounds in ("-1", "3"):
    result = _run_speed(TINY + [f"--peer_rounds={rounds}"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"--peer_rounds={rounds}" in result.stderr and "even count" in result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("{")]


def test_peer_without_torch_names_the_install():
  # torch and smp unimportable here, installed or not; the check comes before any measurement.
  prelude = "sys.modules['torch'] = None; sys.modules['segmentation_models_pytorch'] = None"
  result = _run_speed(TINY + ["--peer"], prelude=prelude)
  assert result.returncode == 2, result.stderr[-3000:]
  assert speed.PEER_MISSING in result.stderr
  assert not [line for line in result.stdout.splitlines() if line.startswith("{")]


_HAS_PEER = torch_training.peer_installed()


@pytest.mark.skipif(not _HAS_PEER, reason="torch / segmentation-models-pytorch not installed")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_peer_is_measured_on_cpu_in_both_precisions(precision):
  # bf16 on CPU too (autocast, eager): the peer of veinjax's bf16 step on CPUs with bf16 units.
  result = speed.measure_peer(size=32, batch=2, precision=precision, num_steps=1, warmup=0)
  assert result["autocast_bf16"] == (precision == "bf16") and result["torch_device"] == "cpu"
  assert not result["torch_compile"] and not result["channels_last"]
  for key in ("images_per_s", "step_ms", "first_call_s", "ms_per_frame"):
    assert _positive_finite(result[key]), (key, result)


@pytest.mark.skipif(not _HAS_PEER, reason="torch / segmentation-models-pytorch not installed")
def test_bf16_peer_rounds_run_on_cpu(tmp_path):
  # The alternating rounds need veinjax's bf16 step kept for them, on CPU as on an accelerator.
  out = tmp_path / "speed.jsonl"
  result = _run_speed(["--size=32", "--batch=2", "--infer_batch=2", "--precisions=bf16", "--steps=1", "--warmup=0",
                       "--matmul_size=64", "--peer", "--peer_rounds=2", f"--json_out={out}"], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in out.read_text().splitlines()]
  rounds = [r for r in records if r["kind"] == "head_to_head"]
  assert [r["precision"] for r in rounds] == ["bf16"], records
  assert len(rounds[0]["veinjax_train_ms_per_round"]) == len(rounds[0]["peer_train_ms_per_round"]) == 2
  assert _positive_finite(rounds[0]["veinjax_over_peer_train"])
