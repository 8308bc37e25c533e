"""The paper-reproduction runner end to end on a tiny phantom: tables, figures, and resume on a rerun."""

import csv
import json
import os

import pytest
from PIL import Image

from conftest import tiny_config
from veinjax import timing
from veinjax import workdir as workdir_lib
from veinjax.experiments import compare
from veinjax.experiments import table1
from veinjax.experiments import tables

# The two models that take a small encoder (ResNet18): the fastest pair to train on a CPU.
_MODELS = ("resnet34_unet", "deeplabv3plus")


def _tiny_config(data_dir):
  """conftest's 32x32 phantom recipe for one epoch, compared on two models, with a short timing loop."""
  config = tiny_config(data_dir, num_epochs=1)
  config.compare.models = ",".join(_MODELS)
  config.compare.timing_runs = 2
  return config


def _read_csv(workdir, name):
  with open(os.path.join(workdir, name), newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, phantom_data_dir):
  """Runs the comparison twice on the same workdir; returns both results and the file mtimes between."""
  config = _tiny_config(phantom_data_dir)
  workdir = str(tmp_path_factory.mktemp("compare") / "runs")
  first = compare.run_comparison(config, workdir)
  run_files = {}
  for model in _MODELS:
    run_dir = compare.run_workdir(workdir, model, 0)
    for root, _, files in os.walk(run_dir):
      for name in files:
        path = os.path.join(root, name)
        run_files[path] = os.stat(path).st_mtime_ns
  second = compare.run_comparison(config, workdir)
  return {"config": config, "workdir": workdir, "first": first, "second": second, "run_files": run_files}


def test_first_run_trains_every_model_and_seed(comparison):
  runs = comparison["first"]["runs"]
  assert [(r["model"], r["status"]) for r in runs] == [(m, "trained") for m in _MODELS]
  for run in runs:
    assert os.path.exists(os.path.join(compare.run_workdir(comparison["workdir"], run["model"], 0),
                                       compare.RUN_MARKER))
    assert 0.0 <= run["metrics"]["iou"] <= 1.0 and 0.0 <= run["metrics"]["acc"] <= 1.0


def test_second_run_skips_finished_runs_and_touches_no_run_file(comparison):
  assert [r["status"] for r in comparison["second"]["runs"]] == ["skipped"] * len(_MODELS)
  first, second = comparison["first"]["runs"], comparison["second"]["runs"]
  # Compared as JSON text: a NaN (e.g. HD95 of an empty prediction) is not equal to itself as a float.
  assert [json.dumps(r["metrics"], sort_keys=True) for r in second] == [
      json.dumps(r["metrics"], sort_keys=True) for r in first]
  for path, mtime in comparison["run_files"].items():
    assert os.path.exists(path), path
    assert os.stat(path).st_mtime_ns == mtime, f"{path} was rewritten by the second run"


def test_table_has_one_row_per_model_with_the_papers_columns(comparison):
  workdir = comparison["workdir"]
  rows = _read_csv(workdir, "table1.csv")
  assert [r["model"] for r in rows] == list(_MODELS)
  for row in rows:
    for column in ("iou_mean", "dice_mean", "acc_mean", "miou_mean", "params", "gflops_512",
                   "inference_ms"):
      assert float(row[column]) >= 0.0, (column, row)
    assert 0.0 <= float(row["iou_mean"]) <= 1.0
    assert int(row["params"]) > 1_000_000  # a ResNet18 encoder alone has ~11M
    assert float(row["gflops_512"]) > 0.1
    assert row["device"]
  paper = {r["model"]: r for r in rows}
  assert float(paper["resnet34_unet"]["paper_acc"]) == 0.963
  assert float(paper["deeplabv3plus"]["paper_miou"]) == 0.867

  markdown = open(os.path.join(workdir, "table1.md")).read()
  header = next(line for line in markdown.splitlines() if line.startswith("| Model"))
  titles = [c.strip() for c in header.strip("|").split("|")]
  assert titles[:4] == ["Model", "Seeds", "Vein IoU", "Vein Dice"]  # leads with the phantom's vein IoU, Dice
  for expected in ("ACC", "mIoU", "HD95 (px)", "Params (M)", "GFLOPs (512x512)"):
    assert expected in titles
  assert any(t.startswith("ms / frame") for t in titles)
  body = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| Model")]
  assert [line.split("|")[1].strip() for line in body] == ["ResNet18-UNet", "DeepLab v3+ (ResNet18)"]
  assert timing.device_description() in markdown


def test_runs_table_holds_the_validation_figures_that_chose_each_checkpoint(comparison):
  workdir = comparison["workdir"]
  runs = _read_csv(workdir, "table1_runs.csv")
  assert [r["model"] for r in runs] == list(_MODELS)
  for run in runs:
    history = workdir_lib.read_history(compare.run_workdir(workdir, run["model"], 0))
    assert history and history[-1]["eval_split"] == "validation"
    assert float(run["selected_miou"]) == pytest.approx(max(r["miou"] for r in history))
    assert int(run["selected_epoch"]) in [r["epoch"] for r in history]
    assert 0.0 <= float(run["selected_dice"]) <= 1.0


def test_report_only_tabulates_finished_runs_and_trains_nothing(comparison, tmp_path):
  config = comparison["config"]
  with config.unlocked():
    config = config.copy_and_resolve_references()
  config.compare.num_seeds = 2  # seed 1 was never trained
  config.compare.report_only = True
  workdir = comparison["workdir"]
  result = compare.run_comparison(config, workdir)
  assert [(r["model"], r["seed_index"], r["status"]) for r in result["runs"]] == [
      (m, 0, "skipped") for m in _MODELS]
  assert not os.path.exists(compare.run_workdir(workdir, _MODELS[0], 1))
  assert [row["num_seeds"] for row in result["rows"]] == [1, 1]
  with pytest.raises(ValueError, match="no finished run.*report_only"):
    compare.run_comparison(config, str(tmp_path / "empty"))


