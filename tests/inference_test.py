"""veinjax.inference.Predictor: the same preprocessing as training, results mapped back onto each frame, flip
TTA, ensembles, and the same confusion matrix as eval.py on a split.

Geometry tests use a parameter-free "model" (a pixel threshold), so what is tested is the mapping alone.
"""

import flax.linen as nn
import numpy as np
import pytest
from PIL import Image

from veinjax import evaluation
from veinjax import inference
from veinjax import metrics as metrics_lib
from veinjax.data import decode
from veinjax.data import pipeline
from veinjax.data import sources
from veinjax.postprocess import PostProcess

from conftest import load_config


class BrightIsVein(nn.Module):
  """Logit 40 * (x - 0.5) of the first channel: a bright pixel is the foreground. Flip-equivariant."""

  @nn.compact
  def __call__(self, x, train=False):
    return 40.0 * (x[..., :1] - 0.5)


class ColumnRamp(nn.Module):
  """Logit = the column's position in [-1, 1]: not flip-equivariant, so flip TTA changes it."""

  @nn.compact
  def __call__(self, x, train=False):
    ramp = np.linspace(-1.0, 1.0, x.shape[2], dtype=np.float32)
    return np.broadcast_to(ramp[None, None, :, None], x.shape[:3] + (1,)) + 0.0 * x[..., :1]


def _config(size=32, method="resize", num_classes=1, in_channels=1):
  config = load_config("default")
  config.image_size, config.resize_method = size, method
  config.num_classes, config.in_channels = num_classes, in_channels
  return config


def _disc_frame(height, width, center, radius):
  yy, xx = np.mgrid[:height, :width]
  disc = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2
  return np.where(disc, 255, 0).astype(np.uint8), disc


@pytest.mark.parametrize("method,shape,center", [
    ("resize", (96, 160), (40, 70)),
    ("letterbox", (90, 150), (45, 60)),
    ("letterbox", (150, 90), (60, 45)),
    ("crop", (96, 160), (48, 80)),
])
def test_mask_maps_back_onto_the_original_pixels(method, shape, center):
  frame, disc = _disc_frame(*shape, center, radius=18)
  predictor = inference.Predictor([(BrightIsVein(), {})], _config(64, method))
  (result,) = predictor.predict([frame])
  assert result.mask.shape == shape and result.probabilities.shape == shape + (1,)
  iou = (result.mask.astype(bool) & disc).sum() / (result.mask.astype(bool) | disc).sum()
  assert iou > 0.93, iou  # 64 px model size: only the disc's rim may differ
  wrong = result.mask.astype(bool) ^ disc
  yy, xx = np.nonzero(wrong)
  distance = np.hypot(yy - center[0], xx - center[1])
  assert np.all(np.abs(distance - 18) < 3), "errors away from the disc's rim"


def test_crop_marks_pixels_outside_the_crop_background():
  frame = np.full((40, 100), 255, np.uint8)  # everything bright: "vein" everywhere
  (result,) = inference.Predictor([(BrightIsVein(), {})], _config(32, "crop")).predict([frame])
  assert result.mask[:, 30:70].all()  # the central 40x40 square
  assert not result.mask[:, :30].any() and not result.mask[:, 70:].any()


def test_frames_of_mixed_sizes_and_channels_in_one_call():
  gray, _ = _disc_frame(50, 70, (25, 35), 10)
  rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
  sixteen = gray.astype(np.uint16) * 257  # the same picture in 16 bits
  results = inference.Predictor([(BrightIsVein(), {})], _config(32)).predict([gray, rgba, sixteen, gray[:40]])
  assert [r.mask.shape for r in results] == [(50, 70)] * 3 + [(40, 70)]
  np.testing.assert_array_equal(results[0].mask, results[1].mask)
  np.testing.assert_array_equal(results[0].mask, results[2].mask)


def test_preprocessing_is_the_training_pipelines(tmp_path):
  rng = np.random.default_rng(0)
  frame16 = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
  path = tmp_path / "frame.png"
  Image.fromarray(frame16).save(path)
  config = _config(32, "letterbox")
  from_file = pipeline.preprocess_for_model(
      np.asarray(sources.to_channels(decode.read_image(path), 1)), config)
  predictor = inference.Predictor([(BrightIsVein(), {})], config)
  np.testing.assert_array_equal(predictor.preprocess(frame16), from_file)
  rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  np.testing.assert_array_equal(predictor.preprocess(rgb), pipeline.preprocess_for_model(
      np.asarray(sources.to_channels(rgb, 1)), config))


