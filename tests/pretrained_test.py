"""veinjax.models.pretrained and veinjax.tools.convert_weights, without torch.

Parity: tests/fixtures/resnet_parity.npz holds torchvision's features for weights that
tests/fixtures/make_resnet_fixture.py draws from a numpy seed; here the same weights are rebuilt, written
as safetensors, loaded through the real loader and run through veinjax's encoder.
"""

import functools
import importlib.util
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from veinjax import models
from veinjax.models import pretrained
from veinjax.models import resnet
from veinjax.tools import convert_weights

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_resnet_fixture",
                                               ROOT / "tests" / "fixtures" / "make_resnet_fixture.py")
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)

TOLERANCE = 1e-4


@functools.lru_cache(maxsize=None)
def _abstract_variables(model_name, encoder, in_channels, size=64):
  """The model's variable tree as shapes only: the loader reads nothing else."""
  model = models.create_model(model_name, encoder=encoder)
  init = functools.partial(model.init, train=False)
  return jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, size, size, in_channels)))


@functools.lru_cache(maxsize=None)
def _state_dict(encoder, seed):
  return fixture.random_state_dict(encoder, seed)


def _copy(encoder="resnet18", seed=18):
  return dict(_state_dict(encoder, seed))


@functools.lru_cache(maxsize=None)
def _encoder_fn(encoder):
  module = resnet.RESNET_ENCODERS[encoder]()
  return jax.jit(lambda v, x: module.apply(v, x, train=False))


def _features(variables, encoder, x):
  enc = {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
  return [np.asarray(f) for f in _encoder_fn(encoder)(enc, jnp.asarray(x))]


def _load(state_dict, encoder="resnet18", in_channels=3, model_name="resnet34_unet", **kwargs):
  variables = _abstract_variables(model_name, encoder, in_channels)
  return pretrained.encoder_variables_from_state_dict(state_dict, encoder, variables, **kwargs)


@pytest.mark.parametrize("encoder", list(fixture.CASES))
def test_stage_parity_with_torchvision(encoder, tmp_path):
  if not fixture.FIXTURE.exists():
    pytest.skip(f"{fixture.FIXTURE} missing: run tests/fixtures/make_resnet_fixture.py (needs torch)")
  reference = np.load(fixture.FIXTURE, allow_pickle=False)
  size, seed = fixture.CASES[encoder]
  state_dict = _state_dict(encoder, seed)
  x = fixture.random_input(size, seed)
  # The same weights and input as the fixture script drew, or the comparison below means nothing.
  np.testing.assert_allclose(fixture.checksum(state_dict.values()), reference[f"{encoder}/weights_checksum"],
                             rtol=1e-12)
  np.testing.assert_allclose(fixture.checksum([x]), reference[f"{encoder}/input_checksum"], rtol=1e-12)
  path = tmp_path / f"{encoder}.safetensors"
  safetensors.numpy.save_file(state_dict, str(path))

  variables, report = pretrained.load_encoder_weights(path, encoder, _abstract_variables(
      "resnet34_unet", encoder, 3, size))
  diffs = [float(np.max(np.abs(ours - reference[f"{encoder}/stage{k}"])))
           for k, ours in enumerate(_features(variables, encoder, x))]
  print(f"{encoder} max abs diff per stage (stem, layer1..4): {['%.2e' % d for d in diffs]}")
  assert max(diffs) < TOLERANCE, diffs
  assert report.mean == pretrained.IMAGENET_MEAN and report.std == pretrained.IMAGENET_STD


def test_deeplab_gets_the_same_encoder_and_keeps_the_rest():
  unet_vars, _ = _load(_copy(), model_name="resnet34_unet")
  deeplab_abstract = _abstract_variables("deeplabv3plus", "resnet18", 3)
  deeplab_vars, report = pretrained.encoder_variables_from_state_dict(_copy(), "resnet18", deeplab_abstract)
  for collection in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, unet_vars[collection]["encoder"],
                 deeplab_vars[collection]["encoder"])
    # Everything outside the encoder is returned untouched (here: still abstract shapes).
    for ours, theirs in zip(jax.tree.leaves(deeplab_vars[collection]["aspp"]),
                            jax.tree.leaves(deeplab_abstract[collection]["aspp"])):
      assert ours is theirs
  assert len(report.loaded) == 100  # resnet18: 20 convs + 20 BatchNorms x 4.


