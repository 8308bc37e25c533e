"""The two options that train veinjax's ResNet34-UNet as the PyTorch reference does (issue 18).

- `bn_running_variance="unbiased"`: PyTorch's BatchNorm running variance (n / (n - 1) times the batch
  variance); training outputs, running means, parameters and variable names stay nn.BatchNorm's.
- `model_init="smp"`: segmentation_models_pytorch's initialisation of its Unet (decoder kaiming-uniform on
  fan-in, head xavier-uniform with zero bias, a non-RGB stem PyTorch's default conv init); the rest of the
  encoder is torchvision's, as veinjax's own.

Both off by default, giving today's models; small inputs (32x32), so this file runs in seconds on a CPU.
"""

import functools
import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import ROOT, load_config
from veinjax import models
from veinjax import steps
from veinjax import workdir
from veinjax.models import layers
from veinjax.models import pretrained

jax.config.update("jax_disable_most_optimizations", True)

MOMENTUM = 0.9  # flax's momentum of make_norm (PyTorch's 0.1).


def _x(shape, seed=0, scale=2.0, shift=1.0):
  return scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32) + shift


def _norm(running_variance, train=True, **kwargs):
  return layers.make_norm(train, running_variance=running_variance, **kwargs)()


def _stats_with(variables, mean, var):
  return {"params": variables["params"], "batch_stats": {"mean": jnp.asarray(mean), "var": jnp.asarray(var)}}


# ---- BatchNorm ----


def test_default_norm_is_flax_batchnorm_and_unbiased_is_the_named_alike_subclass():
  assert layers.make_norm(True).func is nn.BatchNorm
  unbiased = layers.make_norm(True, running_variance="unbiased")
  assert unbiased.func is layers.BatchNorm and unbiased.keywords["running_variance"] == "unbiased"
  assert issubclass(layers.BatchNorm, nn.BatchNorm) and layers.BatchNorm.__name__ == "BatchNorm"
  with pytest.raises(ValueError, match=r"unknown bn_running_variance 'pytorch'.*biased, unbiased"):
    layers.make_norm(True, running_variance="pytorch")
  with pytest.raises(ValueError, match="needs veinjax's layers.BatchNorm"):
    layers.make_norm(True, norm=nn.LayerNorm, running_variance="unbiased")


def test_unnamed_batchnorms_are_named_as_flax_names_its_own():

  class TwoNorms(nn.Module):
    running_variance: str

    @nn.compact
    def __call__(self, x):
      norm = layers.make_norm(True, running_variance=self.running_variance)
      return norm()(norm()(x))

  x = _x((2, 4, 4, 3))
  trees = [jax.tree.map(np.shape, TwoNorms(v).init(jax.random.key(0), x)) for v in ("biased", "unbiased")]
  assert trees[0] == trees[1]
  assert set(trees[0]["params"]) == {"BatchNorm_0", "BatchNorm_1"}


