"""The final fit (issue 18): a run retrained on train + validation for the epoch count validation chose, in
WORKDIR/final/, its last checkpoint evaluated on test; train.py's path, a hand-made history, compare."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from veinjax import checkpoint
from veinjax import final_fit
from veinjax import train_lib
from veinjax import workdir as workdir_lib
from veinjax.experiments import compare
from veinjax.experiments import table1

# conftest's tiny phantom: 10 train examples, 2 of them carved off for validation; batch 2.
_TRAIN, _VALIDATION, _BATCH = 10, 2, 2


def _steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _mtimes(directory):
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(directory) for name in names}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, phantom_data_dir):
  """train.py's work: a plain run, recorded before final_fit existed (no such field in its config.json); then
  final_fit switched on for it, twice. (config, workdir, plain, first, second, final/'s file mtimes between
  the last two)."""
  config = tiny_config(phantom_data_dir)
  workdir = str(tmp_path_factory.mktemp("final_fit"))
  plain = final_fit.train_and_evaluate(config, workdir)
  assert plain["final"] is None and not os.path.exists(final_fit.final_workdir(workdir))
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  with open(path) as f:
    stored = json.load(f)
  del stored["final_fit"]
  workdir_lib.write_json(path, stored)
  config.final_fit = True
  first = final_fit.train_and_evaluate(config, workdir)
  mtimes = _mtimes(final_fit.final_workdir(workdir))
  second = final_fit.train_and_evaluate(config, workdir)
  return config, workdir, plain, first, second, mtimes


def test_final_run_trains_on_train_and_validation_for_the_chosen_epochs(fitted):
  config, workdir, plain, first, _, _ = fitted
  final, final_dir = first["final"], os.path.join(workdir, "final")
  assert final["status"] == "trained" and final["workdir"] == final_dir
  assert (first["step"], first["best_step"]) == (plain["step"], plain["best_step"])  # the run: not retrained
  history = workdir_lib.read_history(workdir)
  best = max(r["miou"] for r in history)
  chosen = next(r["epoch"] for r in history if r["miou"] == best)  # the first of equal maxima
  assert final["epochs"] == chosen and final["selection"]["epoch"] == chosen
  assert (final["train_examples"], final["validation_examples"]) == (_TRAIN, _VALIDATION)
  # Steps per epoch from all 10 train examples (the run itself: 8): 5, for the chosen epochs exactly.
  assert first["best_step"] in [r["step"] for r in history] and history[0]["step"] == 4
  steps_per_epoch = _TRAIN // _BATCH
  assert final["step"] == chosen * steps_per_epoch
  assert _steps(os.path.join(final_dir, checkpoint.LATEST_DIR))[-1] == final["step"]
  assert _steps(os.path.join(final_dir, checkpoint.BEST_DIR)) == [final["step"]]  # its last, not chosen

  recorded = workdir_lib.load_config(final_dir)
  run = workdir_lib.load_config(workdir)
  assert (recorded.num_epochs, recorded.dataset.validation_fraction, recorded.eval_split, recorded.final_fit) == (
      chosen, 0.0, "none", False)
  changed = {c[0] for c in workdir_lib.config_changes(run.to_dict(), recorded.to_dict())}
  assert changed <= {"num_epochs", "dataset.validation_fraction", "eval_split", "final_fit"}
  assert recorded.seed == config.seed
  final_history = workdir_lib.read_history(final_dir)
  assert [(r["epoch"], r["step"]) for r in final_history] == [
      (e, e * steps_per_epoch) for e in range(1, chosen + 1)]
  assert all(r["eval_split"] == "none" and "miou" not in r and r["train_loss"] > 0 for r in final_history)


def test_final_run_is_evaluated_on_test_from_its_last_checkpoint(fitted):
  _, workdir, _, first, _, _ = fitted
  final_dir = os.path.join(workdir, "final")
  with open(os.path.join(final_dir, "eval", "test_metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["split"] == "test" and metrics["num_examples"] == 4
  assert metrics["checkpoint_step"] == first["final"]["step"] and metrics["selected_on"] == "none"
  assert json.dumps(metrics, sort_keys=True) == json.dumps(first["final"]["test_metrics"], sort_keys=True)
  with open(os.path.join(final_dir, final_fit.RECORD_FILE)) as f:
    record = json.load(f)
  assert record["source_workdir"] == os.path.abspath(workdir) and record["epochs"] == first["final"]["epochs"]
  assert record["test_metrics"]["dice"] == metrics["dice"]
  assert metrics["checkpoint_path"] == os.path.join(final_dir, checkpoint.BEST_DIR, str(first["final"]["step"]))


def test_second_call_skips_the_finished_final_fit(fitted):
  _, workdir, _, first, second, mtimes = fitted
  assert second["final"]["status"] == "skipped" and not second["final"]["preempted"]
  assert json.dumps(second["final"]["test_metrics"], sort_keys=True) == json.dumps(
      first["final"]["test_metrics"], sort_keys=True)
  assert mtimes == _mtimes(final_fit.final_workdir(workdir)), "the second call rewrote or added files in final/"


def _write_history(workdir, mious):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lib.HISTORY_FILE), "w") as f:
    for epoch, miou in enumerate(mious, start=1):
      f.write(json.dumps({"epoch": epoch, "step": epoch * 4, "eval_split": "validation", "miou": miou}) + "\n")


def test_ties_choose_the_earliest_epoch_and_a_changed_choice_is_an_error(tmp_path, phantom_data_dir):
  """The choice comes from the run's history alone: epoch 1 ties epoch 3 for the best mIoU, so 1 is chosen."""
  workdir = str(tmp_path / "run")
  config = tiny_config(phantom_data_dir, final_fit=True, num_epochs=3)
  _write_history(workdir, [0.7, 0.6, 0.7])
  assert final_fit.chosen_epochs(config, workdir)["epoch"] == 1
  assert final_fit.final_config(config, 1).num_epochs == 1
  # A finished final fit of 1 epoch (its record as fit writes it); the run now chooses epoch 2.
  final_dir = final_fit.final_workdir(workdir)
  os.makedirs(final_dir)
  cfg = final_fit.final_config(config, 1)
  workdir_lib.write_json(os.path.join(final_dir, final_fit.RECORD_FILE),
                         {"epochs": 1, "config": workdir_lib.config_json(cfg)})
  assert final_fit.fit(config, workdir)["status"] == "skipped"
  _write_history(workdir, [0.7, 0.8, 0.7])
  with pytest.raises(ValueError, match=r"final.*num_epochs: 1 there, 2 now.*Delete"):
    final_fit.fit(config, workdir)
  _write_history(workdir, [])
  with pytest.raises(ValueError, match="no evaluation of --config.best_metric='miou'"):
    final_fit.fit(config, workdir)
  with open(os.path.join(workdir, workdir_lib.HISTORY_FILE), "w") as f:
    f.write(json.dumps({"epoch": 1, "step": 4, "eval_split": "test", "miou": 0.7}) + "\n")
  with pytest.raises(ValueError, match="on the 'test' split, not on validation"):
    final_fit.fit(config, workdir)


