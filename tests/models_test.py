"""One shared test suite, run on every model of the zoo (as segmentation_models_pytorch does).

Small inputs (32..96 pixels) and XLA's optimisations off: init and compile time dominate on CPU. Each
model is initialised once and its jitted functions are cached across tests.
"""

import functools
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from veinjax import models
from veinjax.models import cost

jax.config.update("jax_disable_most_optimizations", True)

# Parameters only (weights, biases, BN scale and bias; not BN running statistics), 1 input channel,
# 1 class. resnet34_unet equals smp.Unet("resnet34", in_channels=1, classes=1); resnet18 / resnet50
# equal the smp counts too (14,328,209 and 32,521,105 with 3 input channels, minus 64*2*49 = 6,272).
PINNED_PARAMS = {
    ("resnet34_unet", "resnet34"): 24_430_097,
    ("resnet34_unet", "resnet18"): 14_321_937,
    ("resnet34_unet", "resnet50"): 32_514_833,
    ("unet", "resnet34"): 31_035_521,
    ("fcn8s", "resnet34"): 134_276_675,
    ("deeplabv3plus", "resnet34"): 26_704_929,
    ("deeplabv3plus", "resnet18"): 16_596_769,
    ("deeplabv3plus", "resnet50"): 40_340_769,
}

BATCH = 2  # >= 2: DeepLab's image-pooling BatchNorm needs more than one value per channel in training.
BASE_SHAPE = (BATCH, 32, 32, 1)


def _input(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@functools.lru_cache(maxsize=None)
def _model(name, dtype=jnp.float32, num_classes=1):
  return models.create_model(name, num_classes=num_classes, dtype=dtype)


def _init_shapes(model, shape):
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape))


@functools.lru_cache(maxsize=None)
def _variables(name, shape=BASE_SHAPE, num_classes=1):
  """The model's own init for the base case; other channel / class counts reuse it.

  Random init dominates the CPU time (fcn8s alone has 134M parameters), so for other input channel and
  class counts only the leaves whose shape differs (first conv, head) get fresh random values; the
  tree itself comes from tracing that model's init.
  """
  if shape == BASE_SHAPE and num_classes == 1:
    model = _model(name)
    return jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), _input(shape))
  base = _variables(name)
  shapes = _init_shapes(_model(name, num_classes=num_classes), shape)
  rng = np.random.default_rng(1)

  def fill(target, value):
    if target.shape == value.shape:
      return value
    return jnp.asarray(0.1 * rng.standard_normal(target.shape), target.dtype)

  return jax.tree.map(fill, shapes, base)


@functools.lru_cache(maxsize=None)
def _eval_fn(name, dtype=jnp.float32, num_classes=1):
  """Jitted (variables, x) -> (logits, batch_stats after the call) in eval mode."""
  apply = functools.partial(_model(name, dtype, num_classes).apply, train=False, mutable=["batch_stats"])

  @jax.jit
  def run(variables, x):
    logits, updates = apply(variables, x)
    return logits, updates["batch_stats"]

  return run


