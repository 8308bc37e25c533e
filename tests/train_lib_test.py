"""veinjax.train_lib end to end on a tiny phantom: train, evaluate, resume, NaN guard, full disk, wrong checkpoint.

One 2-epoch run of a 32x32 ResNet18-UNet (the `trained` fixture of conftest.py) is shared by most tests; the steps compile
once per session thanks to the compilation cache set up in conftest.py.
"""

import errno
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Crash, CrashingDataset, fill_disk_during_meta_writes, tiny_config

from veinjax import checkpoint
from veinjax import evaluation
from veinjax import files
from veinjax import inference
from veinjax import losses
from veinjax import steps
from veinjax import train_lib
from veinjax import workdir as workdir_lib


def _host_params(workdir, which="latest"):
  config = workdir_lib.load_config(workdir)
  model = steps.create_model(config)
  target = jax.eval_shape(lambda: steps.init_variables(model, config, jax.random.key(0)))
  tree, _, meta = checkpoint.restore_path(os.path.join(workdir, checkpoint.LATEST_DIR if which == "latest"
                                                       else checkpoint.BEST_DIR), target,
                                          steps.fingerprint(config))
  return tree, meta


def test_training_writes_config_history_summaries_checkpoints(trained):
  config, workdir, result = trained
  assert result["step"] == 8 and result["epoch"] == 2
  assert result["best_metric"] == "miou" and 0 <= result["best_value"] <= 1
  saved = workdir_lib.load_config(workdir)
  assert saved.model == config.model and saved.encoder == "resnet18" and saved.image_size == 32
  history = workdir_lib.read_history(workdir)
  assert [(r["epoch"], r["step"]) for r in history] == [(1, 4), (2, 8)]
  for record in history:
    for key in ("train_loss", "val_loss", "acc", "miou", "iou", "dice", "learning_rate", "images_per_sec"):
      assert math.isfinite(record[key]), (key, record)
    assert record["eval_split"] == "validation" and record["num_examples"] == 2  # 20% of 10 carved off
    assert record["learning_rate"] == pytest.approx(config.learning_rate)
  assert result["metrics"]["miou"] == history[-1]["miou"]
  assert max(r["miou"] for r in history) == pytest.approx(result["best_value"])
  # TensorBoard: curves and image panels.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance={"images": 0})
  events.Reload()
  tags = events.Tags()
  for tag in ("train/loss", "train/acc", "train/miou", "train/dice", "learning_rate", "images_per_sec",
              "validation/miou", "validation/acc", "validation/dice", "validation/loss"):
    assert tag in tags["scalars"], tag
  assert [e.step for e in events.Scalars("validation/miou")] == [4, 8]
  image = events.Images("validation/input_label_prediction/0")[0]
  assert (image.height, image.width) == (32, 3 * 32 + 4)
  # Checkpoints: latest (with its data position) and best.
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())[-1] == 8
  _, meta = _host_params(workdir)
  assert (meta["epoch"], meta["step_in_epoch"], meta["steps_per_epoch"]) == (2, 0, 4)


