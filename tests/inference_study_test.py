"""benchmarks/inference_study.py: the inference options' table, on the runs' own dataset or another one."""

import re

import pytest

from benchmarks import inference_study
from veinjax import evaluation


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