def test_biased_subclass_is_flax_batchnorm_bit_for_bit():
  """layers.BatchNorm's own __call__ (a copy of flax's with one line scaled) is flax's when not scaling."""
  x = _x((2, 4, 4, 3))
  reference = layers.make_norm(True)()
  subclass = functools.partial(layers.make_norm(True, norm=layers.BatchNorm))()
  assert type(subclass) is layers.BatchNorm and subclass.running_variance == "biased"
  variables = reference.init(jax.random.key(0), x)
  variables = _stats_with(variables, [0.5, -1.0, 2.0], [0.3, 1.5, 4.0])
  for train in (True, False):
    out_ref = layers.make_norm(train)().apply(variables, x, mutable=["batch_stats"])
    out_sub = layers.make_norm(train, norm=layers.BatchNorm)().apply(variables, x, mutable=["batch_stats"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), out_ref, out_sub)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_unbiased_running_variance_after_one_train_call(dtype):
  x = _x((2, 5, 3, 4))  # n = 2 * 5 * 3 = 30 values per channel.
  variables = _norm("biased", dtype=dtype).init(jax.random.key(0), x)
  old_mean, old_var = np.array([0.5, -1.0, 2.0, 0.0]), np.array([0.3, 1.5, 4.0, 1.0])
  variables = _stats_with(variables, old_mean, old_var)
  y_biased, biased = _norm("biased", dtype=dtype).apply(variables, x, mutable=["batch_stats"])
  y_unbiased, unbiased = _norm("unbiased", dtype=dtype).apply(variables, x, mutable=["batch_stats"])

  flat = np.asarray(x, np.float64).reshape(-1, 4)
  np.testing.assert_allclose(unbiased["batch_stats"]["var"],
                             MOMENTUM * old_var + (1 - MOMENTUM) * flat.var(axis=0, ddof=1), rtol=1e-5)
  np.testing.assert_allclose(biased["batch_stats"]["var"],
                             MOMENTUM * old_var + (1 - MOMENTUM) * flat.var(axis=0, ddof=0), rtol=1e-5)
  # The mean and the training-mode output (normalised with the biased batch variance) are unchanged.
  np.testing.assert_array_equal(unbiased["batch_stats"]["mean"], biased["batch_stats"]["mean"])
  assert y_unbiased.dtype == y_biased.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y_unbiased, np.float32), np.asarray(y_biased, np.float32))
  assert unbiased["batch_stats"]["var"].dtype == jnp.float32

  # Evaluation with the same running statistics: the same output, and nothing updated.
  stats = _stats_with(variables, unbiased["batch_stats"]["mean"], unbiased["batch_stats"]["var"])
  y_eval_biased = _norm("biased", train=False, dtype=dtype).apply(stats, x)
  y_eval_unbiased, updates = _norm("unbiased", train=False, dtype=dtype).apply(stats, x, mutable=["batch_stats"])
  np.testing.assert_array_equal(np.asarray(y_eval_unbiased, np.float32), np.asarray(y_eval_biased, np.float32))
  np.testing.assert_array_equal(updates["batch_stats"]["var"], stats["batch_stats"]["var"])


def test_unbiased_running_variance_counts_the_whole_cross_replica_batch():
  """Under an axis name the correction is n / (n - 1) for the n values of all replicas together."""
  x = _x((2, 3, 4, 4, 5))  # [replicas, per-replica batch, H, W, C]: n = 2 * 3 * 4 * 4 = 96 per channel.
  x = x.at[1].multiply(3.0).at[1].add(2.0)
  synced = _norm("unbiased", axis_name="batch")
  variables = _norm("unbiased").init(jax.random.key(0), x[0])

  def run(module, x):
    return module.apply(variables, x, mutable=["batch_stats"])

  y_synced, stats = jax.vmap(functools.partial(run, synced), axis_name="batch")(x)
  y_whole, whole = run(_norm("unbiased"), x.reshape(6, 4, 4, 5))
  flat = np.asarray(x, np.float64).reshape(-1, 5)
  expected = MOMENTUM * 1.0 + (1 - MOMENTUM) * flat.var(axis=0, ddof=1)
  for replica in range(2):
    np.testing.assert_allclose(stats["batch_stats"]["var"][replica], expected, rtol=1e-5)
  np.testing.assert_allclose(whole["batch_stats"]["var"], expected, rtol=1e-5)
  np.testing.assert_allclose(y_synced.reshape(y_whole.shape), y_whole, rtol=1e-4, atol=1e-4)


# ---- Models: the BatchNorm option ----


