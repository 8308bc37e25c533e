"""benchmarks/peer_accuracy (veinjax vs the PyTorch reference on the same data) and benchmarks/torch_training.

torch and segmentation-models-pytorch are optional: without them the tests that need them are skipped, and
the rest show that the command still imports, refuses clearly and tabulates. With them, the torch parts run
in a subprocess, because torchvision crashes Python when imported after TensorFlow (which the suite has
imported long before this file).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

from benchmarks import peer_accuracy
from benchmarks import torch_training
from conftest import ROOT, tiny_config

_HAS_TORCH = torch_training.peer_installed()
needs_torch = pytest.mark.skipif(not _HAS_TORCH, reason="torch / segmentation-models-pytorch not installed")


def _record(framework, seed, dice, iou, selected_dice=0.5, seconds=60.0):
  return {"framework": framework, "seed": seed, "status": "trained", "train_seconds": seconds,
          "metrics": {"dice": dice, "iou": iou, "acc": 0.97, "miou": 0.8, "hd95": 3.0},
          "selected": {"epoch": 4, "dice": selected_dice, "iou": selected_dice / 2}}


def test_welch_t_test_is_scipys_unequal_variance_test_and_none_when_undefined():
  a, b = [0.80, 0.82, 0.79], [0.70, 0.76, 0.71, 0.73]
  t, p = peer_accuracy.welch_t_test(a, b)
  expected = stats.ttest_ind(a, b, equal_var=False)
  assert (t, p) == pytest.approx((expected.statistic, expected.pvalue))
  assert t > 0 and p < 0.01
  assert peer_accuracy.welch_t_test([0.8], [0.7, 0.75]) is None
  assert peer_accuracy.welch_t_test([0.8, 0.8], [0.7, 0.7]) is None


def test_table_leads_with_foreground_iou_and_dice_and_tests_the_difference():
  records = [_record("veinjax", s, d, d - 0.15) for s, d in zip(range(3), (0.80, 0.82, 0.78))]
  records += [_record("pytorch", s, d, d - 0.15) for s, d in zip(range(3), (0.75, 0.74, 0.79))]
  md = peer_accuracy.table_markdown(records, "Vessel", "title", ["initialisation differs"])
  header = next(line for line in md.splitlines() if line.startswith("| Framework"))
  assert header.split(" | ")[2:4] == ["Vessel IoU", "Vessel Dice"]
  veinjax_row = next(line for line in md.splitlines() if line.startswith("| veinjax"))
  assert "0.800 ± 0.020" in veinjax_row  # Dice mean ± sample std of 0.80, 0.82, 0.78
  t, p = stats.ttest_ind([0.80, 0.82, 0.78], [0.75, 0.74, 0.79], equal_var=False)
  assert f"+{0.80 - 0.76:.4f} (Welch t = {t:.2f}, p = {p:.3f}" in md
  assert "- initialisation differs" in md


def test_final_fit_rows_are_paired_with_their_plain_runs_by_seed():
  records = [_record("veinjax", s, d, d - 0.15) for s, d in zip(range(3), (0.80, 0.82, 0.78))]
  records += [_record("veinjax final fit", s, d, d - 0.15) for s, d in zip(range(3), (0.83, 0.81, 0.80))]
  md = peer_accuracy.table_markdown(records, "Vessel", "title", [])
  assert "| veinjax final fit | 3 |" in md and "Welch" not in md  # no PyTorch runs: nothing to test against
  assert "veinjax final fit − veinjax, paired by seed: 0.0133 ± 0.0208 (seeds: +0.030, -0.010, +0.020)" in md


def test_bad_frameworks_seeds_and_models_are_clear_errors(tmp_path, phantom_data_dir):
  config = tiny_config(phantom_data_dir)
  with pytest.raises(ValueError, match="--frameworks=tensorflow"):
    peer_accuracy.run(config, str(tmp_path), 1, ["tensorflow"])
  with pytest.raises(ValueError, match="--variant='pytorch'"):
    peer_accuracy.run(config, str(tmp_path), 1, ["veinjax"], variant="pytorch")
  with pytest.raises(ValueError, match="--num_seeds=0"):
    peer_accuracy.run(config, str(tmp_path), 0, ["veinjax"])
  config.model = "deeplabv3plus"
  with pytest.raises(ValueError, match="--config.model='deeplabv3plus'"):
    torch_training.check_config(config)
  config.model, config.encoder_weights = "resnet34_unet", "weights.safetensors"
  with pytest.raises(ValueError, match="--config.encoder_weights"):
    torch_training.check_config(config)
  assert not os.listdir(tmp_path)  # nothing trained, nothing written


def test_missing_torch_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # as if not installed
  with pytest.raises(torch_training.MissingPeerError, match="pip install .*segmentation-models-pytorch"):
    torch_training.import_torch()
  assert torch_training.preload() is False


_IN_SUBPROCESS = textwrap.dedent("""
    import json, sys
    from benchmarks import torch_training
    assert torch_training.preload()  # torch before TensorFlow
    sys.path.insert(0, "tests")
    {body}
