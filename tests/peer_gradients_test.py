"""benchmarks/peer_gradients: smp's weights onto veinjax's tree, and the error summary (no torch needed).

The benchmark itself needs torch and segmentation-models-pytorch (optional); what it builds on is tested here
without them: the name mapping against smp's state-dict names, the filling of veinjax's tree, the relative
errors and the one-pass variance patch.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import peer_gradients
from benchmarks import torch_training
from conftest import ROOT
from veinjax import models

_HAS_TORCH = torch_training.peer_installed()

# smp.Unet("resnet34", in_channels=1, classes=1) has these names beside its encoder's (torchvision's), as
# printed from segmentation-models-pytorch 0.6.0 (state_dict, without num_batches_tracked).
SMP_DECODER_NAMES = {
    f"decoder.blocks.{b}.conv{c}.{m}.{leaf}"
    for b in range(5) for c in (1, 2)
    for m, leaves in ((0, ("weight",)), (1, ("weight", "bias", "running_mean", "running_var")))
    for leaf in leaves
} | {"segmentation_head.0.weight", "segmentation_head.0.bias"}


@pytest.fixture(scope="module")
def abstract_variables():
  model = models.create_model("resnet34_unet", num_classes=1, encoder="resnet34")
  return jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 1), np.float32), train=False))


def _torch_shape(path, shape):
  return (shape[3], shape[2], shape[0], shape[1]) if path[-1] == "kernel" else tuple(shape)


def _fake_state_dict(abstract_variables):
  """smp-named arrays in PyTorch's layout, each filled with its own index (to see which went where)."""
  state_dict = {}
  for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(abstract_variables)[0]):
    keys = peer_gradients._path_keys(path)  # pylint: disable=protected-access
    state_dict[peer_gradients.smp_name(keys[1:])] = np.full(_torch_shape(keys, leaf.shape), i, np.float32)
  return state_dict


def test_smp_names_of_encoder_decoder_and_head():
  assert peer_gradients.smp_name(("encoder", "conv1", "kernel")) == "encoder.conv1.weight"
  assert peer_gradients.smp_name(("encoder", "layer4_2", "bn2", "var")) == "encoder.layer4.2.bn2.running_var"
  assert (peer_gradients.smp_name(("encoder", "layer2_0", "downsample_bn", "scale"))
          == "encoder.layer2.0.downsample.1.weight")
  name = peer_gradients.smp_name
  assert name(("decoder", "block1", "conv2", "bn", "scale")) == "decoder.blocks.0.conv2.1.weight"
  assert name(("decoder", "block5", "conv1", "conv", "kernel")) == "decoder.blocks.4.conv1.0.weight"
  assert peer_gradients.smp_name(("head", "bias")) == "segmentation_head.0.bias"
  for bad in (("head", "scale"), ("decoder", "center", "conv", "kernel"),
              ("decoder", "block1", "conv1", "x", "kernel"), ("kernel",)):
    with pytest.raises(ValueError, match="No smp name"):
      peer_gradients.smp_name(bad)


def test_every_leaf_of_resnet34_unet_has_its_own_smp_name(abstract_variables):
  names = [peer_gradients.smp_name(peer_gradients._path_keys(path)[1:])  # pylint: disable=protected-access
           for path, _ in jax.tree_util.tree_flatten_with_path(abstract_variables)[0]]
  assert len(names) == len(set(names)) == 232
  assert SMP_DECODER_NAMES <= set(names)
  assert all(n.startswith("encoder.") for n in set(names) - SMP_DECODER_NAMES)


def test_variables_from_smp_fills_each_leaf_once_in_flax_layout(abstract_variables):
  state_dict = _fake_state_dict(abstract_variables)
  variables = peer_gradients.variables_from_smp(state_dict, abstract_variables)
  kernel = variables["params"]["decoder"]["block2"]["conv1"]["conv"]["kernel"]
  torch_kernel = state_dict["decoder.blocks.1.conv1.0.weight"]
  assert kernel.shape == (3, 3, 384, 128) and torch_kernel.shape == (128, 384, 3, 3)
  np.testing.assert_array_equal(kernel, np.transpose(torch_kernel, (2, 3, 1, 0)))
  np.testing.assert_array_equal(variables["batch_stats"]["encoder"]["bn1"]["var"],
                                state_dict["encoder.bn1.running_var"])
  filled = {float(leaf.flat[0]) for leaf in jax.tree_util.tree_leaves(variables)}
  assert filled == {float(i) for i in range(232)}  # every array used exactly once


def test_smp_state_dict_from_is_the_inverse(abstract_variables):
  rng = np.random.default_rng(0)  # random values: a wrong transposition of a square kernel shows
  state_dict = {name: rng.normal(size=array.shape).astype(np.float32)
                for name, array in _fake_state_dict(abstract_variables).items()}
  back = peer_gradients.smp_state_dict_from(peer_gradients.variables_from_smp(state_dict, abstract_variables))
  assert back.keys() == state_dict.keys()
  for name, array in state_dict.items():
    np.testing.assert_array_equal(back[name], array)


def test_variables_from_smp_names_what_is_missing_or_misshapen(abstract_variables):
  state_dict = _fake_state_dict(abstract_variables)
  missing = {k: v for k, v in state_dict.items() if k != "decoder.blocks.3.conv2.1.running_mean"}
  with pytest.raises(ValueError, match=r"no 'decoder.blocks.3.conv2.1.running_mean' for veinjax's "
                                       r"batch_stats/decoder/block4/conv2/bn/mean"):
    peer_gradients.variables_from_smp(missing, abstract_variables)
  wrong = dict(state_dict, **{"segmentation_head.0.weight": np.zeros((2, 16, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"'segmentation_head.0.weight' has shape \(3, 3, 16, 2\)"):
    peer_gradients.variables_from_smp(wrong, abstract_variables)


def test_relative_errors_and_their_summary():
  reference = {"a": np.array([1.0, -2.0]), "b": np.array([0.5, 0.5]), "c": np.zeros(2)}
  gradients = {"a": np.array([1.0, -2.2]), "b": np.array([0.5, 0.5]), "c": np.zeros(2)}
  errors = peer_gradients.relative_errors(gradients, reference)
  assert errors == pytest.approx({"a": 0.1, "b": 0.0, "c": 0.0})
  assert peer_gradients.relative_errors({**gradients, "c": np.ones(2)}, reference)["c"] == float("inf")
  summary = peer_gradients.summarize(errors)
  assert summary["median"] == 0.0 and summary["max"] == pytest.approx(0.1) and summary["worst"] == "a"
  assert summary["tensors"] == 3
  with pytest.raises(ValueError, match="different tensors"):
    peer_gradients.relative_errors({"a": gradients["a"]}, reference)
  md = peer_gradients.table_markdown({"pytorch_fp32": summary}, "title")
  assert "| PyTorch float32 (as the reference trains) | 3 | 0.00e+00 | " in md and "| a |" in md




@pytest.mark.skipif(_HAS_TORCH, reason="torch installed: the commands would run")
@pytest.mark.parametrize("command", [["benchmarks.peer_gradients"],
                                     ["benchmarks.peer_accuracy", "--workdir=unused_peer_dir"]])
def test_commands_without_torch_say_how_to_install_it(command):
  """Both peer benchmarks share `torch_training.peer_main`: one line naming the install, exit status 1."""
  done = subprocess.run([sys.executable, "-m", *command, "--config=configs/quickstart.py"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Error: " in done.stderr and "pip install" in done.stderr and "Traceback" not in done.stderr
  assert not (ROOT / "unused_peer_dir").exists()