def _intercepted_batchnorms(model, shape, train=True):
  """{module path: (BatchNorm class, running_variance, n values per channel)} of one (abstract) call."""
  found = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, nn.BatchNorm):
      x = args[0]
      found["/".join(module.path)] = (type(module), getattr(module, "running_variance", "biased"),
                                      int(np.prod(x.shape[:-1])))
    return next_fun(*args, **kwargs)

  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape))
  with nn.intercept_methods(record):
    jax.eval_shape(functools.partial(model.apply, train=train, mutable=["batch_stats"]), variables,
                   jnp.zeros(shape))
  return found, variables


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_bn_running_variance_reaches_every_batchnorm_and_keeps_the_variables(name):
  encoder = {"encoder_unet": "mobilenetv3_large"}.get(name)
  shape = (2, 32, 32, 1)
  default, default_vars = _intercepted_batchnorms(models.create_model(name, encoder=encoder), shape)
  unbiased, unbiased_vars = _intercepted_batchnorms(
      models.create_model(name, encoder=encoder, bn_running_variance="unbiased"), shape)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), unbiased_vars) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), default_vars)
  assert len(unbiased) == len(jax.tree.leaves(unbiased_vars["batch_stats"])) // 2 > 0
  assert set(default.values()) == {(nn.BatchNorm, "biased", n) for _, _, n in default.values()}
  assert {v[:2] for v in unbiased.values()} == {(layers.BatchNorm, "unbiased")}


# Classes of the models initialised below: 8 give the head 3*3*16*8 weights, enough to measure its spread.
NUM_CLASSES = 8


@functools.lru_cache(maxsize=None)
def _resnet_unet(**options):
  """Variables of ResNet34-UNet (resnet34 encoder, gray input) initialised from key 0 on a 32x32 input."""
  model = models.create_model("resnet34_unet", num_classes=NUM_CLASSES, **options)
  return jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_resnet34_unet_one_train_step_unbiased_vs_biased():
  """Same logits and running means; every running variance n / (n - 1) times further from its start."""
  x = _x((2, 32, 32, 1), seed=4, scale=1.0, shift=0.0)
  variables = _resnet_unet()
  results = {}
  for running_variance in ("biased", "unbiased"):
    model = models.create_model("resnet34_unet", num_classes=NUM_CLASSES, bn_running_variance=running_variance)
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    results[running_variance] = apply(variables, x)
  (y_b, stats_b), (y_u, stats_u) = results["biased"], results["unbiased"]
  np.testing.assert_array_equal(y_u, y_b)
  counts, _ = _intercepted_batchnorms(models.create_model("resnet34_unet"), x.shape)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(stats_b["batch_stats"]))
  flat_u = dict(jax.tree_util.tree_leaves_with_path(stats_u["batch_stats"]))
  old = dict(jax.tree_util.tree_leaves_with_path(variables["batch_stats"]))
  checked = 0
  for path, biased in flat_b.items():
    keys = [k.key for k in path]
    if keys[-1] == "mean":
      np.testing.assert_array_equal(flat_u[path], biased)
      continue
    n = counts["/".join(keys[:-1])][2]
    batch_var = (np.asarray(biased, np.float64) - MOMENTUM * np.asarray(old[path])) / (1 - MOMENTUM)
    expected = MOMENTUM * np.asarray(old[path]) + (1 - MOMENTUM) * batch_var * n / (n - 1)
    np.testing.assert_allclose(flat_u[path], expected, rtol=1e-5, atol=1e-6)
    checked += 1
  assert checked == len(counts) == 36 + 10  # 36 in the ResNet-34 encoder, 2 per decoder block.


# ---- Models: the initialisation option ----


def _kernels(tree):
  """{path: kernel} of the conv kernels in a params tree."""
  return {"/".join(k.key for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if path[-1].key == "kernel"}


def test_param_count_and_tree_unchanged_by_either_option():
  shapes = {}
  for options in ({}, {"model_init": "smp"}, {"bn_running_variance": "unbiased", "model_init": "smp"}):
    model = models.create_model("resnet34_unet", **options)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               jnp.zeros((1, 32, 32, 1)))
    assert models.count_params(variables["params"]) == 24_430_097
    shapes[tuple(options)] = jax.tree.map(lambda a: (a.shape, a.dtype), variables)
  assert len({str(s) for s in shapes.values()}) == 1


