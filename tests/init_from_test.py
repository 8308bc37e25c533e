"""Starting a run from weights (veinjax.initialization): encoder_weights, init_from, the input normalisation.

The fresh-start state is read where training makes it (`train_lib._setup` + `_restore_or_init`), without
training; one 1-epoch tiny run with encoder_weights checks what config.json records and that evaluation and
inference apply it. init_from starts from the session's `trained` run (conftest.py).
"""

import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf
from conftest import override, tiny_config

from veinjax import config_checks
from veinjax import evaluation
from veinjax import initialization
from veinjax import steps
from veinjax import train_lib
from veinjax import workdir as workdir_lib
from veinjax.data import augment
from veinjax.data import pipeline
from veinjax.experiments import compare
from veinjax.models import pretrained

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_resnet_fixture",
                                               ROOT / "tests" / "fixtures" / "make_resnet_fixture.py")
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)

GRAY_MEAN, GRAY_STD = pretrained.imagenet_normalization(1)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  """torchvision-named ResNet-18 weights drawn from a numpy seed (the parity fixture's), as safetensors."""
  path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
  safetensors.numpy.save_file(fixture.random_state_dict("resnet18", 18), str(path))
  return str(path)


@pytest.fixture(scope="module")
def weights_run(tmp_path_factory, phantom_data_dir, weights_file):
  """A finished 1-epoch tiny run started from `weights_file`: (config, workdir)."""
  config = tiny_config(phantom_data_dir, num_epochs=1, encoder_weights=weights_file)
  workdir = str(tmp_path_factory.mktemp("weights_run"))
  train_lib.train_and_evaluate(config, workdir)
  return config, workdir


def _fresh_start(config, workdir):
  """(the run's resolved config, the state a fresh run starts training from), as train_lib makes them."""
  run = train_lib._setup(config, str(workdir))  # pylint: disable=protected-access
  try:
    state, progress = train_lib._restore_or_init(run)  # pylint: disable=protected-access
  finally:
    run.checkpoints.close()
  assert progress.step == 0
  return run.config, state


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _random_init(config):
  return steps.init_variables(steps.create_model(config), config, jax.random.key(config.seed))


def _assert_fresh_optimizer(state):
  assert int(state.step) == 0
  for leaf in jax.tree.leaves(state.opt_state):  # Adam: count, mu and nu all start at 0
    assert not np.any(np.asarray(leaf)), leaf


# ---- The input normalisation in the pipeline ----


def _raw(n=4, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 40, 48, channels), dtype=np.uint8)
  masks = rng.integers(0, 2, (n, 40, 48), dtype=np.uint8)
  ids = np.array([f"ex{k}".encode() for k in range(n)])
  return tf.data.Dataset.from_tensor_slices({"image": images, "mask": masks, "id": ids}), images


def _pipeline_config(**overrides):
  config = tiny_config("", batch_size=2, eval_batch_size=4)
  config.augment.gamma, config.augment.speckle = 0.2, 0.1  # every intensity part too
  return override(config, **overrides)


def test_preprocessing_with_a_normalization_is_the_formula():
  frame = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  config = _pipeline_config(in_channels=3, input_mean=pretrained.IMAGENET_MEAN,
                            input_std=pretrained.IMAGENET_STD)
  resized, _ = pipeline.resize_example(frame, None, 32, config.resize_method)
  unit = resized.numpy().astype(np.float32) / np.float32(255.0)
  expected = (unit - np.float32(pretrained.IMAGENET_MEAN)) / np.float32(pretrained.IMAGENET_STD)
  np.testing.assert_array_equal(pipeline.preprocess_for_model(frame, config), expected)
  np.testing.assert_allclose(expected, pretrained.normalize(unit, pretrained.IMAGENET_MEAN,
                                                            pretrained.IMAGENET_STD), atol=1e-6)
  raw, images = _raw(channels=3)
  (batch,) = list(pipeline.create_eval_dataset(config, "test", raw=raw).as_numpy_iterator())
  for k in range(len(images)):
    np.testing.assert_array_equal(batch["image"][k], pipeline.preprocess_for_model(images[k], config))