def test_bad_frames_name_the_problem():
  predictor = inference.Predictor([(BrightIsVein(), {})], _config(32))
  with pytest.raises(decode.BadExampleError, match="dtype float32"):
    predictor.predict([np.zeros((10, 10), np.float32)])
  with pytest.raises(decode.BadExampleError, match="shape"):
    predictor.predict([np.zeros((10, 10, 5), np.uint8)])
  assert predictor.predict([]) == []


def test_flip_tta_of_a_flip_equivariant_model_equals_no_tta():
  rng = np.random.default_rng(1)
  frames = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(3)]
  plain = inference.Predictor([(BrightIsVein(), {})], _config(32)).predict(frames)
  flipped = inference.Predictor([(BrightIsVein(), {})], _config(32), tta=("hflip",)).predict(frames)
  for a, b in zip(plain, flipped):
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_flip_tta_averages_the_flipped_view():
  frame = np.zeros((32, 32), np.uint8)
  plain = inference.Predictor([(ColumnRamp(), {})], _config(32)).predict([frame])[0]
  tta = inference.Predictor([(ColumnRamp(), {})], _config(32), tta=("hflip",)).predict([frame])[0]
  assert plain.probabilities[0, 0, 0] < 0.3 and plain.probabilities[0, -1, 0] > 0.7
  # sigmoid(r) + sigmoid(-r) = 1: the averaged view is 0.5 everywhere.
  np.testing.assert_allclose(tta.probabilities, 0.5, atol=1e-6)
  with pytest.raises(ValueError, match="--tta=vflip"):
    inference.Predictor([(ColumnRamp(), {})], _config(32), tta=("vflip",))


def test_ensemble_averages_member_probabilities():
  frame = np.zeros((32, 32), np.uint8)
  a = inference.Predictor([(ColumnRamp(), {})], _config(32)).predict([frame])[0].probabilities
  b = inference.Predictor([(BrightIsVein(), {})], _config(32)).predict([frame])[0].probabilities
  both = inference.Predictor([(ColumnRamp(), {}), (BrightIsVein(), {})], _config(32)).predict([frame])[0]
  np.testing.assert_allclose(both.probabilities, (a + b) / 2, atol=1e-6)


def test_postprocessing_applies_to_the_mapped_back_mask():
  frame = np.zeros((64, 64), np.uint8)
  frame[5:25, 5:25] = 255
  frame[50:53, 50:53] = 255  # a small bright speck
  result = inference.Predictor([(BrightIsVein(), {})], _config(64),
                               postprocess=PostProcess(largest=1)).predict([frame])[0]
  assert result.mask[15, 15] == 1 and result.mask[51, 51] == 0


def test_predictor_gives_evaluations_confusion_on_the_test_split(trained):
  config, workdir, _ = trained  # image_size == phantom_size: the mapped-back mask is the model-size mask
  reported = evaluation.evaluate(config, workdir, checkpoint="best", split="test")
  predictor = inference.Predictor.from_workdir(workdir, "best", batch_size=3)
  examples = list(sources.load_raw_split(config, "test").as_numpy_iterator())
  results = predictor.predict([e["image"] for e in examples])
  confusion = sum(np.asarray(metrics_lib.confusion_matrix(r.mask[None].astype(np.int32),
                                                          e["mask"][None].astype(np.int32), 2,
                                                          np.ones(1, np.float32)))
                  for r, e in zip(results, examples))
  ours = metrics_lib.summarize(confusion)
  for key in ("acc", "miou", "iou", "dice", "iou_per_class", "precision", "recall"):
    assert ours[key] == reported[key], key


def test_ensemble_of_runs_that_differ_is_an_error(trained, tmp_path):
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.image_size = 64
  with pytest.raises(ValueError, match="image_size: 32 in .* vs 64 in other"):
    inference._check_ensemble([config, other], [workdir, "other"])
  with pytest.raises(ValueError, match="at least one"):
    inference.Predictor.from_workdirs([])


def test_inference_steps_and_models_import_without_tensorflow():
  """The accelerator machines have no TensorFlow: these modules must not pull it in."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys; import veinjax.inference, veinjax.steps, veinjax.models, veinjax.losses, veinjax.metrics, "
          "veinjax.postprocess, veinjax.analysis.tracking, veinjax.train_lib, veinjax.evaluation; "
          "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if m.startswith('tensorflow'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
