"""benchmarks/inference_study.py: the inference options' table, on the runs' own dataset or another one."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from benchmarks import inference_study
from veinjax import evaluation
from veinjax import workdir as workdir_lib


def test_dataset_config_scores_the_other_datasets_frames(trained, tmp_path):
  """--dataset_config (zero-shot): the table is of the other dataset's split, and its plain row ("none") is
  the Dice that eval.py --dataset_config reports for the same run (frames at the model's size here)."""
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.dataset.name = "vein_phantom_random"  # the randomised phantom: frames the run never saw
  other.dataset.phantom_num_test = 6
  other.dataset.data_dir = str(tmp_path)
  markdown = inference_study.study([workdir], "test", 0, dataset_config=other)
  assert "on vein_phantom_random test (6 frames at their own size), 1 seeds trained on vein_phantom" in markdown
  (plain,) = re.findall(r"^\| none \| ([0-9.]+)", markdown, re.MULTILINE)
  expected = evaluation.evaluate(evaluation.with_dataset_of(config, other), workdir, split="test",
                                 output_prefix="vein_phantom_random_")
  assert expected["num_examples"] == 6
  assert float(plain) == pytest.approx(expected["dice"], abs=1.5e-3)  # the table prints 3 digits


def test_dataset_config_with_another_class_count_is_refused(trained):
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.num_classes = 3
  with pytest.raises(ValueError, match=r"--dataset_config: its num_classes=3 differs from the run's 1"):
    inference_study.study([workdir], "test", 0, dataset_config=other)


def test_each_run_is_scored_on_its_own_carved_split(trained, tmp_path):
  """Two seeds of one recipe carve different validation frames: each run is scored on its own (never on
  frames that another seed trained on), and their ensemble is not scored there; on the shared test split it
  is. The second "seed" is the same run with another seed in its config.json, so only the carve differs."""
  config, workdir, _ = trained
  other_seed = str(tmp_path / "seed_1")
  shutil.copytree(workdir, other_seed)
  recorded = workdir_lib.load_config(other_seed)
  recorded.seed = int(config.seed) + 1
  with open(os.path.join(other_seed, workdir_lib.CONFIG_FILE), "w") as f:
    f.write(recorded.to_json())
  own = [evaluation.evaluate(workdir_lib.load_config(w), w, split="validation", output_prefix="study_")["dice"]
         for w in (workdir, other_seed)]
  assert own[0] != own[1]  # different frames

  markdown = inference_study.study([workdir, other_seed], "validation", 0)
  (plain,) = re.findall(r"^\| none \| ([0-9.]+)", markdown, re.MULTILINE)
  assert float(plain) == pytest.approx(sum(own) / 2, abs=1.5e-3)
  assert "Ensemble not scored: the runs' validation splits hold different frames" in markdown
  assert "Ensemble of the 2 seeds" in inference_study.study([workdir, other_seed], "test", 0)


def test_program_names_a_bad_dataset_config(trained):
  """Run as a program (its flags exist only then): a --dataset_config that does not load is one clear error."""
  _, workdir, _ = trained
  result = subprocess.run([sys.executable, "-m", "benchmarks.inference_study", f"--workdirs={workdir}",
                           "--dataset_config=configs/no_such_config.py"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
  assert result.returncode != 0
  assert "--dataset_config: the config file does not load" in result.stderr, result.stderr[-2000:]