def test_selection_metrics_take_the_first_best_evaluation(tmp_path):
  history = [{"epoch": 1, "eval_split": "validation", "miou": 0.6, "iou": 0.3, "dice": 0.4},
             {"epoch": 2, "eval_split": "validation", "miou": 0.8, "iou": 0.6, "dice": 0.7},
             {"epoch": 3, "eval_split": "validation", "miou": 0.8, "iou": 0.5, "dice": 0.9},  # a tie: not kept
             {"epoch": 4, "eval_split": "validation", "miou": 0.7, "iou": 0.9, "dice": 0.95}]
  with open(tmp_path / workdir_lib.HISTORY_FILE, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in history)
  selected = table1.selection_metrics(str(tmp_path), "miou")
  assert (selected["epoch"], selected["iou"], selected["dice"]) == (2, 0.6, 0.7)
  assert table1.selection_metrics(str(tmp_path), "dice")["epoch"] == 4
  assert table1.selection_metrics(str(tmp_path / "no_run"), "miou") == {}


def test_figures_are_valid_pngs(comparison):
  workdir = comparison["workdir"]
  for name in [f"fig3_{m}.png" for m in _MODELS] + ["fig5.png"]:
    path = os.path.join(workdir, name)
    with Image.open(path) as image:
      assert image.format == "PNG"
      assert image.width >= 300 and image.height >= 200, (name, image.size)
      # Not a blank canvas: a plot has more than a handful of colours.
      assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 10


def test_changed_config_on_a_finished_run_is_an_error(comparison):
  config = comparison["config"].copy_and_resolve_references()
  config.learning_rate = 0.5
  with pytest.raises(ValueError, match="learning_rate"):
    compare.run_comparison(config, comparison["workdir"])


def test_interrupted_run_resumes_only_into_the_same_config(comparison):
  """A run without its marker is an interrupted one: its config.json must match before it may resume."""
  config = comparison["config"]
  run_dir = compare.run_workdir(comparison["workdir"], _MODELS[0], 0)
  wanted = compare.run_config(config, _MODELS[0], 0)
  with open(os.path.join(run_dir, "config.json")) as f:
    compare._check_same_config(json.load(f), compare._config_json(wanted), run_dir, "an interrupted")

  changed = config.copy_and_resolve_references()
  changed.num_epochs = 2
  marker = os.path.join(run_dir, compare.RUN_MARKER)
  os.rename(marker, marker + ".away")
  try:
    with pytest.raises(ValueError, match="interrupted run with a different config.*num_epochs"):
      compare.train_or_resume(compare.run_config(changed, _MODELS[0], 0), run_dir)
  finally:
    os.rename(marker + ".away", marker)


def test_unknown_model_is_a_clear_error(tmp_path, phantom_data_dir):
  config = _tiny_config(phantom_data_dir)
  config.compare.models = "resnet34_unet,segformer"
  with pytest.raises(ValueError, match="segformer"):
    compare.run_comparison(config, str(tmp_path / "runs"))


def test_display_names_follow_the_encoder():
  assert tables.display_name("resnet34_unet", "resnet34") == "ResNet34-UNet"
  assert tables.display_name("resnet34_unet", "resnet50") == "ResNet50-UNet"
  assert tables.display_name("fcn8s", "resnet18") == "FCN-8s"  # fcn8s has its own VGG16 encoder


def test_several_seeds_give_mean_and_sample_std(phantom_data_dir):
  """Table rows from hand-made run records: no training needed to check the aggregation."""
  records = [{"model": "resnet34_unet", "seed": s, "train_seconds": 60.0,
              "metrics": {"iou": iou, "dice": 0.9, "acc": 0.99, "miou": 0.8, "hd95": float("nan")}}
             for s, iou in enumerate((0.70, 0.80, 0.90))]
  records.append({"model": "unet", "seed": 0, "train_seconds": 30.0,
                  "metrics": {"iou": 0.5, "dice": 0.6, "acc": 0.9, "miou": 0.7, "hd95": 3.0}})
  profiles = {"resnet34_unet": {"params": 24_000_000, "gflops": 80.0, "inference_ms": 5.0}}
  rows = table1.table_rows(records, profiles, ["resnet34_unet", "unet"], "resnet34")
  first, unet = rows
  assert first["num_seeds"] == 3
  assert first["iou_mean"] == pytest.approx(0.80)
  assert first["iou_std"] == pytest.approx(0.10)  # sample std (ddof=1) of 0.7, 0.8, 0.9
  assert first["hd95_mean"] is None  # no image had the structure in any seed: no number, not NaN
  assert (first["paper_acc"], first["paper_miou"]) == (0.963, 0.873)
  assert (unet["paper_acc"], unet["paper_miou"], unet["params"]) == (None, None, None)

  config = _tiny_config(phantom_data_dir)
  markdown = table1.table_markdown(rows, config, "test device", timing_runs=5)
  line = next(l for l in markdown.splitlines() if l.startswith("| ResNet34-UNet"))
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert cells[1:3] == ["3", "0.800 ± 0.100"] and cells[7] == "24.00"  # seeds, vein IoU; params in millions
  assert cells[10] == "1.0"  # training minutes per seed
  assert "1-3 seeds per model" in markdown and "test device" in markdown
  assert "U-Net 0" in markdown  # rows with different seeds say which seeds each used
  assert next(l for l in markdown.splitlines() if l.startswith("| U-Net")).count("—") >= 4