@functools.lru_cache(maxsize=None)
def _train_fn(name):
  """Jitted (variables, x, target) -> (loss, (grads, new batch_stats, logits)) in training mode."""
  model = _model(name)

  def loss_fn(params, batch_stats, x, target):
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(logits * target), (updates["batch_stats"], logits)

  @jax.jit
  def step(variables, x, target):
    (loss, (stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"], variables["batch_stats"], x, target
    )
    return loss, grads, stats, logits

  return step


@functools.lru_cache(maxsize=None)
def _eval_result(name):
  """(logits, batch_stats) of the float32 model in eval mode on the base input."""
  return _eval_fn(name)(_variables(name), _input(BASE_SHAPE))


@functools.lru_cache(maxsize=None)
def _train_result(name):
  """(loss, grads, new batch_stats, logits) of one training-mode pass on the base input."""
  return _train_fn(name)(_variables(name), _input(BASE_SHAPE), _input(BASE_SHAPE, seed=2))


def _leaf_pairs(a, b):
  """[(path, (leaf of a, leaf of b))] as numpy arrays, for trees of the same structure."""
  pairs = jax.tree.map(lambda x, y: (np.asarray(x), np.asarray(y)), a, b)
  return jax.tree_util.tree_leaves_with_path(pairs, is_leaf=lambda t: isinstance(t, tuple))


@pytest.fixture(params=models.MODEL_NAMES)
def name(request):
  return request.param


def test_variables_are_params_and_batch_stats(name):
  variables = _variables(name)
  assert set(variables) == {"params", "batch_stats"}
  assert models.count_params(variables["batch_stats"]) > 0


def test_jitted_forward_shape_and_dtype_grayscale(name):
  logits, _ = _eval_result(name)
  assert logits.shape == BASE_SHAPE[:3] + (1,)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_jitted_forward_rgb_non_square_several_classes(name):
  shape = (1, 32, 96, 3)
  variables = _variables(name, shape, num_classes=3)
  logits, _ = _eval_fn(name, num_classes=3)(variables, _input(shape))
  assert logits.shape == (1, 32, 96, 3) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # The first conv really reads three channels.
  kernels = [leaf for leaf in jax.tree.leaves(variables["params"]) if leaf.ndim == 4]
  assert any(k.shape[2] == 3 for k in kernels)


def test_eval_is_deterministic_per_example_and_leaves_batch_stats_alone(name):
  variables = _variables(name)
  x = _input(BASE_SHAPE)
  first, stats = _eval_result(name)
  np.testing.assert_array_equal(first, _eval_fn(name)(variables, x)[0])
  for path, (after, before) in _leaf_pairs(stats, variables["batch_stats"]):
    np.testing.assert_array_equal(after, before, err_msg=jax.tree_util.keystr(path))
  # Running statistics: an example's logits do not depend on the rest of the batch.
  swapped, _ = _eval_fn(name)(variables, x[::-1])
  np.testing.assert_allclose(swapped[::-1], first, rtol=1e-4, atol=1e-4)


def test_train_mode_uses_and_updates_batch_statistics(name):
  variables = _variables(name)
  _, _, new_stats, train_logits = _train_result(name)
  # numpy, not jnp: eager jnp would compile a kernel for every distinct leaf shape.
  unchanged = [
      jax.tree_util.keystr(path)
      for path, (new, old) in _leaf_pairs(new_stats, variables["batch_stats"])
      if np.array_equal(new, old)
  ]
  assert not unchanged, f"BatchNorm running statistics not updated in training mode: {unchanged}"
  eval_logits, _ = _eval_result(name)
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)


def test_gradient_reaches_every_parameter(name):
  loss, grads, _, _ = _train_result(name)
  assert np.isfinite(loss)
  norms = {
      jax.tree_util.keystr(path): float(np.linalg.norm(np.asarray(g)))
      for path, g in jax.tree_util.tree_leaves_with_path(grads)
  }
  dead = [path for path, norm in norms.items() if not norm > 0]
  assert not dead, f"zero or non-finite gradient for {dead}"
  assert len(norms) == len(jax.tree.leaves(_variables(name)["params"]))


def test_bfloat16_computes_in_bf16_with_float32_params_and_logits(name):
  model = _model(name, jnp.bfloat16)
  x = _input(BASE_SHAPE)
  shapes = _init_shapes(model, BASE_SHAPE)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  variables = _variables(name)  # Same tree as the float32 model's: one checkpoint serves both.
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  jaxpr = str(jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x))
  convs = re.findall(r":(\w+)\[[\d,]*\] = conv_general_dilated\[", jaxpr)
  assert convs and set(convs) == {"bf16"}, f"convolution output dtypes: {set(convs)}"
  logits, _ = _eval_fn(name, jnp.bfloat16)(variables, x)
  assert logits.dtype == jnp.float32
  reference, _ = _eval_result(name)
  # bf16 has ~3 significant digits; the two must agree closely relative to the logits' spread.
  assert np.corrcoef(np.ravel(logits), np.ravel(reference))[0, 1] > 0.98


