"""benchmarks/realtime.py's table and targets (the timing itself is the benchmark's, not a test's)."""

from benchmarks import realtime

_ROWS = [
    {"model": "ultralight_unet", "runtime": "XLA (jax.jit)", "quantize": "none", "cores": 1, "ms": 4.0},
    {"model": "ultralight_unet", "runtime": "TFLite (XNNPACK)", "quantize": "int8", "cores": 1, "ms": 2.5},
    {"model": "ultralight_unet", "runtime": "XLA (jax.jit)", "quantize": "none", "cores": 2, "ms": 3.0},
    {"model": "smp Unet(mobilenetv3_small)", "runtime": "PyTorch eager", "quantize": "none", "cores": 2,
     "ms": 24.0, "params": 3_585_361},
    {"model": "smp Unet(resnet34)", "runtime": "PyTorch eager", "quantize": "none", "cores": 2, "ms": 90.0,
     "params": 24_430_097},
]


def test_table_has_one_row_per_model_runtime_and_weights():
  text = realtime.table(_ROWS, {"ultralight_unet": 172_065}, [1, 2])
  lines = text.splitlines()
  assert len(lines) == 2 + 4
  assert "| `ultralight_unet` | 172,065 | XLA (jax.jit) | float32 | 4.00 | 250 | 3.00 | 333 |" in lines
  assert "| `ultralight_unet` | 172,065 | TFLite (XNNPACK) | int8 | 2.50 | 400 |  |  |" in lines
  assert any(line.startswith("| `smp Unet(resnet34)` | 24,430,097 |") for line in lines)


def test_targets_take_the_fastest_runtime_and_the_lightest_peer():
  lines = realtime.targets(_ROWS, "ultralight_unet")
  assert lines[0].startswith("ultralight_unet on 1 core, fastest runtime (TFLite (XNNPACK), int8): 2.50 ms")
  assert "400 frames/s" in lines[0]
  # the lightest peer by parameters (the MobileNet U-Net), not the slowest: 24 / 3 = 8x
  assert "vs smp Unet(mobilenetv3_small) 24.00 ms: 8.0x faster" in lines[1]


def test_the_targets_are_about_the_realtime_config():
  assert realtime.realtime_model() == "light_unet:mobilenetv3_small"
  assert realtime.targets(_ROWS) == []  # no row of that model above: no target line claims anything


def test_each_candidate_gets_its_own_encoder_not_the_realtime_configs():
  """A bare `resnet34_unet` is the paper's model (it once got configs/realtime.py's MobileNet encoder)."""
  import jax  # pylint: disable=g-import-not-at-top
  from veinjax import models, steps  # pylint: disable=g-import-not-at-top

  def params(candidate):
    config = realtime._config(candidate, 64)  # pylint: disable=protected-access
    model = steps.create_model(config)
    shapes = jax.eval_shape(lambda: steps.init_variables(model, config, jax.random.key(0)))
    return config.encoder, models.count_params(shapes["params"])

  assert params("resnet34_unet") == ("resnet34", 24_430_097)
  assert params("light_unet:mobilenetv3_small") == ("mobilenetv3_small", 980_353)
  assert params("ultralight_unet")[1] == 172_065
