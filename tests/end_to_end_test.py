"""End to end through the paths the other tests do not train: the default parallelism (pmap) through training,
resume, evaluation and the compare runner; a folder dataset labelled in Labelme, with 3 classes and RGB input;
evaluation with configs/tpu.py's bf16 settings; the compare runner resuming a run interrupted after epoch 1.

Two module fixtures train everything (tests/conftest.py's tiny config, 32x32, 2 epochs of 4 steps):
- `pmap_compare`: `compare` of ResNet18-UNet under pmap, once straight through and once interrupted after
  epoch 1 then run again. The straight run is the jit-trained `trained` fixture's recipe under pmap, so the
  two must agree; the resumed one must end exactly as the straight one.
- `labelme_run`: a folder dataset of RGB PNGs whose labels are Labelme JSON files (a 'vein' polygon and an
  'artery' rectangle), trained with num_classes=3 (softmax) and in_channels=3.

On this one CPU device pmap runs one replica (its cross-replica means over one device); several devices
under pmap and jit are compared in tests/parallel_test.py (the step) and tests/multihost_test.py (training,
resume and evaluation on 4 devices, 1 or 2 processes).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import load_config, tiny_config
from veinjax import checkpoint
from veinjax import evaluation
from veinjax import steps
from veinjax import workdir as workdir_lib
from veinjax.data import pipeline
from veinjax.data import sources
from veinjax.experiments import compare

_TIMING = ("images_per_sec", "train_seconds", "eval_seconds")
_UNIT_METRICS = ("acc", "miou", "iou", "dice", "precision", "recall", "specificity")


def _history(workdir):
  return [{k: v for k, v in r.items() if k not in _TIMING} for r in workdir_lib.read_history(workdir)]


def _latest(workdir):
  """The latest checkpoint's {'params', 'batch_stats'} (host numpy) and meta."""
  config = workdir_lib.load_config(workdir)
  model = steps.create_model(config)
  target = jax.eval_shape(lambda: steps.init_variables(model, config, jax.random.key(0)))
  tree, _, meta = checkpoint.restore_path(os.path.join(workdir, checkpoint.LATEST_DIR), target,
                                          steps.fingerprint(config))
  return tree, meta


def _assert_unit_metrics(metrics, where):
  for key in _UNIT_METRICS:
    assert np.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, (where, key, metrics[key])


# ---- pmap (the default) through training, resume, evaluation and compare ----

_MODEL = "resnet34_unet"


class _Killed(Exception):
  pass