def test_smp_init_decoder_kaiming_uniform_fan_in():
  variables = _resnet_unet(model_init="smp")
  decoder = _kernels(variables["params"]["decoder"])
  assert len(decoder) == 10
  for path, w in decoder.items():
    kh, kw, cin, _ = w.shape
    bound = np.sqrt(6.0 / (kh * kw * cin))
    assert np.abs(w).max() <= bound, path
    assert np.abs(w).max() > 0.98 * bound, path  # Uniform, filling its range (a normal would not stop).
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3.0), rtol=0.04, err_msg=path)
    assert abs(w.mean()) < 0.05 * bound, path
  # BatchNorm weight 1, bias 0; the decoder's convs have no bias (the BatchNorm after each makes it moot).
  norms = _bn_params(variables["params"]["decoder"])
  assert len(norms) == 10
  assert all(np.all(np.asarray(bn["scale"]) == 1.0) and np.all(np.asarray(bn["bias"]) == 0.0) for bn in norms)


def _bn_params(tree):
  """The {'scale', 'bias'} dicts of the BatchNorms in a params tree."""
  if isinstance(tree, dict) and set(tree) == {"scale", "bias"}:
    return [tree]
  if isinstance(tree, dict):
    return [bn for value in tree.values() for bn in _bn_params(value)]
  return []


def test_smp_init_head_xavier_uniform_zero_bias():
  variables = _resnet_unet(model_init="smp")
  head = variables["params"]["head"]
  w = np.asarray(head["kernel"])
  assert w.shape == (3, 3, 16, 8)
  bound = np.sqrt(6.0 / (3 * 3 * 16 + 3 * 3 * 8))
  assert bound * 0.95 < np.abs(w).max() <= bound
  np.testing.assert_allclose(w.std(), bound / np.sqrt(3.0), rtol=0.08)
  np.testing.assert_array_equal(head["bias"], np.zeros(8))


def test_veinjax_init_is_he_normal_fan_out_with_a_lecun_normal_head():
  """What the default ("veinjax") draws, documented: decoder He-normal on fan-out, head LeCun normal
  on fan-in truncated at 2 std, zero bias."""
  variables = _resnet_unet()
  for path, w in _kernels(variables["params"]["decoder"]).items():
    kh, kw, _, cout = w.shape
    np.testing.assert_allclose(w.std(), np.sqrt(2.0 / (kh * kw * cout)), rtol=0.05, err_msg=path)
  head = variables["params"]["head"]
  w = np.asarray(head["kernel"])
  std = np.sqrt(1.0 / (3 * 3 * 16))
  np.testing.assert_allclose(w.std(), std, rtol=0.08)
  assert np.abs(w).max() <= 2.0 * std / 0.87962566103423978 + 1e-6  # Truncated at 2 (pre-scaling) std.
  np.testing.assert_array_equal(head["bias"], np.zeros(8))


def test_smp_init_keeps_the_encoder_but_a_gray_stem():
  """Encoder variables equal veinjax's for the same key, except the stem for 1 input channel: smp
  re-creates it with PyTorch's default conv init, uniform in +-1/sqrt(fan_in)."""
  veinjax = _resnet_unet()
  smp = _resnet_unet(model_init="smp")
  ours = dict(jax.tree_util.tree_leaves_with_path(veinjax["params"]["encoder"]))
  theirs = dict(jax.tree_util.tree_leaves_with_path(smp["params"]["encoder"]))
  assert ours.keys() == theirs.keys()
  stem = [path for path in ours if [k.key for k in path] == ["conv1", "kernel"]]
  assert len(stem) == 1
  for path in ours:
    if path not in stem:
      np.testing.assert_array_equal(theirs[path], ours[path], err_msg=str(path))
  jax.tree.map(np.testing.assert_array_equal, smp["batch_stats"], veinjax["batch_stats"])
  w = np.asarray(theirs[stem[0]])
  assert w.shape == (7, 7, 1, 64)
  bound = 1.0 / np.sqrt(7 * 7 * 1)
  assert bound * 0.98 < np.abs(w).max() <= bound
  np.testing.assert_allclose(w.std(), bound / np.sqrt(3.0), rtol=0.05)
  # An RGB stem is torchvision's, as veinjax's.
  key = jax.random.key(7)
  np.testing.assert_array_equal(layers.smp_stem_kernel_init(key, (7, 7, 3, 64)),
                                layers.conv_kernel_init(key, (7, 7, 3, 64)))