def test_evaluate_writes_metrics_and_is_batch_size_independent(trained):
  config, workdir, _ = trained
  metrics = evaluation.evaluate(config, workdir, checkpoint="best", split="test", save_predictions=True)
  with open(os.path.join(workdir, "eval", "test_metrics.json")) as f:
    assert json.load(f)["miou"] == metrics["miou"]
  for key in ("acc", "miou", "iou", "dice", "precision", "recall", "specificity", "hd95", "loss"):
    assert key in metrics
  assert len(metrics["iou_per_class"]) == 2 and metrics["num_examples"] == 4
  assert metrics["selected_on"] == "validation" and metrics["split"] == "test"
  assert metrics["miou"] == pytest.approx(np.mean(metrics["iou_per_class"]))
  pictures = os.listdir(os.path.join(workdir, "eval", "test_predictions"))
  assert len(pictures) == 4 and all(p.endswith(".png") for p in pictures)
  # 4 test examples in batches of 3: the second batch is padded, and nothing changes.
  other = config.copy_and_resolve_references()
  other.eval_batch_size = 3
  padded = evaluation.evaluate(other, workdir, checkpoint="best", split="test")
  for key in ("acc", "miou", "iou", "dice", "hd95", "num_examples"):
    assert padded[key] == metrics[key], key
  assert padded["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_evaluate_on_another_dataset_keeps_the_runs_own_figures(trained, tmp_path):
  """eval.py --dataset_config: the run's model on another dataset's split (zero-shot), in its own file."""
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.dataset.phantom_num_test = 6  # another (smaller) phantom data set
  other.dataset.data_dir = str(tmp_path)
  own = os.path.join(workdir, "eval", "test_metrics.json")
  before = open(own).read() if os.path.exists(own) else None
  moved = evaluation.with_dataset_of(config, other)
  assert moved.model == config.model and moved.dataset.phantom_num_test == 6
  metrics = evaluation.evaluate(moved, workdir, split="test", output_prefix="vein_phantom_")
  assert metrics["num_examples"] == 6 and metrics["dataset"] == "vein_phantom"
  with open(os.path.join(workdir, "eval", "vein_phantom_test_metrics.json")) as f:
    assert json.load(f)["num_examples"] == 6
  assert (open(own).read() if os.path.exists(own) else None) == before
  other.num_classes = 3
  with pytest.raises(ValueError, match=r"--dataset_config: its num_classes=3 differs from the run's 1"):
    evaluation.with_dataset_of(config, other)


def test_load_for_inference_matches_evaluation(trained):
  """The model and variables that inference loads score the test split exactly as evaluate() does."""
  from veinjax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from veinjax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  config, workdir, _ = trained
  model, variables, loaded = inference.load_for_inference(workdir, checkpoint="best")
  assert loaded.model == config.model
  images, labels = [], []
  for example in sources.load_raw_split(config, "test"):
    image, mask = pipeline.resize_example(example["image"], example["mask"], config.image_size,
                                          config.resize_method)
    images.append(pipeline.preprocess_for_model(image.numpy(), config))
    labels.append(mask.numpy())
  logits = jax.jit(lambda v, x: steps.predict_logits(model, v, x))(variables, np.stack(images))
  assert logits.shape == (4, 32, 32, 1) and logits.dtype == jnp.float32
  predictions = metrics_lib.predictions(logits, config.num_classes)
  confusion = np.asarray(metrics_lib.confusion_matrix(predictions, np.stack(labels), 2))
  ours = metrics_lib.summarize(confusion)
  evaluated = evaluation.evaluate(config, workdir, checkpoint="best", split="test")
  for key in ("acc", "miou", "iou", "dice"):
    assert ours[key] == pytest.approx(evaluated[key], abs=1e-12), key


def test_resume_after_interruption_equals_uninterrupted_run(trained, tmp_path, monkeypatch):
  config, straight_dir, _ = trained
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top
  original = pipeline.create_train_dataset

  def crashing(cfg, *, epoch, **kwargs):
    ds = original(cfg, epoch=epoch, **kwargs)
    return CrashingDataset(ds, after=3) if epoch == 1 else ds

  workdir = str(tmp_path / "interrupted")
  monkeypatch.setattr(pipeline, "create_train_dataset", crashing)
  with pytest.raises(Crash):
    train_lib.train_and_evaluate(config, workdir)
  monkeypatch.setattr(pipeline, "create_train_dataset", original)
  # Killed during epoch 2 (steps 5..8) after step 7; the last checkpoint is the mid-epoch one of step 6.
  _, meta = _host_params(workdir)
  assert (meta["step"], meta["epoch"], meta["step_in_epoch"]) == (6, 1, 2)
  assert [r["step"] for r in workdir_lib.read_history(workdir)] == [4]
  result = train_lib.train_and_evaluate(config, workdir)
  assert result["step"] == 8
  resumed, _ = _host_params(workdir)
  straight, _ = _host_params(straight_dir)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  # The history (incl. the epoch's mean training loss, carried across the interruption) is the same too.
  drop = ("images_per_sec", "train_seconds", "eval_seconds")
  clean = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
  assert clean(workdir_lib.read_history(workdir)) == clean(workdir_lib.read_history(straight_dir))
  # A finished run started again does nothing and reports the same.
  again = train_lib.train_and_evaluate(config, workdir)
  assert again["step"] == 8 and again["best_value"] == result["best_value"]


def test_nan_loss_stops_the_run_and_keeps_the_best_checkpoint(trained, tmp_path):
  config, straight_dir, _ = trained
  workdir = str(tmp_path / "diverging")
  shutil.copytree(straight_dir, workdir)
  best_before, best_meta = _host_params(workdir, "best")
  diverging = config.copy_and_resolve_references()
  diverging.num_epochs = 3
  diverging.learning_rate = float("inf")  # step 9 makes the parameters non-finite, step 10's loss is NaN
  diverging.checkpoint_every_steps = 0  # (a mid-epoch save at step 9 would be refused by the finite check)
  with pytest.raises(FloatingPointError, match=r"loss is (nan|inf|-inf) at step 10 \(epoch 3\).*after step 8, .*"
                                               r"and so is the best \(step \d\)"):
    # A changed recipe on resume: allowed explicitly (tests/bad_inputs_test.py: refused otherwise).
    train_lib.train_and_evaluate(diverging, workdir, allow_config_change=True)
  best_after, best_meta_after = _host_params(workdir, "best")
  assert best_meta_after["step"] == best_meta["step"]
  jax.tree.map(np.testing.assert_array_equal, best_after, best_before)
  _, latest_meta = _host_params(workdir, "latest")
  assert latest_meta["step"] == 8


def test_disk_full_while_checkpointing_stops_clearly_and_keeps_the_previous_checkpoint(
    trained, tmp_path, monkeypatch):
  """The disk fills up in the middle of the (background) write of the mid-epoch checkpoint of step 9: the run
  stops with DiskFullError at its next save, and step 8's checkpoint restores intact. (That a reopened
  workdir drops the partial checkpoint and saves again: tests/checkpoint_test.py; train.py resuming after
  a real full disk: docs/bad_inputs.md t8, t9.)"""
  config, straight_dir, _ = trained
  workdir = str(tmp_path / "full")
  shutil.copytree(straight_dir, workdir)  # the finished 2-epoch run; a third epoch: steps 9..12
  longer = config.copy_and_resolve_references()
  longer.num_epochs = 3  # (a resume-free field)
  fill_disk_during_meta_writes(monkeypatch, ("checkpoints",), 9, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
  with pytest.raises(files.DiskFullError, match=(
      rf"^Could not write {workdir}/checkpoints/9: the disk is full \(No space left on device\)\. The checkpoint "
      rf"of step 9 was not written .*the latest is step 8 \({workdir}/checkpoints/8\), the best step \d .*"
      r"Training resumes from step 8 when run again\. Free space on that disk")):
    train_lib.train_and_evaluate(longer, workdir)
  monkeypatch.undo()
  kept, meta = _host_params(workdir)  # a fresh restore, as a resumed run does it
  assert (meta["step"], meta["epoch"], meta["step_in_epoch"]) == (8, 2, 0)
  jax.tree.map(np.testing.assert_array_equal, kept, _host_params(straight_dir)[0])
  assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == ["6", "8"]


def test_checkpoint_of_another_model_fails_clearly(trained, tmp_path):
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.model = "fcn8s"
  other.encoder = "resnet34"
  with pytest.raises(checkpoint.CheckpointMismatchError, match="model: checkpoint 'resnet34_unet', config 'fcn8s'"):
    evaluation.evaluate(other, workdir)
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="fcn8s"):
    train_lib.train_and_evaluate(other, copy)
  assert workdir_lib.load_config(copy).model == "resnet34_unet"  # the run's record was not overwritten
  wider = config.copy_and_resolve_references()
  wider.encoder = "resnet34"  # same model name, other encoder
  with pytest.raises(checkpoint.CheckpointMismatchError, match="encoder: checkpoint 'resnet18', config 'resnet34'"):
    evaluation.evaluate(wider, workdir, checkpoint=os.path.join(workdir, "checkpoints"))


@pytest.mark.parametrize("field,value,expected", [
    ("model", "segnet", "resnet34_unet, unet, fcn8s, deeplabv3plus"),
    ("loss", "lovasz", "bce, dice, bce_dice, focal"),
    ("eval_split", "training", "validation, test"),
    ("parallelism", "pjit", "pmap, jit"),
    ("optimizer", "adagrad", "adam, sgd"),
    ("best_metric", "mIoU", "miou"),
    ("image_size", 100, "32"),
    ("dataset.name", "cifar10", "vein_phantom, folder, usgra_seg"),
])
def test_bad_config_names_the_flag_and_the_choices(phantom_data_dir, field, value, expected):
  config = tiny_config(phantom_data_dir, **{field: value})
  with pytest.raises(ValueError, match=expected):
    train_lib.validate_config(config)


def test_bad_split_for_evaluate(trained):
  config, workdir, _ = trained
  with pytest.raises(ValueError, match="--split='val'.*train, validation, test"):
    evaluation.evaluate(config, workdir, split="val")


def test_half_precision_computes_in_bf16_with_float32_params_and_loss(phantom_data_dir):
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(size=(2, 32, 32, 1)).astype(np.float32),
           "label": (rng.uniform(size=(2, 32, 32)) > 0.7).astype(np.int32)}
  config = tiny_config(phantom_data_dir, half_precision=True)
  model = steps.create_model(config)
  full = steps.create_model(tiny_config(phantom_data_dir))
  assert model.dtype == jnp.bfloat16 and full.dtype == jnp.float32
  lr_fn = steps.create_learning_rate_fn(config, steps_per_epoch=4)
  # Initialised through the float32 model (the parameters are the same; its init is compiled already).
  state = steps.create_train_state(config, full, lr_fn).replace(apply_fn=model.apply)
  step = jax.jit(lambda s, b: steps.train_step(s, b, loss_fn=losses.get_loss_fn("bce", 1),
                                                   learning_rate_fn=lr_fn, num_classes=1))
  new_state, metrics = step(state, batch)
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(metrics["loss"])
  assert int(new_state.step) == 1
  floats = [x for x in jax.tree.leaves((new_state.params, new_state.opt_state, new_state.batch_stats))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  # Same float32 parameters through the float32 model: float32 logits from both, close but not equal
  # (the bf16 model rounds its computation).
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  half_logits, full_logits = (jax.jit(lambda v, x, m=m: steps.predict_logits(m, v, x))(variables, batch["image"])
                              for m in (model, full))
  assert half_logits.dtype == full_logits.dtype == jnp.float32
  scale = float(jnp.abs(full_logits).max())
  assert 0 < float(jnp.abs(half_logits - full_logits).max()) < 0.1 * scale


def test_learning_rate_schedules(phantom_data_dir):
  config = tiny_config(phantom_data_dir, lr_schedule="cosine", warmup_epochs=1.0, num_epochs=3)
  lr = steps.create_learning_rate_fn(config, steps_per_epoch=10)
  assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(config.learning_rate)
  assert float(lr(30)) == pytest.approx(0.0, abs=1e-9)
  assert float(lr(20)) == pytest.approx(config.learning_rate / 2, rel=1e-3)


def test_equal_models_share_one_compiled_initialisation():
  """Two runs of one config in a process (a resume, a compare runner, this suite) compile the model's
  initialisation once: the model is a static argument, and equal configs build equal (hashable) modules."""
  config = tiny_config("/unused", model="ultralight_unet", image_size=96)  # initialised by no other test
  compiled = steps._initialize._cache_size()
  first = steps.init_variables(steps.create_model(config), config, jax.random.key(0))
  assert steps._initialize._cache_size() == compiled + 1
  again = steps.init_variables(steps.create_model(config), config, jax.random.key(0))  # another, equal module
  other_seed = steps.init_variables(steps.create_model(config), config, jax.random.key(1))
  assert steps._initialize._cache_size() == compiled + 1
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other_seed)))