def test_empty_normalization_changes_nothing():
  frame = np.random.default_rng(2).integers(0, 256, (40, 60), dtype=np.uint8)
  config = _pipeline_config()
  assert pipeline.input_normalization(config) is None
  old = _pipeline_config()  # a config from before the fields existed (an old config.json)
  with old.unlocked():
    del old["input_mean"], old["input_std"]
  assert pipeline.input_normalization(old) is None
  resized, _ = pipeline.resize_example(frame[..., None], None, 32, config.resize_method)
  for cfg in (config, old):
    np.testing.assert_array_equal(pipeline.preprocess_for_model(frame, cfg),
                                  resized.numpy().astype(np.float32) / np.float32(255.0))
  x = tf.constant([[0.25]])
  assert pipeline._normalize(x, None) is x  # pylint: disable=protected-access  (no op at all)
  raw, _ = _raw()
  # Train batches: augmentation of the [0, 1] image, exactly as it always was.
  (first, *_) = list(pipeline.create_train_dataset(config, epoch=0, raw=raw).as_numpy_iterator())
  data = pipeline._prepare(config, "train", raw, 0, 1)  # pylint: disable=protected-access
  _, augment_seed = pipeline._epoch_seeds(config.seed, 0)  # pylint: disable=protected-access
  order = tf.argsort(tf.random.stateless_uniform([data.size], seed=pipeline._epoch_seeds(config.seed, 0)[0]),
                     stable=True).numpy()
  for k in range(2):
    position = int(order[k])
    seed = tf.random.experimental.stateless_fold_in(augment_seed, data.indices[position])
    image, _ = augment.augment_example(tf.cast(data.images[position], tf.float32) / 255.0,
                                       tf.cast(data.masks[position], tf.int32), seed, config.augment)
    np.testing.assert_array_equal(first["image"][k], image.numpy())


def test_training_normalizes_after_augmentation():
  raw, _ = _raw()
  plain = _pipeline_config()
  normalized = _pipeline_config(input_mean=(0.25,), input_std=(0.5,))
  a = list(pipeline.create_train_dataset(plain, epoch=1, raw=raw).as_numpy_iterator())
  b = list(pipeline.create_train_dataset(normalized, epoch=1, raw=raw).as_numpy_iterator())
  assert len(a) == len(b) == 2
  for x, y in zip(a, b):
    np.testing.assert_array_equal(y["label"], x["label"])  # the same augmentation
    np.testing.assert_array_equal(y["image"], (x["image"] - np.float32(0.25)) / np.float32(0.5))
  assert min(x["image"].min() for x in a) >= 0 and min(y["image"].min() for y in b) < 0


def test_bad_input_normalization_names_the_flag():
  for mean, std in [((0.5, 0.5), (0.2, 0.2)), ((0.5,), ()), ((0.5,), (0.0,))]:
    with pytest.raises(ValueError, match=r"--config\.input_mean"):
      config_checks.validate_config(_pipeline_config(input_mean=mean, input_std=std))
  with pytest.raises(ValueError, match=r"one value per input channel \(--config\.in_channels=1\)"):
    pipeline.preprocess_for_model(np.zeros((8, 8), np.uint8), _pipeline_config(input_mean=(0.1, 0.2, 0.3),
                                                                                input_std=(1.0, 1.0, 1.0)))


# ---- encoder_weights ----


def test_encoder_weights_are_the_initial_encoder(phantom_data_dir, weights_file, tmp_path):
  config = tiny_config(phantom_data_dir, encoder_weights=weights_file)
  resolved, state = _fresh_start(config, tmp_path)
  assert (tuple(resolved.input_mean), tuple(resolved.input_std)) == (GRAY_MEAN, GRAY_STD)
  assert tuple(config.input_mean) == ()  # the caller's config is left as it was
  random = _random_init(config)
  expected, report = pretrained.load_encoder_weights(weights_file, "resnet18", random, in_channels=1)
  assert report.first_conv.startswith("folded")
  _equal(state.params, expected["params"])
  _equal(state.batch_stats, expected["batch_stats"])
  # The encoder is the file's (conv1 folded to gray), everything else the seeded random init.
  state_dict = fixture.random_state_dict("resnet18", 18)
  np.testing.assert_array_equal(state.params["encoder"]["layer1_1"]["conv2"]["kernel"],
                                state_dict["layer1.1.conv2.weight"].transpose(2, 3, 1, 0))
  assert not np.array_equal(state.params["encoder"]["layer1_1"]["conv2"]["kernel"],
                            random["params"]["encoder"]["layer1_1"]["conv2"]["kernel"])
  _equal(state.params["decoder"], random["params"]["decoder"])
  _equal(state.params["head"], random["params"]["head"])
  _assert_fresh_optimizer(state)


def test_without_weights_the_fresh_state_is_the_random_init(phantom_data_dir, tmp_path):
  config = tiny_config(phantom_data_dir)
  resolved, state = _fresh_start(config, tmp_path)
  assert tuple(resolved.input_mean) == () and tuple(resolved.input_std) == ()
  random = _random_init(config)
  _equal(state.params, random["params"])
  _equal(state.batch_stats, random["batch_stats"])