@pytest.fixture(scope="module")
def pmap_compare(tmp_path_factory, phantom_data_dir):
  config = tiny_config(phantom_data_dir, parallelism="pmap")  # what configs/default.py trains with
  config.compare.models = _MODEL
  config.compare.timing_runs = 1
  config.compare.num_figure_images = 1
  root = tmp_path_factory.mktemp("pmap_compare")
  straight_dir, resumed_dir = str(root / "straight"), str(root / "interrupted")
  straight = compare.run_comparison(config, straight_dir)

  original = pipeline.create_train_dataset

  def killed_after_epoch_1(cfg, *, epoch, **kwargs):
    if epoch == 1:  # the second epoch's data: epoch 1 is trained, evaluated and checkpointed
      raise _Killed("killed after epoch 1")
    return original(cfg, epoch=epoch, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(pipeline, "create_train_dataset", killed_after_epoch_1)
    with pytest.raises(_Killed):
      compare.run_comparison(config, resumed_dir)
  run_dir = compare.run_workdir(resumed_dir, _MODEL, 0)
  interrupted = {"history": _history(run_dir), "step": _latest(run_dir)[1]["step"],
                 "finished": os.path.exists(os.path.join(run_dir, compare.RUN_MARKER))}
  resumed = compare.run_comparison(config, resumed_dir)
  return {"config": config, "straight": straight, "straight_dir": straight_dir, "resumed": resumed,
          "resumed_dir": resumed_dir, "interrupted": interrupted}


def test_pmap_training_agrees_with_jit(pmap_compare, trained):
  """The compare run (pmap) and the `trained` fixture (jit) train the same recipe on the same data.

  They agree as far as float summation order lets this tiny ResNet agree with itself: one step from the
  same state on the same batch gives the same loss within 1e-4 (under jit alone, the same batch in reverse
  order differs by ~4e-5), and over 8 Adam steps those differences grow (BatchNorm over the 2 values of a
  1x1 map, Adam's first steps of lr * g / |g|), so the epochs' training losses agree within 2% only.
  tests/multihost_test.py compares pmap and jit runs to 1e-5 on a recipe that does not amplify rounding.
  """
  from veinjax import parallel  # pylint: disable=g-import-not-at-top
  jit_config, jit_dir, _ = trained
  run_dir = compare.run_workdir(pmap_compare["straight_dir"], _MODEL, 0)
  assert workdir_lib.load_config(run_dir).parallelism == "pmap" and jit_config.parallelism == "jit"
  # One step of the run's own step function under each.
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(size=(2, 32, 32, 1)).astype(np.float32),
           "label": (rng.uniform(size=(2, 32, 32)) > 0.7).astype(np.int32)}
  learning_rate_fn = steps.create_learning_rate_fn(jit_config, steps_per_epoch=4)
  host_state = steps.create_train_state(jit_config, steps.create_model(jit_config), learning_rate_fn)
  first_loss = {}
  for mode in ("pmap", "jit"):
    config = jit_config.copy_and_resolve_references()
    config.parallelism = mode
    par = parallel.DataParallel(mode)
    state = par.replicate(host_state.replace(apply_fn=steps.create_model(config, par.axis_name).apply))
    _, metrics = steps.wrap_train_step(config, par, learning_rate_fn)(state, par.shard(batch))
    first_loss[mode] = float(par.first(metrics)["loss"])
  assert first_loss["pmap"] == pytest.approx(first_loss["jit"], rel=1e-4)
  # The whole loop: the same epochs and evaluations, training losses within 2%.
  pmap_history, jit_history = _history(run_dir), _history(jit_dir)
  assert [(r["epoch"], r["step"], r["num_examples"]) for r in pmap_history] == [
      (r["epoch"], r["step"], r["num_examples"]) for r in jit_history] == [(1, 4, 2), (2, 8, 2)]
  for ours, theirs in zip(pmap_history, jit_history):
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=0.02)
    _assert_unit_metrics(ours, f"pmap epoch {ours['epoch']}")
  assert pmap_history[-1]["train_loss"] < pmap_history[0]["train_loss"]  # it learns


def test_pmap_evaluation_matches_jit_and_the_compare_record(pmap_compare):
  config = pmap_compare["config"]
  run_dir = compare.run_workdir(pmap_compare["straight_dir"], _MODEL, 0)
  run_config = compare.run_config(config, _MODEL, 0)
  jit_config = run_config.copy_and_resolve_references()
  jit_config.parallelism = "jit"
  under_pmap = evaluation.evaluate(run_config, run_dir, split="test", output_prefix="pmap_")
  under_jit = evaluation.evaluate(jit_config, run_dir, split="test", output_prefix="jit_")
  _assert_unit_metrics(under_pmap, "pmap evaluation")
  assert under_pmap["num_examples"] == under_jit["num_examples"] == 4
  for key in ("acc", "miou", "iou", "dice", "iou_per_class"):
    assert under_pmap[key] == under_jit[key], key  # the same pixel counts
  assert under_pmap["loss"] == pytest.approx(under_jit["loss"], rel=1e-5)
  record = pmap_compare["straight"]["runs"][0]["metrics"]  # compare's own test evaluation (pmap)
  assert record["miou"] == under_pmap["miou"] and record["checkpoint_step"] == under_pmap["checkpoint_step"]


