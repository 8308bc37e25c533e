"""Recipe comparison: the kept recipe is chosen on validation, paired by seed, and incomparable runs are refused."""

import csv
import json
import os

import pytest

from conftest import override
from veinjax.experiments import recipes

_RUN_FIELDS = ["model", "seed", "iou", "dice", "train_seconds", "selected_epoch", "selected_iou",
               "selected_dice", "selected_miou"]


def _config(**overrides):
  """A compare_config.json as compare writes it (nested, with its `compare` block)."""
  config = {"seed": 0, "model": "resnet34_unet", "encoder": "resnet34", "num_classes": 1,
            "dataset": {"name": "vein_phantom", "root": "", "data_dir": "", "validation_fraction": 0.1},
            "loss": "bce", "num_epochs": 10, "eval_split": "validation", "best_metric": "miou",
            "augment": {"gamma": 0.0, "scale_range": [0.9, 1.1]},
            "compare": {"models": "resnet34_unet", "num_seeds": 3}}
  return override(config, **overrides)  # dotted fields, e.g. **{"dataset.name": "usgra_seg"}


def _workdir(root, name, config, runs):
  """Writes a compare workdir's compare_config.json and table1_runs.csv; runs = [(seed, val_dice, test_dice)]."""
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "compare_config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(workdir, "table1_runs.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=_RUN_FIELDS)
    writer.writeheader()
    for seed, val_dice, test_dice in runs:
      writer.writerow({"model": "resnet34_unet", "seed": seed, "iou": test_dice / 2, "dice": test_dice,
                       "train_seconds": 120.0, "selected_epoch": 5, "selected_iou": val_dice / 2,
                       "selected_dice": val_dice, "selected_miou": 0.5 + val_dice / 4})
      # Another model in the same workdir must not leak into the resnet34_unet rows.
      writer.writerow({"model": "fcn8s", "seed": seed, "iou": 0.9, "dice": 0.99, "train_seconds": 1.0,
                       "selected_epoch": 1, "selected_iou": 0.9, "selected_dice": 0.99, "selected_miou": 0.9})
  return workdir


@pytest.fixture
def three_recipes(tmp_path):
  """reference; `longer` (best on validation, worse on test); `dice_loss` (best on test, worse on validation)."""
  root = str(tmp_path)
  return [
      _workdir(root, "reference", _config(), [(0, 0.50, 0.50), (1, 0.60, 0.60), (2, 0.40, 0.40)]),
      _workdir(root, "longer", _config(num_epochs=40, **{"augment.scale_range": [0.8, 1.25]}),
               [(0, 0.62, 0.55), (1, 0.70, 0.61), (2, 0.55, 0.45)]),
      # Same recipe data but stored at another dataset location: locations are allowed to differ.
      _workdir(root, "dice_loss", _config(loss="dice", **{"dataset.root": "/elsewhere"}),
               [(0, 0.58, 0.90), (1, 0.66, 0.90), (2, 0.50, 0.90)]),
  ]


def test_keeps_the_highest_validation_recipe_not_the_highest_test(three_recipes, tmp_path):
  result = recipes.compare_recipes(three_recipes, "resnet34_unet", "dice", out_dir=str(tmp_path / "out"))
  rows = {r["recipe"]: r for r in result["rows"]}
  assert [r["recipe"] for r in result["rows"] if r["kept"]] == ["longer"]
  assert rows["dice_loss"]["test_dice_mean"] > rows["longer"]["test_dice_mean"]  # test never chooses
  assert rows["longer"]["val_dice_mean"] == pytest.approx((0.62 + 0.70 + 0.55) / 3)
  assert rows["longer"]["num_seeds"] == 3  # the fcn8s rows of the same CSV are not counted
  assert "**longer** (kept)" in result["markdown"]
  with open(result["files"]["recipes.csv"], newline="") as f:
    csv_rows = list(csv.DictReader(f))
  assert [r["kept"] for r in csv_rows] == ["False", "True", "False"]


def test_paired_difference_is_per_seed(three_recipes):
  rows = recipes.compare_recipes(three_recipes, "resnet34_unet", "dice")["rows"]
  longer = rows[1]
  deltas = [0.12, 0.10, 0.15]  # 0.62-0.50, 0.70-0.60, 0.55-0.40
  assert longer["paired_seeds"] == 3
  assert longer["paired_delta_mean"] == pytest.approx(sum(deltas) / 3)
  # Smaller than either recipe's own spread over seeds: the seed-to-seed variation cancels in the pairs.
  assert longer["paired_delta_std"] < longer["val_dice_std"]
  assert rows[0]["paired_delta_mean"] is None


def test_differences_name_the_recipe_fields_only(three_recipes):
  rows = recipes.compare_recipes(three_recipes, "resnet34_unet", "dice")["rows"]
  assert rows[0]["differences"] == []
  assert rows[1]["differences"] == ["augment.scale_range=(0.8, 1.25)", "num_epochs=40"]
  # dataset.root differs too but is a location, and the compare block is the runner's, not the recipe's.
  assert rows[2]["differences"] == ["dataset.root=/elsewhere", "loss=dice"]


def test_choosing_by_another_metric(three_recipes):
  rows = recipes.compare_recipes(three_recipes, "resnet34_unet", "miou")["rows"]
  assert [r["recipe"] for r in rows if r["kept"]] == ["longer"]
  with pytest.raises(ValueError, match="--metric='hd95'"):
    recipes.compare_recipes(three_recipes, "resnet34_unet", "hd95")


@pytest.mark.parametrize("field, value", [("dataset.name", "usgra_seg"), ("seed", 7), ("num_classes", 2)])
def test_refuses_recipes_with_other_validation_data(tmp_path, three_recipes, field, value):
  other = _workdir(str(tmp_path), "other", _config(**{field: value}), [(7, 0.9, 0.9)])
  with pytest.raises(ValueError, match=f"{other} differs .* {field}="):
    recipes.compare_recipes([three_recipes[0], other], "resnet34_unet")


def test_refuses_checkpoints_chosen_on_test(tmp_path):
  root = str(tmp_path)
  on_test = _workdir(root, "on_test", _config(eval_split="test"), [(0, 0.5, 0.5)])
  other = _workdir(root, "other", _config(eval_split="test", loss="dice"), [(0, 0.6, 0.6)])
  with pytest.raises(ValueError, match="leaks the test set"):
    recipes.compare_recipes([on_test, other], "resnet34_unet")


def test_bad_workdirs_are_named(tmp_path, three_recipes):
  missing = str(tmp_path / "not_a_compare_dir")
  os.makedirs(missing)
  with pytest.raises(ValueError, match="not_a_compare_dir/table1_runs.csv does not exist"):
    recipes.compare_recipes([three_recipes[0], missing], "resnet34_unet")
  with pytest.raises(ValueError, match="holds no finished unet run .*fcn8s, resnet34_unet"):
    recipes.compare_recipes(three_recipes, "unet")
  with pytest.raises(ValueError, match="at least two"):
    recipes.compare_recipes(three_recipes[:1], "resnet34_unet")
  with pytest.raises(ValueError, match="twice"):
    recipes.compare_recipes([three_recipes[0], three_recipes[0] + "/"], "resnet34_unet")