def test_weights_run_records_and_applies_its_normalization(weights_run, phantom_data_dir):
  config, workdir = weights_run
  with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
    saved = json.load(f)
  assert (tuple(saved["input_mean"]), tuple(saved["input_std"])) == (GRAY_MEAN, GRAY_STD)
  assert saved["encoder_weights"] == config.encoder_weights
  # Inference (the Predictor preprocesses with the run's config.json) normalises as training did.
  frame = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)
  np.testing.assert_allclose(pipeline.preprocess_for_model(frame, workdir_lib.load_config(workdir))[..., 0],
                             (frame / np.float32(255.0) - np.float32(GRAY_MEAN[0])) / np.float32(GRAY_STD[0]),
                             rtol=1e-6, atol=1e-6)
  # Evaluation with a config that does not say (as compare passes its own): the recorded normalisation,
  # so the best checkpoint's validation metrics are those training recorded for it.
  plain = tiny_config(phantom_data_dir, num_epochs=1)
  metrics = evaluation.evaluate(plain, workdir, checkpoint="best", split="validation")
  (record,) = workdir_lib.read_history(workdir)
  assert metrics["miou"] == pytest.approx(record["miou"])
  assert metrics["loss"] == pytest.approx(record["val_loss"])
  with pytest.raises(ValueError, match=r"trained with input_mean=\(0\.44.*Drop --config\.input_mean"):
    evaluation.evaluate(tiny_config(phantom_data_dir, input_mean=(0.5,), input_std=(0.25,)), workdir)
  # Resuming the finished run keeps it (nothing to train, no error).
  assert train_lib.train_and_evaluate(config, workdir)["step"] == 4


# ---- init_from ----


def test_init_from_copies_every_variable(trained, tmp_path):
  source_config, source_dir, _ = trained
  config = tiny_config(source_config.dataset.data_dir, init_from=source_dir, seed=7)
  resolved, state = _fresh_start(config, tmp_path)
  best, meta = steps.restore_variables(source_config, steps.create_model(source_config), source_dir, "best")
  _equal(state.params, best["params"])
  _equal(state.batch_stats, best["batch_stats"])
  _assert_fresh_optimizer(state)
  assert tuple(resolved.input_mean) == () and meta["step"] > 0  # the source's (plain [0, 1])
  latest_config = override(config.copy_and_resolve_references(), init_from_checkpoint="latest")
  _, state = _fresh_start(latest_config, tmp_path / "latest")
  latest, _ = steps.restore_variables(source_config, steps.create_model(source_config), source_dir, "latest")
  _equal(state.params, latest["params"])


def test_init_from_scope_encoder_copies_the_encoder_only(trained, tmp_path):
  source_config, source_dir, _ = trained
  config = tiny_config(source_config.dataset.data_dir, init_from=source_dir, init_from_scope="encoder", seed=7)
  _, state = _fresh_start(config, tmp_path)
  best, _ = steps.restore_variables(source_config, steps.create_model(source_config), source_dir, "best")
  random = _random_init(config)
  _equal(state.params["encoder"], best["params"]["encoder"])
  _equal(state.batch_stats["encoder"], best["batch_stats"]["encoder"])
  for module in ("decoder", "head"):
    _equal(state.params[module], random["params"][module])
  _equal(state.batch_stats["decoder"], random["batch_stats"]["decoder"])
  _assert_fresh_optimizer(state)


def test_init_from_with_other_classes_reinitializes_the_head_only(trained, tmp_path):
  source_config, source_dir, _ = trained
  config = tiny_config(source_config.dataset.data_dir, init_from=source_dir, num_classes=2)  # softmax
  _, state = _fresh_start(config, tmp_path)
  best, _ = steps.restore_variables(source_config, steps.create_model(source_config), source_dir, "best")
  random = _random_init(config)
  assert state.params["head"]["kernel"].shape[-1] == 2
  _equal(state.params["head"], random["params"]["head"])
  for module in ("encoder", "decoder"):
    _equal(state.params[module], best["params"][module])
  _equal(state.batch_stats, best["batch_stats"])


def test_init_from_takes_the_source_normalization(weights_run, tmp_path):
  source_config, source_dir = weights_run
  config = tiny_config(source_config.dataset.data_dir, init_from=source_dir)
  resolved = initialization.with_input_normalization(config)
  assert (tuple(resolved.input_mean), tuple(resolved.input_std)) == (GRAY_MEAN, GRAY_STD)
  explicit = initialization.with_input_normalization(override(config.copy_and_resolve_references(),
                                                              input_mean=(0.5,), input_std=(0.25,)))
  assert (tuple(explicit.input_mean), tuple(explicit.input_std)) == ((0.5,), (0.25,))


