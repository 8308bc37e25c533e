"""Every shipped config loads and validates, and the README's commands (train.py, eval.py) run end to end."""

import json
import pathlib
import subprocess
import sys

import ml_collections
import pytest

import veinjax
from veinjax import config_checks
from veinjax import models
from veinjax import steps
from veinjax import workdir

from conftest import ROOT, load_config

CONFIG_NAMES = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")


def test_version():
  assert veinjax.__version__.count(".") == 2


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_loads_and_validates(name):
  config = load_config(name)
  config_checks.validate_config(config)
  assert config.image_size % 32 == 0


def test_default_config_is_the_papers_recipe():
  config = load_config("default")
  assert (config.model, config.encoder, config.num_classes) == ("resnet34_unet", "resnet34", 1)
  assert config.image_size == 512 and config.in_channels == 1
  assert config.optimizer == "adam" and config.learning_rate == 1e-3 and config.lr_schedule == "constant"
  assert config.loss == "bce" and config.num_epochs == 10 and config.eval_every_epochs == 1
  assert config.best_metric == "miou" and config.eval_split == "validation"
  assert (config.dataset.name, config.dataset.phantom_num_train, config.dataset.phantom_num_test) == (
      "vein_phantom", 300, 200)


@pytest.mark.parametrize("name", ["resnet34_unet", "unet", "fcn8s", "deeplabv3plus"])
def test_model_configs_override_only_the_model(name):
  default, config = load_config("default").to_dict(), load_config(name).to_dict()
  changed = {k for k in default if default[k] != config[k]}
  assert config["model"] == name
  assert changed <= {"model", "encoder"}, changed


def test_unet_widths_reach_the_model_the_fingerprint_and_a_config_json():
  config = load_config("unet")
  assert tuple(config.unet_widths) == models.UNET_WIDTHS  # the original U-Net by default
  config.unet_widths = (8, 16)
  model = steps.create_model(config)
  assert tuple(model.widths) == (8, 16)
  assert steps.fingerprint(config)["unet_widths"] == [8, 16]  # a checkpoint of another U-Net is refused
  assert "unet_widths" not in steps.fingerprint(load_config("default"))  # only unet has them
  stored = workdir.config_json(config)  # what inference, export and init_from read back: lists
  assert steps.create_model(ml_collections.ConfigDict(stored)) == model
  del stored["unet_widths"]  # a config.json written before the field: the original U-Net
  assert tuple(steps.create_model(ml_collections.ConfigDict(stored)).widths) == models.UNET_WIDTHS


def test_bad_unet_widths_name_the_flag():
  config = load_config("unet")
  config.unet_widths = (8, 0)
  with pytest.raises(ValueError, match=r"unet_widths must be 1 to 6 positive integers.*--config.unet_widths"):
    config_checks.validate_config(config)


def _run(script, *args, cwd):
  result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_train_and_eval_mains_end_to_end(tmp_path, phantom_data_dir):
  """The quickstart command shrunk to a 32x32 phantom: train.py writes a run, eval.py prints one JSON line."""
  workdir = tmp_path / "run"
  tiny = ["--config.image_size=32", "--config.dataset.phantom_size=32", "--config.dataset.phantom_num_train=10",
          "--config.dataset.phantom_num_test=4", "--config.dataset.validation_fraction=0.2",
          f"--config.dataset.data_dir={phantom_data_dir}", "--config.encoder=resnet18", "--config.num_epochs=1",
          "--config.batch_size=2", "--config.eval_batch_size=4", "--config.parallelism=jit"]
  _run("train.py", f"--config={ROOT / 'configs' / 'quickstart.py'}", f"--workdir={workdir}", *tiny, cwd=ROOT)
  assert (workdir / "config.json").exists()
  history = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in history] == [1]

  result = _run("eval.py", f"--workdir={workdir}", "--split=test", cwd=tmp_path)
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  written = json.loads((workdir / "eval" / "test_metrics.json").read_text())
  for key in ("acc", "miou", "iou_per_class", "dice", "precision", "recall", "specificity", "hd95"):
    assert key in printed and key in written
  assert printed["acc"] == pytest.approx(written["acc"])
  assert len(printed["iou_per_class"]) == 2 and 0.0 <= printed["acc"] <= 1.0
