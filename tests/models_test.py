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
from veinjax.models import layers
from veinjax.models import cost
from veinjax.models import mobilenet

jax.config.update("jax_disable_most_optimizations", True)

# Parameters only (weights, biases, BN scale and bias; not BN running statistics), 1 input channel,
# 1 class; encoder None: a fixed-encoder model. resnet34_unet equals smp.Unet("resnet34", in_channels=1,
# classes=1); resnet18 / resnet50 equal the smp counts too (14,328,209 and 32,521,105 with 3 input
# channels, minus 64*2*49 = 6,272). The MobileNetV3 encoders are torchvision's `features` (926,720 and
# 2,971,664, see test_mobilenetv3_encoders_match_torchvision); encoder_unet on them adds smp's U-Net
# decoder by its arithmetic (per block (in + skip)*9*out + out*9*out + 4*out, skips 48-24-16-16 /
# 112-40-24-16, head 16*9 + 1), as smp.Unet("timm-mobilenetv3_small_100" / "_large_100") would have.
# deeplabv3plus on MobileNetV3, light_unet and ultralight_unet are this repository's own designs: pins.
PINNED_PARAMS = {
    ("resnet34_unet", "resnet34"): 24_430_097,
    ("resnet34_unet", "resnet18"): 14_321_937,
    ("resnet34_unet", "resnet50"): 32_514_833,
    ("unet", None): 31_035_521,
    ("fcn8s", None): 134_276_675,
    ("deeplabv3plus", "resnet34"): 26_704_929,
    ("deeplabv3plus", "resnet18"): 16_596_769,
    ("deeplabv3plus", "resnet50"): 40_340_769,
    ("deeplabv3plus", "mobilenetv3_small"): 6_826_081,
    ("deeplabv3plus", "mobilenetv3_large"): 11_722_225,
    ("encoder_unet", "resnet34"): 24_430_097,  # The same network as resnet34_unet.
    ("encoder_unet", "mobilenetv3_small"): 926_720 + 2_658_641,
    ("encoder_unet", "mobilenetv3_large"): 2_971_664 + 3_713_873,
    ("light_unet", "mobilenetv3_small"): 926_720 + 53_633,
    ("light_unet", "mobilenetv3_large"): 3_059_865,
    ("light_unet", "resnet34"): 21_350_281,
    ("ultralight_unet", None): 172_065,
}

# The encoder each model runs the shared suite with (None: its default). encoder_unet's default is
# resnet34_unet's network, so the suite runs it on the large MobileNetV3 instead.
SUITE_ENCODERS = {"encoder_unet": "mobilenetv3_large"}

BATCH = 2  # >= 2: DeepLab's image-pooling BatchNorm needs more than one value per channel in training.
BASE_SHAPE = (BATCH, 32, 32, 1)