def test_copy_variables_refuses_another_network():
  target = {"params": {"encoder": {"k": np.zeros((3, 3), np.float32)},
                       "head": {"kernel": np.zeros((1, 1, 4, 1), np.float32)}},
            "batch_stats": {}}
  other = {"params": {"encoder": {"k": np.zeros((3, 4))}, "head": {"kernel": np.zeros((1, 1, 4, 2))}},
           "batch_stats": {}}
  with pytest.raises(ValueError, match=r"outside its head: params/encoder/k \[3, 3\] vs \[3, 4\]"):
    initialization.copy_variables(other, target)
  other["params"]["encoder"]["k"] = np.ones((3, 3))  # the same network with another num_classes
  copied, kept = initialization.copy_variables(other, target)
  assert np.all(copied["params"]["encoder"]["k"] == 1) and copied["params"]["head"]["kernel"].shape[-1] == 1
  assert kept == ["params/head/kernel [1, 1, 4, 1] (source [1, 1, 4, 2])"]
  copied, kept = initialization.copy_variables(other, target, "encoder")
  assert np.all(copied["params"]["encoder"]["k"] == 1) and not kept  # scope encoder: the head is not looked at
  with pytest.raises(ValueError, match="no 'encoder' module"):
    initialization.copy_variables(other, {"params": {"head": {}}, "batch_stats": {}}, "encoder")


# ---- Bad flags ----


def test_bad_flags_name_the_flag_and_the_path(trained, weights_file, tmp_path):
  source_config, source_dir, _ = trained
  data_dir = source_config.dataset.data_dir
  cases = [
      (dict(encoder_weights=weights_file, init_from=source_dir), ValueError,
       "set one.*drop --config.encoder_weights"),
      (dict(model="unet", encoder="resnet34", encoder_weights=weights_file), ValueError,
       r"--config\.model='unet' has its own encoder.*ResNet encoder"),
      (dict(init_from=source_dir, init_from_scope="decoder"), ValueError,
       r"--config\.init_from_scope='decoder'"),
      (dict(init_from=source_dir, init_from_checkpoint="first"), ValueError, r"--config\.init_from_checkpoint"),
  ]
  for overrides, error, message in cases:
    with pytest.raises(error, match=message):
      config_checks.validate_config(tiny_config(data_dir, **overrides))
  missing = str(tmp_path / "absent.safetensors")
  pth = tmp_path / "resnet18.pth"
  pth.write_bytes(b"")
  not_a_run = tmp_path / "not_a_run"
  not_a_run.mkdir()
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  workdir_lib.write_config(str(untrained), source_config)
  narrow_unet = tmp_path / "narrow_unet"  # a U-Net run of other widths: another network
  narrow_unet.mkdir()
  workdir_lib.write_config(str(narrow_unet), tiny_config(data_dir, model="unet", unet_widths=(8, 16)))
  cases = [
      (dict(encoder_weights=missing), FileNotFoundError, rf"--config\.encoder_weights={missing}: no such file"),
      (dict(encoder_weights=str(pth)), pretrained.WeightsError,
       r"--config\.encoder_weights: .*resnet18\.pth.*never unpickles.*veinjax\.tools\.convert_weights"),
      (dict(encoder="resnet34", encoder_weights=weights_file), pretrained.WeightsError,
       r"--config\.encoder_weights: .*resnet18\.safetensors holds resnet18 weights .* encoder is resnet34"),
      (dict(init_from=str(tmp_path / "nowhere")), FileNotFoundError, r"--config\.init_from=.*nowhere: no such"),
      (dict(init_from=str(not_a_run)), FileNotFoundError,
       r"--config\.init_from=.*not_a_run has no config\.json"),
      (dict(init_from=str(untrained)), FileNotFoundError,
       r"--config\.init_from=.*untrained has no best checkpoint"),
      (dict(init_from=source_dir, encoder="resnet34"), ValueError,
       r"--config\.init_from=.* another network \(encoder: 'resnet18' there, 'resnet34' here\)"),
      (dict(init_from=str(narrow_unet), model="unet", unet_widths=(8, 32)), ValueError,
       r"--config\.init_from=.* another network \(unet_widths: \[8, 16\] there, \[8, 32\] here\)"),
  ]
  for overrides, error, message in cases:
    workdir = tmp_path / f"run_{len(os.listdir(tmp_path))}"
    with pytest.raises(error, match=message):
      train_lib.train_and_evaluate(tiny_config(data_dir, **overrides), str(workdir))
    assert not (workdir / workdir_lib.CONFIG_FILE).exists()  # failed before anything was written


def test_compare_keeps_runs_recorded_before_the_fields_existed(phantom_data_dir):
  wanted = compare._config_json(compare.run_config(tiny_config(phantom_data_dir), "resnet34_unet", 0))
  stored = {k: v for k, v in wanted.items() if k not in ("encoder_weights", "init_from", "init_from_checkpoint",
                                                         "init_from_scope", "input_mean", "input_std")}
  compare._check_same_config(stored, wanted, "DIR", "a finished")  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="fields: input_mean"):
    compare._check_same_config(dict(stored, input_mean=[0.5]), wanted, "DIR", "a finished")