@pytest.mark.parametrize("overrides,expected", [
    ({"eval_split": "test"}, r"--config.final_fit.*--config.eval_split='test'"),
    ({"eval_split": "none"}, r"--config.final_fit.*--config.eval_split='none'"),
    ({"dataset.validation_fraction": 0.0}, r"--config.final_fit.*--config.dataset.validation_fraction=0"),
])
def test_final_fit_needs_a_validation_choice(phantom_data_dir, overrides, expected):
  with pytest.raises(ValueError, match=expected):
    train_lib.validate_config(tiny_config(phantom_data_dir, final_fit=True, **overrides))
  train_lib.validate_config(tiny_config(phantom_data_dir, final_fit=False, **overrides))


def _folder(root, splits):
  for split, count in splits.items():
    for sub in ("images", "masks"):
      os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    for i in range(count):
      Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(os.path.join(root, split, "images", f"{i}.png"))
      mask = np.zeros((32, 32), np.uint8)
      mask[8:16, 8:16] = 255
      Image.fromarray(mask).save(os.path.join(root, split, "masks", f"{i}.png"))
  return str(root)


def test_a_validation_split_of_its_own_is_refused_before_training(tmp_path, phantom_data_dir):
  own = tiny_config(phantom_data_dir, final_fit=True, **{
      "dataset.name": "folder", "dataset.root": _folder(tmp_path / "own", {"train": 4, "validation": 2, "test": 2})})
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"final_fit.*validation split of its own.*Move those examples into train"):
    final_fit.train_and_evaluate(own, str(workdir))
  assert not (workdir / checkpoint.LATEST_DIR).exists()  # refused before the run, not after it
  carved = own.copy_and_resolve_references()
  carved.dataset.root = _folder(tmp_path / "carved", {"train": 4, "test": 2})
  final_fit.check_data(carved)  # validation carved from train: it can go back
  final_fit.check_data(tiny_config(phantom_data_dir))


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_compare_adds_final_fits_to_finished_runs_and_tabulates_them(tmp_path, phantom_data_dir):
  config = tiny_config(phantom_data_dir, num_epochs=1)
  config.compare.models = "resnet34_unet"
  config.compare.timing_runs = 2
  workdir = str(tmp_path / "compare")
  run_dir = compare.run_workdir(workdir, "resnet34_unet", 0)
  plain = compare.train_or_resume(compare.run_config(config, "resnet34_unet", 0), run_dir)
  assert plain["status"] == "trained" and "final_metrics" not in plain
  assert not os.path.exists(final_fit.final_workdir(run_dir))

  config.final_fit = True  # switched on for the finished run: it adds the final fit, nothing retrains
  added = compare.train_or_resume(compare.run_config(config, "resnet34_unet", 0), run_dir)
  assert added["status"] == "trained" and added["final_epochs"] == 1
  assert json.dumps(added["metrics"], sort_keys=True) == json.dumps(plain["metrics"], sort_keys=True)
  with open(os.path.join(final_fit.final_workdir(run_dir), "eval", "test_metrics.json")) as f:
    final_metrics = json.load(f)
  assert added["final_metrics"]["dice"] == final_metrics["dice"]
  with open(os.path.join(run_dir, compare.RUN_MARKER)) as f:
    assert json.load(f)["final_epochs"] == 1

  result = compare.run_comparison(config, workdir)
  assert [r["status"] for r in result["runs"]] == ["skipped"]
  runs = _read_csv(os.path.join(workdir, "table1_runs.csv"))
  assert runs[0]["final_epochs"] == "1"
  assert float(runs[0]["final_dice"]) == pytest.approx(final_metrics["dice"])
  assert float(runs[0]["final_miou"]) == pytest.approx(final_metrics["miou"])
  assert [r["name"] for r in _read_csv(os.path.join(workdir, "table1.csv"))] == ["ResNet18-UNet"]
  markdown = open(os.path.join(workdir, "table1.md")).read()
  body = [line.split("|") for line in markdown.splitlines()
          if line.startswith("| ") and not line.startswith("| Model")]
  assert [cells[1].strip() for cells in body] == ["ResNet18-UNet", "ResNet18-UNet (final fit)"]
  assert body[1][4].strip() == f"{final_metrics['dice']:.3f}"  # Vein Dice: Model, Seeds, IoU, Dice
  assert body[0][4].strip() == f"{plain['metrics']['dice']:.3f}"
  assert "(final fit): each seed retrained" in markdown and "(ResNet18-UNet 1)" in markdown
  assert table1.final_rows(result["runs"], {}, ["resnet34_unet"], "resnet18")[0]["epochs"] == [1]