def test_smp_init_takes_the_pretrained_encoder_like_veinjax_init():
  """encoder_weights fill the same tree (the stem summed over RGB for gray input, as smp does)."""
  state_dict = _fixture().random_state_dict("resnet18", 18)
  loaded = []
  for options in ({}, {"model_init": "smp"}):
    model = models.create_model("resnet34_unet", encoder="resnet18", **options)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            jnp.zeros((1, 64, 64, 1)))
    loaded.append(pretrained.encoder_variables_from_state_dict(state_dict, "resnet18", shapes))
  jax.tree.map(np.testing.assert_array_equal, loaded[0], loaded[1])


def _fixture():
  """tests/fixtures/make_resnet_fixture.py (torchvision-layout ResNet state dicts from a numpy seed)."""
  spec = importlib.util.spec_from_file_location("make_resnet_fixture", ROOT / "tests" / "fixtures" /
                                                "make_resnet_fixture.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(("name", "encoder"), [("unet", None), ("fcn8s", None), ("deeplabv3plus", "resnet34"),
                                               ("light_unet", None), ("encoder_unet", "mobilenetv3_small"),
                                               ("ultralight_unet", None)])
def test_smp_init_refuses_other_models(name, encoder):
  with pytest.raises(ValueError, match=r"model_init='smp'.*resnet34_unet, encoder_unet.*resnet18, resnet34, "
                                       r"resnet50; got model"):
    models.create_model(name, encoder=encoder, model_init="smp")


def test_smp_init_on_encoder_unet_with_a_resnet_encoder():
  model = models.create_model("encoder_unet", encoder="resnet18", model_init="smp")
  assert model.decoder_kernel_init is layers.smp_decoder_kernel_init


# ---- Config ----


def _config(**fields):
  config = load_config("default")
  for key, value in fields.items():
    config[key] = value
  return config


def test_config_defaults_are_the_added_fields_and_give_todays_model():
  config = load_config("default")
  assert config.bn_running_variance == workdir.ADDED_FIELDS["bn_running_variance"] == "biased"
  assert config.model_init == workdir.ADDED_FIELDS["model_init"] == "veinjax"
  assert steps.create_model(config) == models.create_model("resnet34_unet", encoder="resnet34")


def test_config_reaches_the_model():
  config = _config(bn_running_variance="unbiased", model_init="smp")
  model = steps.create_model(config, bn_axis_name="batch")
  assert model.bn_running_variance == "unbiased" and model.bn_axis_name == "batch"
  assert model.head_kernel_init is layers.smp_head_kernel_init
  assert model == steps.create_model(config, bn_axis_name="batch")


def test_a_config_json_written_before_the_fields_builds_todays_model():
  """inference, export and init_from read old config.json files without the new fields."""
  stored = workdir.config_json(load_config("default"))
  del stored["bn_running_variance"], stored["model_init"]
  old = ml_collections.ConfigDict(stored)
  assert steps.create_model(old) == steps.create_model(load_config("default"))


@pytest.mark.parametrize(("fields", "message"), [
    ({"bn_running_variance": "torch"},
     r"Unknown --config.bn_running_variance='torch'; choose one of biased, unbiased"),
    ({"model_init": "pytorch"}, r"Unknown --config.model_init='pytorch'; choose one of veinjax, smp"),
    ({"model_init": "smp", "model": "unet"}, r"model_init='smp'.*resnet34_unet, encoder_unet.*--config.model_init"),
    ({"model_init": "smp", "encoder": "mobilenetv3_small"}, r"got model 'resnet34_unet' on encoder "
                                                             r"'mobilenetv3_small'.*--config.model_init"),
])
def test_bad_values_name_the_flag(fields, message):
  with pytest.raises(ValueError, match=message):
    steps.create_model(_config(**fields))