""")


def _run(body: str, timeout: int = 300) -> dict:
  """Runs `body` in a fresh interpreter (repository root, torch preloaded); returns its last JSON line."""
  script = _IN_SUBPROCESS.format(body=textwrap.indent(textwrap.dedent(body), "").strip())
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@needs_torch
def test_torch_losses_equal_veinjax_losses():
  """Every loss, one logit and three classes, with and without ignored pixels: the same value."""
  out = _run("""
      import numpy as np, torch
      from veinjax import losses
      rng = np.random.default_rng(0)
      worst = 0.0
      for num_classes in (1, 3):
        logits = rng.normal(0, 3, (2, 16, 16, num_classes)).astype(np.float32)
        labels = rng.integers(0, max(num_classes, 2), (2, 16, 16)).astype(np.int32)
        for ignore in (False, True):
          if ignore:
            labels[0, :5] = 255
          for name in losses.LOSS_NAMES:
            expected = float(losses.get_loss_fn(name, num_classes)(logits, labels, np.ones(2, np.float32)))
            got = float(torch_training.loss_fn(name, num_classes)(
                torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels).long()))
            worst = max(worst, abs(got - expected) / max(abs(expected), 1e-6))
      print(json.dumps({"worst_relative_error": worst}))
  """)
  assert out["worst_relative_error"] < 1e-5


@needs_torch
def test_both_frameworks_train_on_the_same_batches_and_a_second_call_skips(tmp_path, phantom_data_dir):
  workdir = str(tmp_path / "peer")
  out = _run(f"""
      from conftest import tiny_config
      from benchmarks import peer_accuracy
      config = tiny_config({phantom_data_dir!r}, num_epochs=2, final_fit=True)
      first = peer_accuracy.run(config, {workdir!r}, 1, ["veinjax", "pytorch"])
      second = peer_accuracy.run(config, {workdir!r}, 1, ["veinjax", "pytorch"])
      print(json.dumps({{"first": first["records"], "second": [r["status"] for r in second["records"]],
                        "markdown": second["markdown"]}}))
  """)
  records = {r["framework"]: r for r in out["first"]}
  assert set(records) == {"veinjax", "veinjax final fit", "pytorch"}
  assert out["second"] == ["skipped"] * 3
  # The final fit trained for the epoch count the veinjax run chose on validation.
  assert records["veinjax final fit"]["selected"]["epoch"] == records["veinjax"]["selected"]["epoch"]
  assert records["veinjax final fit"]["metrics"]["num_examples"] == 4
  assert "veinjax final fit − veinjax, paired by seed" in out["markdown"]
  for r in (records["veinjax"], records["pytorch"]):
    assert 0.0 <= r["metrics"]["dice"] <= 1.0 and r["metrics"]["num_examples"] == 4  # the 4 test images
    assert r["selected"]["epoch"] in (1, 2)
  # The same number of steps per epoch from the same pipeline; the state kept by the same rule.
  read = lambda f: [json.loads(line) for line in open(os.path.join(workdir, f, "seed_0", "history.jsonl"))]
  assert [h["step"] for h in read("pytorch")] == [h["step"] for h in read("veinjax")] == [4, 8]
  torch_history = read("pytorch")
  best = max(torch_history, key=lambda h: h["miou"])
  assert records["pytorch"]["selected"]["epoch"] == best["epoch"]
  with open(os.path.join(workdir, "pytorch", "seed_0", "result.json")) as f:
    assert json.load(f)["params"] == 14_321_937  # smp Unet("resnet18"), 1 channel, 1 class
  assert "| veinjax | 1 |" in out["markdown"] and "| pytorch | 1 |" in out["markdown"]
  assert np.isfinite(records["pytorch"]["metrics"]["iou"])