def _input(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _create(name, **kwargs):
  return models.create_model(name, encoder=SUITE_ENCODERS.get(name), **kwargs)


@functools.lru_cache(maxsize=None)
def _model(name, dtype=jnp.float32, num_classes=1):
  return _create(name, num_classes=num_classes, dtype=dtype)


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
  # The jitted eval pass equals the model applied eagerly (op by op, no XLA fusion), up to float rounding;
  # eagerly with XLA's own convolutions, so the CPU small-map and depthwise paths are checked against them too
  # (and the eager pass runs a few convolution ops instead of each path's many shifted multiply-adds).
  with layers.lax_convolutions():
    eager = _model(name).apply(variables, x, train=False)
  np.testing.assert_allclose(first, eager, rtol=1e-4, atol=1e-4)
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


@pytest.mark.parametrize(("model_name", "encoder"), sorted(PINNED_PARAMS, key=str))
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
  every = "resnet34_unet, unet, fcn8s, deeplabv3plus, encoder_unet, light_unet, ultralight_unet$"
  with pytest.raises(ValueError, match="valid models: " + every):
    models.create_model("segnet")


def test_unknown_encoder_lists_the_choices():
  with pytest.raises(ValueError, match="valid encoders: resnet18, resnet34, resnet50, mobilenetv3_small, "
                                       "mobilenetv3_large$"):
    models.create_model("resnet34_unet", encoder="resnet101")


@pytest.mark.parametrize("fixed", ["unet", "fcn8s", "ultralight_unet"])
def test_encoder_choice_on_a_fixed_encoder_model_is_an_error(fixed):
  only = "applies only to resnet34_unet, deeplabv3plus, encoder_unet, light_unet$"
  with pytest.raises(ValueError, match=only):
    models.create_model(fixed, encoder="mobilenetv3_small")
  # The config's default encoder name is accepted and ignored: the same network as with no encoder given.
  with_default = _init_shapes(models.create_model(fixed, encoder=models.DEFAULT_ENCODER), (1, 32, 32, 1))
  without = _init_shapes(models.create_model(fixed), (1, 32, 32, 1))
  assert jax.tree.map(lambda a: a.shape, with_default) == jax.tree.map(lambda a: a.shape, without)


@pytest.mark.parametrize("num_classes", [0, 1.5, True])
def test_bad_num_classes(num_classes):
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("unet", num_classes=num_classes)


def test_unet_widths_narrow_and_shorten_the_unet():
  """(8, 16): two stages, one pooling, one up-block; parameters by hand: down0 1*9*8 + 8*9*8, down1 8*9*16
  + 16*9*16, up1 16*4*8 (up-conv, no bias) + 16*9*8 + 8*9*8, BN scale and bias 2*(8+8+16+16+8+8), head 8+1."""
  model = models.create_model("unet", unet_widths=(8, 16))
  shapes = _init_shapes(model, (1, 32, 32, 1))
  assert sorted(shapes["params"]) == ["encoder", "head", "up1"]
  assert sorted(shapes["params"]["encoder"]) == ["down0_conv1", "down0_conv2", "down1_conv1", "down1_conv2"]
  by_hand = 72 + 576 + 1152 + 2304 + 512 + 1152 + 576 + 2 * (8 + 8 + 16 + 16 + 8 + 8) + 9
  assert models.count_params(shapes["params"]) == by_hand == 6481
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  logits = jax.jit(functools.partial(model.apply, train=False))(variables, jnp.ones((2, 32, 64, 1)))
  assert logits.shape == (2, 32, 64, 1) and bool(jnp.all(jnp.isfinite(logits)))
  # The default is the original's: the same network as without the argument.
  default = _init_shapes(models.create_model("unet", unet_widths=models.UNET_WIDTHS), (1, 32, 32, 1))
  assert models.count_params(default["params"]) == PINNED_PARAMS[("unet", None)]


@pytest.mark.parametrize("widths", [(), (8, 0), (8.5,), (8, 16, 32, 64, 128, 256, 512), "16,32", (True,)])
def test_bad_unet_widths_name_the_rule(widths):
  with pytest.raises(ValueError, match=r"unet_widths must be 1 to 6 positive integers.*got"):
    models.create_model("unet", unet_widths=widths)


def test_unet_widths_on_another_model_is_an_error():
  with pytest.raises(ValueError, match=r"unet_widths applies only to model 'unet', not 'fcn8s'"):
    models.create_model("fcn8s", unet_widths=(8, 16))


def test_encoder_kwarg_changes_the_encoder():
  shapes = _init_shapes(models.create_model("resnet34_unet", encoder="resnet50"), (1, 32, 32, 1))
  assert "conv3" in shapes["params"]["encoder"]["layer1_0"]  # A Bottleneck block.


def test_default_encoders():
  """light_unet defaults to the small MobileNetV3; encoder_unet without an encoder is resnet34_unet."""
  light = _init_shapes(models.create_model("light_unet"), (1, 32, 32, 1))
  assert "se" in light["params"]["encoder"]["block0"]  # MobileNetV3-small's first block has SE.
  plain = _init_shapes(models.create_model("encoder_unet"), (1, 32, 32, 1))
  paper = _init_shapes(models.create_model("resnet34_unet"), (1, 32, 32, 1))
  assert jax.tree.structure(plain) == jax.tree.structure(paper)


@pytest.mark.parametrize("encoder", models.ENCODER_NAMES)
def test_every_model_with_an_encoder_takes_every_encoder(encoder):
  x = jax.ShapeDtypeStruct((1, 64, 96, 1), jnp.float32)
  for model_name in sorted(models.DEFAULT_ENCODERS):
    model = models.create_model(model_name, encoder=encoder)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert logits.shape == (1, 64, 96, 1) and logits.dtype == jnp.float32, model_name


# torchvision's published totals (mobilenet_v3_small / _large, 3 input channels) minus the classifier
# (Linear 576 -> 1024 -> 1000, Linear 960 -> 1280 -> 1000).
_TORCHVISION_FEATURES = {
    "mobilenetv3_small": 2_542_856 - (576 * 1024 + 1024 + 1024 * 1000 + 1000),
    "mobilenetv3_large": 5_483_032 - (960 * 1280 + 1280 + 1280 * 1000 + 1000),
}


@pytest.mark.parametrize("encoder", sorted(_TORCHVISION_FEATURES))
def test_mobilenetv3_encoders_match_torchvision(encoder):
  for output_stride in (32, 16):
    module = mobilenet.MOBILENET_ENCODERS[encoder](output_stride=output_stride)
    shape = (1, 64, 64, 3)
    features, variables = jax.eval_shape(
        lambda x, m=module: m.init_with_output(jax.random.key(0), x, train=False), jnp.zeros(shape))
    assert models.count_params(variables["params"]) == _TORCHVISION_FEATURES[encoder]
    assert tuple(f.shape[-1] for f in features) == module.out_channels
    assert tuple(shape[1] // f.shape[1] for f in features) == module.reductions
  assert mobilenet.MOBILENET_ENCODERS[encoder]().reductions == (2, 4, 8, 16, 32)
  assert module.reductions == (2, 4, 8, 16, 16)  # output_stride 16: the last stage dilated.


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

  with_axis = _create(name, bn_axis_name="batch")
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
  assert small["params"] == large["params"] == PINNED_PARAMS[("unet", None)]
  # Convolutions dominate and scale with the pixel count (a little more than 4x: less zero padding).
  assert 4.0 <= large["gflops"] / small["gflops"] < 4.6