def test_kernels_and_batchnorm_map_to_their_places():
  state_dict = _copy()
  variables, _ = _load(state_dict)
  enc, stats = variables["params"]["encoder"], variables["batch_stats"]["encoder"]
  np.testing.assert_array_equal(enc["layer2_0"]["downsample_conv"]["kernel"][0, 0],
                                state_dict["layer2.0.downsample.0.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(enc["layer1_1"]["conv2"]["kernel"][1, 2, 3, 4],
                                state_dict["layer1.1.conv2.weight"][4, 3, 1, 2])
  np.testing.assert_array_equal(enc["layer3_0"]["downsample_bn"]["scale"],
                                state_dict["layer3.0.downsample.1.weight"])
  np.testing.assert_array_equal(stats["bn1"]["var"], state_dict["bn1.running_var"])
  np.testing.assert_array_equal(stats["layer4_1"]["bn2"]["mean"], state_dict["layer4.1.bn2.running_mean"])


def _gray_paths(state_dict, size=64):
  """Features of the RGB path on a replicated gray image and of the folded 1-channel path on it."""
  gray = np.random.default_rng(0).random((1, size, size, 1)).astype(np.float32)
  rgb_vars, _ = _load(dict(state_dict), in_channels=3)
  gray_vars, report = _load(dict(state_dict), in_channels=1)
  rgb_in = pretrained.normalize(np.repeat(gray, 3, axis=-1), *pretrained.imagenet_normalization(3))
  gray_in = pretrained.normalize(gray, report.mean, report.std)
  return _features(rgb_vars, "resnet18", rgb_in), _features(gray_vars, "resnet18", gray_in)


def test_gray_fold_equals_rgb_path_for_gray_filters():
  # Filters whose three kernels are equal (as many learned first-layer filters nearly are): the fold is
  # exact everywhere, border included, at every stage.
  state_dict = _copy()
  w = state_dict["conv1.weight"]
  state_dict["conv1.weight"] = np.repeat(w[:, :1], 3, axis=1)
  rgb, gray = _gray_paths(state_dict)
  diffs = [float(np.max(np.abs(a - b))) for a, b in zip(rgb, gray)]
  assert max(diffs) < TOLERANCE, diffs


def test_gray_fold_equals_rgb_path_away_from_padding():
  # Any filters: exact wherever conv1 sees no zero padding (stem outputs 2..29 of 32 at 64x64).
  rgb, gray = _gray_paths(_copy())
  np.testing.assert_allclose(gray[0][:, 2:30, 2:30], rgb[0][:, 2:30, 2:30], atol=TOLERANCE)
  assert np.max(np.abs(gray[0] - rgb[0])) > 10 * TOLERANCE  # The border is not: the documented limit.


def test_gray_normalization_is_the_mean_of_the_rgb_normalizations():
  (mean,), (std,) = pretrained.imagenet_normalization(1)
  g = np.linspace(0, 1, 11, dtype=np.float32)[:, None]
  rgb = pretrained.normalize(np.repeat(g, 3, axis=-1), pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD)
  np.testing.assert_allclose(pretrained.normalize(g, (mean,), (std,))[:, 0], rgb.mean(axis=-1), atol=1e-6)
  assert (round(mean, 4), round(std, 4)) == (0.4488, 0.226)
  with pytest.raises(ValueError, match="in_channels=2"):
    pretrained.imagenet_normalization(2)
  with pytest.raises(ValueError, match="one mean and one std per channel"):
    pretrained.normalize(np.zeros((2, 2, 3)), (0.5,), (0.2,))
  np.testing.assert_allclose(pretrained.normalize(jnp.full((1, 2, 2, 1), 0.5), (0.25,), (0.5,)), 0.5)


def test_unused_tensors_are_reported():
  state_dict = _copy()
  state_dict["extra.weight"] = np.zeros(3, np.float32)
  _, report = _load(state_dict)
  assert report.unused["fc.weight"].startswith("classifier head")
  assert report.unused["fc.bias"].startswith("classifier head")
  assert report.unused["layer1.0.bn1.num_batches_tracked"].startswith("BatchNorm step counter")
  assert report.unused["extra.weight"] == "no veinjax encoder variable of this name"
  assert len(report.unused) + len(report.loaded) == len(state_dict)
  assert "fc.weight" in report.summary() or "tensors" in report.summary()
  assert report.as_dict()["num_loaded"] == 100


def test_prefixed_checkpoint_is_found_and_the_rest_reported():
  # An smp-style checkpoint: encoder tensors under "encoder.", a decoder beside them.
  state_dict = {f"encoder.{k}": v for k, v in _copy().items()}
  state_dict["decoder.blocks.0.conv1.0.weight"] = np.zeros((1, 1, 3, 3), np.float32)
  plain, _ = _load(_copy())
  variables, report = _load(state_dict)
  assert report.prefix == "encoder."
  assert report.unused["decoder.blocks.0.conv1.0.weight"] == "outside the encoder (prefix 'encoder.')"
  np.testing.assert_array_equal(variables["params"]["encoder"]["conv1"]["kernel"],
                                plain["params"]["encoder"]["conv1"]["kernel"])


def test_missing_tensor_names_it_and_its_shape():
  state_dict = _copy()
  del state_dict["layer3.1.bn2.running_var"]
  with pytest.raises(pretrained.WeightsError, match=r"missing layer3\.1\.bn2\.running_var \(256,\)"):
    _load(state_dict)


def test_wrong_shape_names_it_and_the_expected_shape():
  state_dict = _copy()
  state_dict["layer2.0.conv1.weight"] = state_dict["layer2.0.conv1.weight"][:, :32]
  expected = r"layer2\.0\.conv1\.weight has shape \(128, 32, 3, 3\), expected \(128, 64, 3, 3\)"
  with pytest.raises(pretrained.WeightsError, match=expected):
    _load(state_dict)


def test_file_of_another_depth_says_so():
  with pytest.raises(pretrained.WeightsError, match="holds resnet34 weights .* model's encoder is resnet18"):
    _load(_copy("resnet34", 34), encoder="resnet18")
  # resnet50 names and shapes, but only the layout matters: tiny arrays keep this fast.
  fake50 = {name: np.zeros((64,) + shape[1:2], np.float32) if len(shape) == 4 else np.zeros(1, np.float32)
            for name, shape in fixture.state_dict_shapes("resnet50")}
  expected = r"holds resnet50 weights \(bottleneck blocks \(3, 4, 6, 3\)\).*encoder='resnet50'"
  with pytest.raises(pretrained.WeightsError, match=expected):
    _load(fake50, encoder="resnet34")


def test_encoder_name_must_match_the_variables():
  with pytest.raises(pretrained.WeightsError, match="hold a resnet18 encoder but encoder_name='resnet34'"):
    pretrained.encoder_variables_from_state_dict(_copy(), "resnet34",
                                                 _abstract_variables("resnet34_unet", "resnet18", 3))
  with pytest.raises(pretrained.WeightsError, match="no ResNet encoder at params/encoder"):
    unet = _abstract_variables("unet", "resnet34", 1, 32)
    pretrained.encoder_variables_from_state_dict(_copy(), "resnet18", unet)


def test_unsupported_channel_counts_are_refused():
  with pytest.raises(pretrained.WeightsError, match=r"conv1\.weight has 3 input channels and the model 2"):
    _load(_copy(), in_channels=2)
  with pytest.raises(pretrained.WeightsError, match="in_channels=3 but the model's first conv takes 1"):
    pretrained.encoder_variables_from_state_dict(_copy(), "resnet18", _abstract_variables(
        "resnet34_unet", "resnet18", 1), in_channels=3)


def test_pickle_files_are_refused(tmp_path):
  pth = tmp_path / "resnet18.pth"
  pth.write_bytes(b"\x80\x04not read")
  with pytest.raises(pretrained.WeightsError, match="never unpickles.*veinjax.tools.convert_weights"):
    pretrained.read_state_dict(pth)
  npz = tmp_path / "objects.npz"
  np.savez(npz, conv1=np.array([{"a": 1}], dtype=object))
  with pytest.raises(pretrained.WeightsError, match="pickled .* never unpickles"):
    pretrained.read_state_dict(npz)
  disguised = tmp_path / "disguised.safetensors"
  disguised.write_bytes(b"\x80\x04\x95 a pickle")
  with pytest.raises(pretrained.WeightsError, match="not a readable safetensors file"):
    pretrained.read_state_dict(disguised)


def test_unknown_extension_and_missing_file(tmp_path):
  with pytest.raises(pretrained.WeightsError, match=r"unknown weights format '\.h5'.*\.safetensors or \.npz"):
    pretrained.read_state_dict(tmp_path / "weights.h5")
  with pytest.raises(FileNotFoundError, match="not found"):
    pretrained.read_state_dict(tmp_path / "absent.safetensors")


def test_npz_files_load_like_safetensors(tmp_path):
  state_dict = _copy()
  np.savez(tmp_path / "w.npz", **state_dict)
  from_npz, _ = pretrained.load_encoder_weights(tmp_path / "w.npz", "resnet18",
                                                _abstract_variables("resnet34_unet", "resnet18", 3))
  direct, _ = _load(state_dict)
  jax.tree.map(np.testing.assert_array_equal, from_npz["params"]["encoder"], direct["params"]["encoder"])


def test_convert_weights_without_torch_names_the_install(tmp_path):
  argv = ["convert_weights", str(tmp_path / "in.pth"), str(tmp_path / "out.safetensors")]
  code = ("import sys, runpy; sys.modules['torch'] = None; "  # torch unimportable, installed or not
          f"sys.argv = {argv!r}; "
          "runpy.run_module('veinjax.tools.convert_weights', run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode == 1, result.stderr
  assert "pip install torch" in result.stderr
  assert not (tmp_path / "out.safetensors").exists()


class _FakeTensor:
  """Just enough of torch.Tensor for convert_weights."""

  def __init__(self, array):
    self.array = array

  def detach(self):
    return self

  def cpu(self):
    return self

  def is_floating_point(self):
    return self.array.dtype.kind == "f"

  def float(self):
    return _FakeTensor(self.array.astype(np.float32))

  def numpy(self):
    return self.array


def test_convert_weights_writes_a_loadable_file(tmp_path, monkeypatch, capsys):
  state_dict = _copy()
  fake_torch = types.SimpleNamespace(Tensor=_FakeTensor, load=lambda path, map_location, weights_only: {
      "state_dict": {**{k: _FakeTensor(v) for k, v in state_dict.items()}, "epoch_note": "not a tensor"}})
  monkeypatch.setitem(sys.modules, "torch", fake_torch)
  (tmp_path / "in.pth").write_bytes(b"")
  out = tmp_path / "out.safetensors"
  assert convert_weights.main([str(tmp_path / "in.pth"), str(out)]) == 0
  assert "resnet18 (prefix '')" in capsys.readouterr().out
  gray_model = _abstract_variables("resnet34_unet", "resnet18", 1)
  _, report = pretrained.load_encoder_weights(out, "resnet18", gray_model)
  assert report.first_conv.startswith("folded")
  assert convert_weights.main(["only_one_argument"]) == 2
