"""veinjax.checkpoint: latest N + best, exact round trips, clear errors, no non-finite writes, a full disk."""

import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import fill_disk_during_meta_writes
from veinjax import checkpoint
from veinjax import files

FINGERPRINT = {"model": "resnet34_unet", "encoder": "resnet18", "num_classes": 1, "in_channels": 1}


def _trees(seed=0, width=3):
  rng = np.random.default_rng(seed)
  params = {"conv": {"kernel": rng.normal(size=(3, 3, 1, width)).astype(np.float32)},
            "head": {"bias": rng.normal(size=(1,)).astype(np.float32)}}
  model = {"params": params, "batch_stats": {"bn": {"mean": rng.normal(size=(width,)).astype(np.float32)}}}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  opt_state = tx.init(jax.tree.map(jnp.asarray, params))
  # Make the optimizer state non-trivial so that a round trip is a real check.
  opt_state = jax.tree.map(lambda x: x + 0.5 if jnp.issubdtype(x.dtype, jnp.floating) else x + 7, opt_state)
  return model, {"opt_state": opt_state, "step": np.int32(seed)}


def _save(manager, step, miou, seed=None):
  model, opt = _trees(seed if seed is not None else step)
  meta = {"fingerprint": FINGERPRINT, "epoch": step, "step_in_epoch": 0}
  return manager.save(step, model, opt, meta, None if miou is None else {"miou": miou, "acc": 0.9,
                                                                          "iou_per_class": [0.99, miou]})


def test_latest_n_and_best_kept(tmp_path):
  manager = checkpoint.Checkpoints(str(tmp_path), keep=2, best_metric="miou")
  assert [_save(manager, s, m) for s, m in [(10, 0.5), (20, 0.8), (30, 0.6), (40, None)]] == [
      True, True, False, False]
  manager.wait()
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [30, 40]
  assert [d for d in os.listdir(tmp_path / "checkpoints_best") if d.isdigit()] == ["20"]
  assert manager.latest_step() == 40 and manager.best_step() == 20
  assert manager.best_value == pytest.approx(0.8)
  manager.close()
  # A new manager on the same workdir (a resumed run) knows the best so far and does not replace it by less.
  again = checkpoint.Checkpoints(str(tmp_path), keep=2, best_metric="miou")
  assert again.best_value == pytest.approx(0.8)
  assert not _save(again, 50, 0.7)
  assert _save(again, 60, 0.9)
  again.wait()
  assert again.best_step() == 60
  again.close()


def test_round_trip_is_exact(tmp_path):
  manager = checkpoint.Checkpoints(str(tmp_path), keep=1)
  _save(manager, 3, 0.5)
  manager.wait()
  model, opt = _trees(3)
  target_model, target_opt = _trees(99)  # same structure, other values
  got_model, got_opt, meta = manager.restore("latest", target_model, target_opt, FINGERPRINT)
  jax.tree.map(np.testing.assert_array_equal, got_model, model)
  jax.tree.map(np.testing.assert_array_equal, got_opt, jax.device_get(opt))
  # The optimizer state comes back with optax's own structure (named tuples), ready for apply_gradients.
  assert jax.tree.structure(got_opt["opt_state"]) == jax.tree.structure(target_opt["opt_state"])
  assert meta["step"] == 3 and meta["epoch"] == 3 and meta["metrics"]["miou"] == 0.5
  # Inference needs the model alone.
  only_model, no_opt, _ = manager.restore("best", target_model, None, {"model": "resnet34_unet"})
  assert no_opt is None
  jax.tree.map(np.testing.assert_array_equal, only_model, model)
  manager.close()


def test_restore_from_path(tmp_path):
  manager = checkpoint.Checkpoints(str(tmp_path), keep=3)
  _save(manager, 1, 0.1)
  _save(manager, 2, 0.2)
  manager.wait()
  manager.close()
  target, _ = _trees(0)
  _, _, meta = checkpoint.restore_path(str(tmp_path / "checkpoints" / "1"), target, FINGERPRINT)
  assert meta["step"] == 1
  _, _, meta = checkpoint.restore_path(str(tmp_path / "checkpoints"), target, FINGERPRINT)
  assert meta["step"] == 2  # a manager directory means its newest checkpoint
  with pytest.raises(FileNotFoundError, match="neither a veinjax checkpoint"):
    checkpoint.restore_path(str(tmp_path), target, FINGERPRINT)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpoint.restore_path(str(tmp_path / "nope"), target, FINGERPRINT)


