"""Exported models (SavedModel, TFLite, ONNX) against the JAX model they came from, and export's errors.

One small ultralight_unet run on a 64x64 phantom is trained once for the module, well enough that its
probabilities are decided rather than hovering at 0.5, so that quantised masks can be compared; each export
is then made once and shared by the tests.
"""

import json
import os

import jax
import numpy as np
import pytest

from tests.conftest import tiny_config
from veinjax import export as export_lib
from veinjax import exported
from veinjax import inference

SIZE = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory, phantom_data_dir):
  """(config, workdir) of an ultralight_unet trained on a 64x64 phantom."""
  from veinjax import train_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(phantom_data_dir, model="ultralight_unet", image_size=SIZE, batch_size=8,
                       num_epochs=40, loss="bce_dice", learning_rate=1e-2, lr_schedule="cosine",
                       **{"dataset.phantom_size": SIZE, "dataset.phantom_num_train": 40,
                          "dataset.phantom_num_test": 8})
  workdir = str(tmp_path_factory.mktemp("export_run"))
  train_lib.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture(scope="module")
def test_frames(run):
  """The phantom test split's frames, uint8 [N, S, S, 1] at the model's size."""
  return export_lib.split_examples(run[0], "test")[0]


@pytest.fixture(scope="module")
def jax_probabilities(run, test_frames):
  """The JAX model's probabilities [N, S, S, 1] of the test frames (the reference of every export)."""
  config, workdir = run
  model, variables, _ = inference.load_for_inference(workdir)
  function = jax.jit(export_lib.frame_function(model, variables, config))
  return np.concatenate([np.asarray(function(frame[None])) for frame in test_frames])


_EXPORTS = {}


def _export(run, fmt, quantize="none"):
  """The run exported once per (format, quantisation) for the module, loaded with its runtime."""
  key = (fmt, quantize)
  if key not in _EXPORTS:
    _, workdir = run
    _EXPORTS[key] = exported.load(export_lib.export_workdir(workdir, fmt, quantize=quantize), num_threads=1)
  return _EXPORTS[key]


def _probabilities(model, frames):
  return np.stack([model(frame) for frame in frames])


def test_the_jax_reference_is_decided(jax_probabilities):
  """The comparison below means something only if most pixels are far from the 0.5 threshold."""
  assert np.mean(np.abs(jax_probabilities - 0.5) > 0.2) > 0.95
  assert 0.005 < np.mean(jax_probabilities > 0.5) < 0.5  # vessels found, not everything


@pytest.mark.parametrize("fmt", ["saved_model", "tflite", "onnx"])
def test_float_exports_equal_the_jax_model(run, test_frames, jax_probabilities, fmt):
  model = _export(run, fmt)
  probabilities = _probabilities(model, test_frames)
  assert probabilities.shape == jax_probabilities.shape and probabilities.dtype == np.float32
  assert np.max(np.abs(probabilities - jax_probabilities)) < 1e-4
  assert np.mean((probabilities > 0.5) == (jax_probabilities > 0.5)) >= 0.9999


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
@pytest.mark.parametrize("quantize", ["float16", "dynamic", "int8"])
def test_quantised_masks_agree_with_float(run, test_frames, fmt, quantize):
  float_masks = np.stack([_export(run, "tflite").mask(f) for f in test_frames])
  masks = np.stack([_export(run, fmt, quantize).mask(f) for f in test_frames])
  assert np.mean(masks == float_masks) >= 0.99


def test_metadata_records_the_input_and_source(run):
  config, workdir = run
  path = _export(run, "tflite").path
  with open(path + ".json") as f:
    info = json.load(f)
  assert info["input"] == {"name": "frame", "dtype": "uint8", "shape": [1, SIZE, SIZE, 1]}
  assert info["output"]["shape"] == [1, SIZE, SIZE, 1] and info["model"] == "ultralight_unet"
  assert info["workdir"] == os.path.abspath(workdir) and isinstance(info["step"], int)
  assert info["resize_method"] == config.resize_method


def test_int8_is_smaller_than_float(run):
  assert (os.path.getsize(_export(run, "tflite", "int8").path)
          < 0.5 * os.path.getsize(_export(run, "tflite").path))


def test_export_follows_the_recorded_normalisation(run, tmp_path):
  """A run that records input_mean / input_std: the export applies them inside the graph, as training did."""
  config, workdir = run
  model, variables, _ = inference.load_for_inference(workdir)
  normalised = config.copy_and_resolve_references()
  normalised.input_mean, normalised.input_std = (0.3,), (0.2,)
  frame = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(1, SIZE, SIZE, 1)
  got = np.asarray(export_lib.frame_function(model, variables, normalised)(frame))
  want = np.asarray(inference.probabilities_from_logits(
      model.apply(variables, (frame / 255.0 - 0.3) / 0.2, train=False)))
  np.testing.assert_allclose(got, want, atol=1e-5)


# ---- Bad input ----


def test_wrong_frames_name_the_file_and_the_expected_shape(run):
  model = _export(run, "tflite")
  with pytest.raises(ValueError, match=r"model\.tflite takes frames of shape \[64, 64, 1\].*resize"):
    model(np.zeros((32, 32), np.uint8))
  with pytest.raises(ValueError, match="takes uint8 frames, got float32"):
    model(np.zeros((SIZE, SIZE), np.float32))
  with pytest.raises(ValueError, match="takes frames of shape"):
    model(np.zeros((SIZE, SIZE, 3), np.uint8))


@pytest.mark.parametrize("fmt,quantize,message", [
    ("keras", "none", r"Unknown --format='keras'; choose one of saved_model, tflite, onnx"),
    ("tflite", "int4", r"Unknown --quantize='int4'"),
    ("saved_model", "int8", r"--quantize=int8 applies to tflite and onnx"),
])
def test_unknown_format_or_quantisation(run, fmt, quantize, message):
  with pytest.raises(ValueError, match=message):
    export_lib.export_workdir(run[1], fmt, quantize=quantize)


def test_a_workdir_without_a_run_or_checkpoint(tmp_path, run):
  with pytest.raises(ValueError, match=r"holds no config\.json: give a train\.py workdir"):
    export_lib.export_workdir(str(tmp_path), "tflite")
  empty = tmp_path / "no_checkpoint"
  empty.mkdir()
  (empty / "config.json").write_text(open(os.path.join(run[1], "config.json")).read())
  with pytest.raises(Exception, match="checkpoint"):
    export_lib.export_workdir(str(empty), "tflite")


def test_int8_without_train_frames(run):
  function = export_lib.frame_function(*inference.load_for_inference(run[1])[:2], run[0])
  with pytest.raises(ValueError, match="--quantize=int8 needs calibration frames"):
    export_lib.tflite_bytes(function, run[0], "int8", np.zeros((0,), np.uint8))


def test_running_an_export_needs_neither_jax_nor_tensorflow():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = "import sys, veinjax.exported; print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_loading_a_missing_or_unknown_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    exported.load(str(tmp_path / "nothing.tflite"))
  orphan = tmp_path / "orphan.tflite"
  orphan.write_bytes(b"")
  with pytest.raises(ValueError, match=r"orphan\.tflite\.json is missing"):
    exported.load(str(orphan))