def test_compare_resumes_a_run_interrupted_after_epoch_1_to_the_uninterrupted_result(pmap_compare):
  interrupted = pmap_compare["interrupted"]
  assert [r["step"] for r in interrupted["history"]] == [4] and interrupted["step"] == 4
  assert not interrupted["finished"]  # no compare_run.json: compare must resume it, not skip it
  straight, resumed = pmap_compare["straight"], pmap_compare["resumed"]
  assert [r["status"] for r in resumed["runs"]] == [r["status"] for r in straight["runs"]] == ["trained"]
  straight_run = compare.run_workdir(pmap_compare["straight_dir"], _MODEL, 0)
  resumed_run = compare.run_workdir(pmap_compare["resumed_dir"], _MODEL, 0)
  # Each epoch recorded once, with the numbers of the run that was never interrupted; parameters bit for bit.
  assert _history(resumed_run) == _history(straight_run)
  jax.tree.map(np.testing.assert_array_equal, _latest(resumed_run)[0], _latest(straight_run)[0])
  # The test metrics (as JSON text: an undefined HD95 is NaN), the selection and Table 1's figures agree.
  as_text = lambda result: [json.dumps({k: v for k, v in r["metrics"].items() if k != "checkpoint_path"},  # noqa: E731
                                       sort_keys=True) for r in result["runs"]]
  assert as_text(resumed) == as_text(straight)
  assert [r["selection"] for r in resumed["runs"]] == [r["selection"] for r in straight["runs"]]
  timing = ("inference_ms", "train_minutes", "train_seconds", "device")
  clean = lambda rows: [{k: v for k, v in r.items() if not k.startswith(timing)} for r in rows]  # noqa: E731
  assert clean(resumed["rows"]) == clean(straight["rows"])
  assert sorted(resumed["files"]) == sorted(straight["files"])
  assert all(os.path.exists(path) for path in resumed["files"].values())


# ---- A Labelme folder dataset, 3 classes, RGB input; bf16 evaluation ----

_LABELS = {"vein": 1, "artery": 2}
_VEIN_RGB, _ARTERY_RGB = (40, 70, 210), (215, 50, 40)


def _shapes(i):
  """Example i's Labelme shapes: a 'vein' quadrilateral and an 'artery' rectangle, moving with i."""
  x, y = 2 + i % 6, 2 + (3 * i) % 7
  vein = [[x, y], [x + 11, y + 1], [x + 13, y + 9], [x + 1, y + 8]]
  artery = [[x + 15, y + 14], [x + 23, y + 21]]
  return [{"label": "vein", "points": vein, "shape_type": "polygon", "group_id": None, "flags": {}},
          {"label": "artery", "points": artery, "shape_type": "rectangle", "group_id": None, "flags": {}}]


def _write_labelme_folder(root, num_train=10, num_test=4):
  """ROOT/{train,test}/images/<stem>.png (32x32 RGB) with <stem>.json beside each, as Labelme saves them."""
  rng = np.random.default_rng(0)
  for split, count in (("train", num_train), ("test", num_test)):
    images = root / split / "images"
    images.mkdir(parents=True)
    for i in range(count):
      stem = f"{split}{i}"
      image = Image.fromarray(rng.integers(0, 70, (32, 32, 3), dtype=np.uint8))
      draw = ImageDraw.Draw(image)
      vein, artery = _shapes(i if split == "train" else 50 + i)
      draw.polygon([tuple(p) for p in vein["points"]], fill=_VEIN_RGB)
      draw.rectangle([tuple(p) for p in artery["points"]], fill=_ARTERY_RGB)
      image.save(images / f"{stem}.png")
      (images / f"{stem}.json").write_text(json.dumps({
          "version": "5.4.1", "flags": {}, "shapes": [vein, artery], "imagePath": f"{stem}.png",
          "imageData": None, "imageHeight": 32, "imageWidth": 32}))
  return root


@pytest.fixture(scope="module")
def labelme_run(tmp_path_factory, phantom_data_dir):
  from veinjax import train_lib  # pylint: disable=g-import-not-at-top
  root = _write_labelme_folder(tmp_path_factory.mktemp("labelme_data"))
  config = tiny_config(phantom_data_dir, num_classes=3, in_channels=3,
                       **{"dataset.name": "folder", "dataset.root": str(root)})
  config.dataset.labelme_labels = dict(_LABELS)
  workdir = str(tmp_path_factory.mktemp("labelme_run"))
  result = train_lib.train_and_evaluate(config, workdir)
  test = evaluation.evaluate(config, workdir, checkpoint="best", split="test")
  return {"config": config, "workdir": workdir, "result": result, "test": test, "root": root}