@pytest.mark.parametrize(("model_name", "encoder"), sorted(PINNED_PARAMS))
def test_pinned_parameter_count(model_name, encoder):
  shapes = _init_shapes(models.create_model(model_name, encoder=encoder), (1, 64, 64, 1))
  assert models.count_params(shapes["params"]) == PINNED_PARAMS[(model_name, encoder)]


def test_invalid_input_size_names_the_size_and_the_fix(name):
  model = _model(name)
  with pytest.raises(ValueError, match=r"input 100x130 is not divisible by 32: use 96x128 or 128x160"):
    _init_shapes(model, (1, 100, 130, 1))
  with pytest.raises(ValueError, match=r"NHWC"):
    _init_shapes(model, (64, 64, 1))


def test_models_import_without_tensorflow():
  code = "import sys, veinjax.models; assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).resolve().parent.parent)


def test_unknown_model_lists_the_choices():
  with pytest.raises(ValueError, match="valid models: resnet34_unet, unet, fcn8s, deeplabv3plus"):
    models.create_model("segnet")


def test_unknown_encoder_lists_the_choices():
  with pytest.raises(ValueError, match="valid encoders: resnet18, resnet34, resnet50"):
    models.create_model("resnet34_unet", encoder="resnet101")


@pytest.mark.parametrize("fixed", ["unet", "fcn8s"])
def test_encoder_choice_on_a_fixed_encoder_model_is_an_error(fixed):
  with pytest.raises(ValueError, match="applies only to resnet34_unet, deeplabv3plus"):
    models.create_model(fixed, encoder="resnet50")
  assert models.create_model(fixed, encoder=models.DEFAULT_ENCODER) is not None


@pytest.mark.parametrize("num_classes", [0, 1.5, True])
def test_bad_num_classes(num_classes):
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("unet", num_classes=num_classes)


def test_encoder_kwarg_changes_the_encoder():
  shapes = _init_shapes(models.create_model("resnet34_unet", encoder="resnet50"), (1, 32, 32, 1))
  assert "conv3" in shapes["params"]["encoder"]["layer1_0"]  # A Bottleneck block.


def test_bn_axis_name_reaches_every_batchnorm(name):
  """Under vmap with an axis name, every BatchNorm averages its statistics across that axis.

  (That this gives the whole batch's statistics is tested on one layer in layers_test.py.)
  """
  x = jnp.zeros((2,) + BASE_SHAPE)  # [replicas, per-replica batch, H, W, C]
  shapes = _init_shapes(_model(name), BASE_SHAPE)
  num_batchnorms = len(jax.tree.leaves(shapes["batch_stats"])) // 2  # A mean and a var each.

  def count_cross_replica_reductions(model):
    apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    jaxpr = jax.make_jaxpr(jax.vmap(apply, in_axes=(None, 0), axis_name="batch"))(shapes, x)
    return len(re.findall(r"\bpsum\w*\[", str(jaxpr)))

  with_axis = models.create_model(name, bn_axis_name="batch")
  assert count_cross_replica_reductions(with_axis) >= num_batchnorms
  assert count_cross_replica_reductions(_model(name)) == 0


def test_cost_reads_both_cost_analysis_formats_and_scales_with_pixels():

  class Compiled:
    def __init__(self, analysis):
      self.analysis = analysis

    def cost_analysis(self):
      return self.analysis

  assert cost.flops_of(Compiled({"flops": 6.0})) == 6.0  # Newer jax: a dict.
  assert cost.flops_of(Compiled([{"flops": 2.0}, {"flops": 4.0}])) == 6.0  # Older: a list.
  small = cost.measure("unet", "resnet34", size=32, in_channels=1, num_classes=1, batch=1)
  large = cost.measure("unet", "resnet34", size=64, in_channels=1, num_classes=1, batch=1)
  assert small["params"] == large["params"] == PINNED_PARAMS[("unet", "resnet34")]
  # Convolutions dominate and scale with the pixel count (a little more than 4x: less zero padding).
  assert 4.0 <= large["gflops"] / small["gflops"] < 4.6