def test_mismatch_errors_name_the_difference(tmp_path):
  manager = checkpoint.Checkpoints(str(tmp_path), keep=1)
  _save(manager, 1, 0.5)
  manager.wait()
  model, opt = _trees(0)
  other = dict(FINGERPRINT, model="deeplabv3plus")
  with pytest.raises(checkpoint.CheckpointMismatchError, match="model: checkpoint 'resnet34_unet', config "
                     "'deeplabv3plus'"):
    manager.restore("latest", model, opt, other)
  wider, _ = _trees(0, width=5)  # same fingerprint, other shapes: still a clear message, not a crash
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"params/conv/kernel \[3, 3, 1, 3\] vs "
                     r"\[3, 3, 1, 5\]"):
    manager.restore("latest", wider, None, FINGERPRINT)
  plain_adam = {"opt_state": optax.adam(1e-3).init(jax.tree.map(jnp.asarray, model["params"])), "step": 0}
  with pytest.raises(checkpoint.CheckpointMismatchError, match="optimizer state does not fit"):
    manager.restore("latest", model, plain_adam, FINGERPRINT)
  manager.close()


def test_non_finite_state_is_never_written(tmp_path):
  manager = checkpoint.Checkpoints(str(tmp_path), keep=2)
  _save(manager, 1, 0.5)
  model, opt = _trees(2)
  model["params"]["head"]["bias"][0] = np.nan
  with pytest.raises(FloatingPointError, match="step 2: params/head/bias holds NaN"):
    manager.save(2, model, opt, {"fingerprint": FINGERPRINT}, {"miou": 0.99})
  manager.wait()
  assert manager.latest_step() == 1 and manager.best_step() == 1 and manager.best_value == 0.5
  manager.close()


def test_unknown_best_metric_lists_choices(tmp_path):
  manager = checkpoint.Checkpoints(str(tmp_path), keep=1, best_metric="mIoU")
  with pytest.raises(KeyError, match="acc, miou"):
    _save(manager, 1, 0.5)
  manager.close()


_ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# TensorStore, which writes orbax's arrays, reports a full disk as a ValueError in its own words.
_TENSORSTORE_FULL = ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database: Failed to '
                               'write 18142 bytes to file 21: No space left on device')


@pytest.mark.parametrize("managers,error,latest,best", [
    (("checkpoints", "checkpoints_best"), _ENOSPC, 1, 1),
    (("checkpoints",), _TENSORSTORE_FULL, 1, 2),  # the best of step 2 was written before the disk filled
    # Only the best of step 2 failed: its latest is dropped too, so a resume redoes step 2's evaluation.
    (("checkpoints_best",), OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), 1, 1),
])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, managers, error, latest,
                                                               best):
  manager = checkpoint.Checkpoints(str(tmp_path), keep=2)
  _save(manager, 1, 0.5)
  manager.wait()
  fill_disk_during_meta_writes(monkeypatch, managers, 2, error)
  with pytest.raises(files.DiskFullError) as info:
    _save(manager, 2, 0.6)  # better: both the latest and the best are written
    manager.wait()  # (the write is in the background: its failure surfaces here)
  message = str(info.value)
  full = "the disk quota is exceeded" if getattr(error, "errno", None) == errno.EDQUOT else "the disk is full"
  failed = "checkpoints_best" if managers == ("checkpoints_best",) else "checkpoints"
  assert message.startswith(f"Could not write {tmp_path / failed / '2'}: {full}"), message
  assert f"the latest is step 1 ({tmp_path / 'checkpoints' / '1'}), the best step {best} " in message
  assert "Training resumes from step 1 when run again" in message and "df -h" in message
  manager.wait()  # reported once: neither a second wait nor close raises it again
  manager.close()
  monkeypatch.undo()  # space again
  # A resumed run's manager: the earlier checkpoint restores intact, the partial one is gone.
  again = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert (again.latest_step(), again.best_step()) == (latest, best)
  target_model, target_opt = _trees(99)
  model, opt, meta = again.restore("latest", target_model, target_opt, FINGERPRINT)
  saved_model, saved_opt = _trees(1)
  jax.tree.map(np.testing.assert_array_equal, model, saved_model)
  jax.tree.map(np.testing.assert_array_equal, opt, jax.device_get(saved_opt))
  assert meta["step"] == 1 and meta["metrics"]["miou"] == 0.5
  _save(again, 2, 0.6)
  again.wait()
  assert (again.latest_step(), again.best_step(), again.best_value) == (2, 2, 0.6)
  again.close()
  for name in ("checkpoints", "checkpoints_best"):
    assert not [d for d in os.listdir(tmp_path / name) if "tmp" in d], os.listdir(tmp_path / name)


def test_other_write_errors_are_raised_as_they_are(tmp_path, monkeypatch):
  manager = checkpoint.Checkpoints(str(tmp_path), keep=2)
  _save(manager, 1, 0.5)
  manager.wait()
  fill_disk_during_meta_writes(monkeypatch, ("checkpoints",), 2, PermissionError(errno.EACCES, "Permission denied"))
  with pytest.raises(PermissionError):
    _save(manager, 2, None)
    manager.wait()
  manager.close()
