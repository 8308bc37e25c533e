"""The phantom ablation runner end to end on tiny data: arms train, are measured zero-shot, resume, tabulate."""

import os

import pytest

from benchmarks import phantom_ablation
from conftest import override
from conftest import tiny_config

_ARMS = ("all", "gain+speckle")


def _configs(data_dir):
  """A one-epoch run on a 32x32 randomised phantom; the classic phantom stands in for the real data."""
  config = tiny_config(data_dir, num_epochs=1)
  config.dataset.name = "vein_phantom_random"
  config.dataset.phantom_foreground = "vessel"
  config.dataset.phantom_random_off = ""
  real = tiny_config(data_dir)  # vein_phantom: 10 train (2 of them validation) / 4 test
  return config, real


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, phantom_data_dir):
  config, real = _configs(phantom_data_dir)
  workdir = str(tmp_path_factory.mktemp("ablation"))
  first = phantom_ablation.run_ablation(config, real, workdir, _ARMS, num_seeds=1)
  marker = os.path.join(workdir, "all", "seed_0", phantom_ablation.ZERO_SHOT_FILE)
  mtime = os.stat(marker).st_mtime_ns
  second = phantom_ablation.run_ablation(config, real, workdir, _ARMS, num_seeds=1)
  return {"workdir": workdir, "first": first, "second": second, "mtime": mtime, "marker": marker}


def test_each_arm_trains_on_its_own_phantom_and_is_measured_on_the_real_splits(ablation, phantom_data_dir):
  first = ablation["first"]
  assert [(r["arm"], r["seed"]) for r in first] == [("all", 0), ("gain+speckle", 0)]
  for record in first:
    assert record["real"]["validation"]["num_examples"] == 2  # the real config's carve
    assert record["real"]["non_test"]["num_examples"] == 10  # its whole train split, validation included
    for split in phantom_ablation.REAL_SPLITS:
      assert 0.0 <= record["real"][split]["dice"] <= 1.0
  # The ablated arm trained on the phantom with those groups off (another TFDS config).
  stored = os.listdir(os.path.join(phantom_data_dir, "vein_phantom_random"))
  assert "vessel_32px_10_4" in stored and "vessel_32px_10_4_off_gain_speckle" in stored


def test_a_second_call_reuses_finished_runs_and_their_figures(ablation):
  assert ablation["second"] == ablation["first"]
  assert os.stat(ablation["marker"]).st_mtime_ns == ablation["mtime"]


def test_the_table_pairs_each_arm_with_all(ablation):
  with open(os.path.join(ablation["workdir"], "phantom_ablation.md")) as f:
    markdown = f.read()
  all_row, ablated_row = [line for line in markdown.splitlines() if line.startswith("| all") or
                          line.startswith("| gain, speckle")]
  assert all_row.count("—") == 2  # no difference of "all" to itself
  cells = [c.strip() for c in ablated_row.strip("|").split("|")]
  first = {r["arm"]: r for r in ablation["first"]}
  difference = first["gain+speckle"]["real"]["validation"]["dice"] - first["all"]["real"]["validation"]["dice"]
  assert cells[4] == f"{difference:+.3f}"
  with open(os.path.join(ablation["workdir"], "phantom_ablation_runs.csv")) as f:
    assert len(f.read().splitlines()) == 3


@pytest.mark.parametrize("arms, fields, match", [
    (("all", "gain+shadows"), {}, "--arms.*shadows"),
    (("gain",), {}, "must include 'all'"),
    (("all", "gain+speckle", "speckle+gain"), {}, "--arms: gain\\+speckle given twice"),
    (_ARMS, {"config.dataset.name": "vein_phantom"}, "dataset.name='vein_phantom'.*phantom_pretrain"),
    (_ARMS, {"config.dataset.phantom_random_off": "overlays"}, "phantom_random_off='overlays'.*--arms"),
    (_ARMS, {"real.dataset.validation_fraction": 0.0}, "--real_config: its validation frames"),
])
def test_bad_arms_or_configs_fail_before_any_training(tmp_path, phantom_data_dir, arms, fields, match):
  config, real = _configs(phantom_data_dir)
  for key, value in fields.items():
    which, _, field = key.partition(".")
    override(config if which == "config" else real, **{field: value})
  with pytest.raises(ValueError, match=match):
    phantom_ablation.run_ablation(config, real, str(tmp_path / "runs"), arms, num_seeds=1)
  assert not os.path.exists(tmp_path / "runs")