def test_labelme_folder_dataset_trains_end_to_end(labelme_run):
  config, workdir, test = labelme_run["config"], labelme_run["workdir"], labelme_run["test"]
  # The Labelme files are what the pipeline trains on: each class where its shape is, and only there.
  examples = list(sources.load_raw_split(config, "test").as_numpy_iterator())
  assert [e["id"].decode() for e in examples] == [f"test{i}" for i in range(4)]
  for i, example in enumerate(examples):
    mask = example["mask"]
    assert set(np.unique(mask)) == {0, 1, 2}, example["id"]
    for cls, shape in zip((1, 2), _shapes(50 + i)):
      (x0, y0), (x1, y1) = np.min(shape["points"], axis=0), np.max(shape["points"], axis=0)
      ys, xs = np.nonzero(mask == cls)
      assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1, (example["id"], cls)
  history = workdir_lib.read_history(workdir)
  assert [(r["epoch"], r["step"], r["num_examples"]) for r in history] == [(1, 4, 2), (2, 8, 2)]
  for record in history:
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    _assert_unit_metrics(record, f"epoch {record['epoch']}")
  assert labelme_run["result"]["step"] == 8
  assert test["num_examples"] == 4 and test["dataset"] == "folder"
  _assert_unit_metrics(test, "test")


def test_three_classes_train_a_softmax_over_three_logits(labelme_run):
  config, workdir, test = labelme_run["config"], labelme_run["workdir"], labelme_run["test"]
  assert sources.num_classes(config) == 3
  assert len(test["iou_per_class"]) == 3  # background, vein, artery
  assert all(0.0 <= v <= 1.0 for v in test["iou_per_class"])
  assert test["miou"] == pytest.approx(np.mean(test["iou_per_class"]))
  for record in workdir_lib.read_history(workdir):
    assert len(record["iou_per_class"]) == 3
  params, _ = _latest(workdir)
  assert params["params"]["head"]["kernel"].shape[-1] == 3  # one logit per class (softmax), not one sigmoid
  assert workdir_lib.load_config(workdir).loss == "bce"  # which, with 3 classes, is softmax cross-entropy


def test_rgb_input_reaches_the_model_as_three_channels(labelme_run):
  config, workdir = labelme_run["config"], labelme_run["workdir"]
  assert workdir_lib.load_config(workdir).in_channels == 3
  batch = next(pipeline.create_eval_dataset(config, "test").as_numpy_iterator())
  assert batch["image"].shape == (4, 32, 32, 3)
  # The colours survive: the vein (blue) and artery (red) pixels differ channel by channel.
  example = next(sources.load_raw_split(config, "test").as_numpy_iterator())
  vein, artery = (example["image"][example["mask"] == c].mean(axis=0) for c in (1, 2))
  assert vein[2] > vein[0] + 100 and artery[0] > artery[2] + 100
  params, meta = _latest(workdir)
  assert meta["fingerprint"]["in_channels"] == 3
  assert params["params"]["encoder"]["conv1"]["kernel"].shape == (7, 7, 3, 64)  # the stem reads 3 channels


def test_bf16_evaluation_with_the_tpu_config(labelme_run):
  """configs/tpu.py's evaluation settings (half_precision: bf16 computation; its eval batch of 64, here
  padded) on the float32-trained run: the same examples, metrics near the float32 ones."""
  config, workdir, full = labelme_run["config"], labelme_run["workdir"], labelme_run["test"]
  tpu = load_config("tpu")
  assert tpu.half_precision
  half = config.copy_and_resolve_references()
  half.half_precision, half.eval_batch_size = tpu.half_precision, tpu.eval_batch_size
  assert steps.create_model(half).dtype == jnp.bfloat16
  metrics = evaluation.evaluate(half, workdir, checkpoint="best", split="test", output_prefix="bf16_")
  assert metrics["num_examples"] == full["num_examples"] == 4
  _assert_unit_metrics(metrics, "bf16")
  assert len(metrics["iou_per_class"]) == 3
  assert np.isfinite(metrics["loss"]) and metrics["loss"] != full["loss"]  # computed in bf16 indeed
  assert metrics["loss"] == pytest.approx(full["loss"], rel=0.05)
  assert metrics["acc"] == pytest.approx(full["acc"], abs=0.02)
  assert os.path.exists(os.path.join(workdir, "eval", "bf16_test_metrics.json"))
