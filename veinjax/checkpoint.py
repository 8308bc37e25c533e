"""Orbax checkpoints of a training run: the latest N, the best by a metric, resume, and clear mismatch errors.

Layout inside a workdir:

  DIR/checkpoints/<step>/{model,opt,meta}       the latest `config.keep_checkpoints` checkpoints (resume)
  DIR/checkpoints_best/<step>/{model,opt,meta}  the one checkpoint with the best `config.best_metric`

Each checkpoint holds three orbax items:

- `model`: {'params', 'batch_stats'}: all that inference needs, restorable on its own (with
  `config.ema_decay` > 0 the weight average: `veinjax.steps.split_state`).
- `opt`: {'opt_state', 'step'}: what resuming training needs besides the model (with a weight average also
  'train_variables', the trained {'params', 'batch_stats'}).
- `meta`: JSON: global step, data-iterator position (epoch, step in epoch, steps per epoch), the running
  training statistics of a partly done epoch, the evaluation metrics, and the fingerprint (model, encoder,
  classes, channels) plus every parameter shape. Before any array is read, the fingerprint and the
  shapes are compared with what the caller expects, so a checkpoint of another model or config fails with an
  error naming the difference instead of a shape crash deep inside orbax. The optimizer is not in the
  fingerprint: restoring `opt` into another optimizer's state structure fails with an error naming the
  optimizer fields.

Arrays are saved as host numpy arrays (the caller passes one unreplicated copy of the state): orbax writes
replicated numpy arrays from the primary process only, and every process restores them from the shared
directory, so saving and restoring are safe on many hosts (every process must call `save` and `restore`; the
managers synchronise them). A state with a non-finite value is never written (`FloatingPointError`), so a
diverged run can overwrite neither the latest nor the best checkpoint.

A full disk (or quota) while writing is `files.DiskFullError`, raised by `save` or `wait` (orbax writes in
the background, so a failed write surfaces at the next of them), naming the step and the checkpoints kept.
Orbax writes each checkpoint into `<step>.orbax-checkpoint-tmp` and renames it when complete, so the earlier
checkpoints stay intact and restorable. The partial directory is left while orbax's other writes may still
be running; `Checkpoints` removes such leftovers when it opens a workdir (a resumed run: orbax's
`cleanup_tmp_directories`), as it does those of a killed run.
When only the best checkpoint of a step failed, that step's latest checkpoint is removed too, so a resumed
run redoes the step's evaluation and best decision (as after a crash between the two writes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from veinjax import files
from veinjax.workdir import to_jsonable

LATEST_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
CHECKPOINT_CHOICES = ("best", "latest")
_ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax's suffix of a checkpoint directory still being written

PyTree = Any


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by another model or config than the one restoring it."""


def _path_str(path) -> str:
  """'params/encoder/conv1/kernel' from a jax key path."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def tree_shapes(tree: PyTree) -> dict[str, list[int]]:
  """Flat {path: shape} of every array leaf, JSON-serialisable (saved in `meta`, compared on restore)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(path): [int(d) for d in np.shape(leaf)] for path, leaf in leaves}


def first_non_finite(tree: PyTree) -> str | None:
  """Path of the first leaf holding a NaN or Inf, or None when everything is finite."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.inexact) and not np.all(np.isfinite(leaf)):
      return _path_str(path)
  return None


def check_compatible(meta: Mapping[str, Any], fingerprint: Mapping[str, Any],
                     model_tree: PyTree | None, where: str) -> None:
  """Raises `CheckpointMismatchError` naming every difference between a checkpoint and the expectation.

  Args:
    meta: the checkpoint's `meta` item.
    fingerprint: what the caller's config builds ({'model': ..., 'encoder': ..., ...}); only keys present in
      both are compared, so inference can pass the model keys alone.
    model_tree: the caller's {'params', 'batch_stats'} (arrays or shape structs), compared shape by shape.
    where: the checkpoint's path, for the message.
  """
  saved = meta.get("fingerprint", {})
  diffs = [f"{k}: checkpoint {saved[k]!r}, config {fingerprint[k]!r}"
           for k in fingerprint if k in saved and saved[k] != fingerprint[k]]
  if diffs:
    raise CheckpointMismatchError(
        f"The checkpoint {where} was written by another model/config: {'; '.join(diffs)}. Evaluate or resume it "
        "with the config it was trained with (its workdir's config.json), or train into a fresh --workdir.")
  if model_tree is None:
    return
  want, have = tree_shapes(model_tree), meta.get("model_shapes", {})
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  wrong = sorted(k for k in set(want) & set(have) if list(want[k]) != list(have[k]))
  if missing or extra or wrong:
    parts = []
    if wrong:
      parts.append("different shapes: " + ", ".join(f"{k} {have[k]} vs {want[k]}" for k in wrong[:5]))
    if missing:
      parts.append(f"{len(missing)} parameters missing from the checkpoint (e.g. {', '.join(missing[:3])})")
    if extra:
      parts.append(f"{len(extra)} unexpected parameters in the checkpoint (e.g. {', '.join(extra[:3])})")
    raise CheckpointMismatchError(
        f"The checkpoint {where} does not fit this model ({fingerprint.get('model', '?')}): "
        f"{'; '.join(parts)}. Use the config it was trained with (its workdir's config.json) or a fresh --workdir.")


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                      if not isinstance(x, jax.ShapeDtypeStruct) else x, tree)


def _to_numpy(tree: PyTree) -> PyTree:
  # Restored leaves come back as numpy (saved as numpy) or, for orbax versions that rebuild jax arrays, as
  # arrays on the default device; the caller places them where it wants, so hand back plain numpy.
  return jax.tree.map(np.asarray, tree)


def _barriers(name: str) -> ocp.options.MultiprocessingOptions:
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


class Checkpoints:
  """The latest-N and the best checkpoints of one workdir.

  Args:
    workdir: the run's directory.
    keep: how many of the latest checkpoints to keep (`config.keep_checkpoints`), besides the best.
    best_metric: the key of the evaluation metrics whose highest value marks the best checkpoint.
    async_save: write in a background thread (call `wait()` before reading what was written).
  """

  def __init__(self, workdir: str, *, keep: int = 2, best_metric: str = "miou", async_save: bool = True):
    if int(keep) < 1:
      raise ValueError(f"--config.keep_checkpoints must be >= 1 (resume needs the latest); got {keep}.")
    self.workdir = os.path.abspath(workdir)
    self.best_metric = best_metric
    # cleanup_tmp_directories: a resumed run first removes the partial checkpoints of a write that failed
    # (a full disk) or was killed. Only training opens a workdir's Checkpoints; evaluation reads alone.
    options = dict(create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    # Each manager names its own cross-process barriers: both save the same step at an epoch's end, and
    # on many hosts orbax's barrier keys (e.g. "_async_write_complete.<step>") would otherwise collide.
    self._latest = ocp.CheckpointManager(
        os.path.join(self.workdir, LATEST_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=int(keep), **options,
                                             multiprocessing_options=_barriers(LATEST_DIR)))
    self._best = ocp.CheckpointManager(
        os.path.join(self.workdir, BEST_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **options,
                                             multiprocessing_options=_barriers(BEST_DIR)))
    self._best_value = None
    self._writing: int | None = None  # the step of the last save started (maybe still writing)
    self._failed: BaseException | None = None  # a write error already raised (not raised again)
    if self._best.latest_step() is not None:
      meta = self._read_meta(self._best, self._best.latest_step())
      self._best_value = meta.get("metrics", {}).get(best_metric)

  # ---- Queries ----

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.latest_step()

  @property
  def best_value(self) -> float | None:
    """The best `best_metric` saved so far (None before the first evaluation)."""
    return self._best_value

  def step_dir(self, which: str) -> str | None:
    """Directory of the 'latest' or 'best' checkpoint, or None when there is none."""
    manager = self._manager(which)
    step = manager.latest_step()
    return None if step is None else os.path.join(str(manager.directory), str(step))

  def _manager(self, which: str) -> ocp.CheckpointManager:
    if which not in CHECKPOINT_CHOICES:
      raise ValueError(f"Unknown checkpoint {which!r}; choose one of {', '.join(CHECKPOINT_CHOICES)} or a path.")
    return self._best if which == "best" else self._latest

  @staticmethod
  def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  # ---- Save ----

  def save(self, step: int, model_tree: PyTree, opt_tree: PyTree, meta: Mapping[str, Any],
           metrics: Mapping[str, Any] | None = None, keep_as_best: bool = False) -> bool:
    """Writes the latest checkpoint and, when `metrics` beat the best so far (or `keep_as_best`), the best one.

    Args:
      step: the global training step (the checkpoint's name).
      model_tree: {'params', 'batch_stats'}, one host copy.
      opt_tree: {'opt_state', 'step'}, one host copy.
      meta: JSON-serialisable run position and fingerprint (see the module docstring).
      metrics: the evaluation metrics of this step, or None (a mid-epoch checkpoint).
      keep_as_best: make this checkpoint the best whatever the metrics: a run with no held-out split
        (eval_split "none") keeps its last one so. The best value stays as it was (None).

    Returns:
      Whether this checkpoint became the best.

    Raises:
      FloatingPointError: some parameter or statistic is NaN/Inf; nothing is written.
      files.DiskFullError: the disk is full (or over quota): this step's checkpoint, or that of an earlier
        save still being written in the background, could not be written; the ones before it are kept.
    """
    model_tree, opt_tree = jax.device_get(model_tree), jax.device_get(opt_tree)
    bad = first_non_finite(model_tree) or first_non_finite(opt_tree)
    if bad is not None:
      raise FloatingPointError(
          f"Not saving the checkpoint of step {step}: {bad} holds NaN or Inf (the training diverged). The "
          f"checkpoints already in {self.workdir} are untouched.")
    meta = dict(to_jsonable(meta))
    meta["step"] = int(step)
    meta["model_shapes"] = tree_shapes(model_tree)
    value = None
    if metrics is not None:
      meta["metrics"] = to_jsonable(dict(metrics))
      if self.best_metric not in metrics:
        raise KeyError(f"--config.best_metric={self.best_metric!r} is not an evaluation metric; choose one of "
                       f"{', '.join(sorted(k for k in metrics if np.ndim(metrics[k]) == 0))}.")
      value = float(metrics[self.best_metric])
    args = ocp.args.Composite(model=ocp.args.StandardSave(model_tree), opt=ocp.args.StandardSave(opt_tree),
                              meta=ocp.args.JsonSave(meta))
    is_best = keep_as_best or (value is not None and math.isfinite(value) and (
        self._best_value is None or value > self._best_value))
    if jax.process_count() > 1:
      # Every process must call the best manager's save, or none: take process 0's decision (the metrics
      # are the same everywhere, but one differing rounding must not leave a process waiting at a barrier).
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      is_best = bool(multihost_utils.broadcast_one_to_all(np.asarray(is_best)))
    self.wait()  # an earlier background write that failed is reported here, naming its own step
    # Best first: a crash between the two writes then redoes this step's evaluation after resuming from the
    # previous latest checkpoint, which reproduces the same value and leaves the best as it is.
    self._writing = int(step)
    failed = None
    try:
      # A step already the best (a resume that redid it after a crash between the two writes) stays as it is.
      if is_best and self._best.latest_step() != int(step):
        failed = "best"
        self._best.save(step, args=args, force=True)
        if not keep_as_best:
          self._best_value = value
      failed = "latest"
      self._latest.save(step, args=args, force=True)
    except Exception as e:  # pylint: disable=broad-except  (re-raised, or raised as DiskFullError)
      self._write_failed(e, {failed})
      raise
    return is_best

  def wait(self) -> None:
    """Blocks until background writes are on disk. A write error is raised once (`files.DiskFullError` for a
    full disk); later calls, and `close`, do not raise it again."""
    errors = {}
    for which, manager in (("latest", self._latest), ("best", self._best)):
      try:
        manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except  (both are waited for; re-raised below)
        errors[which] = e
    if errors and self._failed is None:
      error = next(iter(errors.values()))
      self._write_failed(error, set(errors))
      raise error

  def close(self) -> None:
    for manager in (self._latest, self._best):
      try:
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        if self._failed is None:
          self._write_failed(e, set())
          raise

  def _write_failed(self, error: BaseException, which: set[str]) -> None:
    """Records a failed write (of the managers in `which`: "latest", "best"); a full disk is raised as
    `DiskFullError` naming the step and the checkpoints kept, anything else is left to the caller to re-raise."""
    self._failed = error
    if not files.is_disk_full(error):
      return
    step = self._writing
    if which == {"best"} and step is not None and step in _finished_steps(self._latest):
      # The best of this step is lost: drop its latest too, so a resume redoes its evaluation and decision.
      self._latest.delete(step)
    # From the disk: after a failed save, orbax's own list may already lack the step it meant to replace.
    latest, best = (max(_finished_steps(m), default=None) for m in (self._latest, self._best))
    where = os.path.join(self.workdir, BEST_DIR if which == {"best"} else LATEST_DIR, str(step))
    partial = f"The checkpoint of step {step} was not written (its partial {step}{_ORBAX_TMP} is removed on resuming)"
    if latest is None:
      kept = f"{partial} and {self.workdir} holds no earlier one, so training starts over when run again."
    else:
      kept = (f"{partial}; the ones before it are intact: the latest is step {latest} "
              f"({os.path.join(self.workdir, LATEST_DIR, str(latest))})"
              + (f", the best step {best} ({os.path.join(self.workdir, BEST_DIR, str(best))})" if best is not None
                 else "") + f". Training resumes from step {latest} when run again.")
    raise files.disk_full_error(where, error, kept=kept, then="run the same command again") from error

  # ---- Restore ----

  def restore(self, which: str, model_target: PyTree, opt_target: PyTree | None,
              fingerprint: Mapping[str, Any]) -> tuple[PyTree, PyTree | None, dict]:
    """Restores the 'latest' or 'best' checkpoint after checking that it fits.

    Args:
      which: 'latest' or 'best'.
      model_target: {'params', 'batch_stats'} of the caller's model (arrays or ShapeDtypeStructs).
      opt_target: {'opt_state', 'step'} to restore too, or None (inference).
      fingerprint: the caller's config fingerprint (see `check_compatible`).

    Returns:
      (model_tree, opt_tree or None, meta) as host numpy trees.
    """
    manager = self._manager(which)
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"No {which} checkpoint in {manager.directory}; train first (train.py) or pick "
                              f"another --checkpoint ({', '.join(CHECKPOINT_CHOICES)} or a path).")
    return _restore(lambda args: manager.restore(step, args=args), os.path.join(str(manager.directory), str(step)),
                    model_target, opt_target, fingerprint)


def _finished_steps(manager: ocp.CheckpointManager) -> list[int]:
  """The steps of the complete checkpoints on disk (orbax renames a step's directory to its number when done)."""
  directory = manager.directory  # an etils epath.Path
  return [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.exists() else []


def _restore(restore_fn, where: str, model_target, opt_target, fingerprint):
  """Reads meta, checks it, then restores the requested items (the model alone or with the optimizer)."""
  meta = dict(restore_fn(ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
  check_compatible(meta, fingerprint, model_target, where)
  items = {"model": ocp.args.StandardRestore(_abstract(model_target))}
  if opt_target is not None:
    items["opt"] = ocp.args.StandardRestore(_abstract(opt_target))
  try:
    restored = restore_fn(ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    # The model shapes matched, so a failure here is the optimizer state's structure.
    raise CheckpointMismatchError(
        f"Could not restore the checkpoint {where}: its optimizer state does not fit this config's optimizer "
        f"(--config.optimizer, weight_decay, grad_clip_norm, lr_schedule, ema_decay on or off must match the run "
        f"that wrote it; "
        f"saved fingerprint {meta.get('fingerprint')}). Original error: {e}") from e
  opt = _to_numpy(restored["opt"]) if opt_target is not None else None
  meta["path"] = where
  return _to_numpy(restored["model"]), opt, meta


def resolve(workdir: str, checkpoint: str) -> str:
  """The directory of a run's 'best' or 'latest' checkpoints, or `checkpoint` itself when it is a path."""
  if checkpoint not in CHECKPOINT_CHOICES:
    return checkpoint
  path = os.path.join(workdir, BEST_DIR if checkpoint == "best" else LATEST_DIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"No {checkpoint} checkpoint: {path} does not exist; train first (train.py) or pass "
                            "--checkpoint=PATH.")
  return path


def restore_path(path: str, model_target: PyTree, fingerprint: Mapping[str, Any],
                 opt_target: PyTree | None = None) -> tuple[PyTree, PyTree | None, dict]:
  """Restores a checkpoint from an explicit directory: a step directory (`.../checkpoints/120`) or a
  manager directory (`.../checkpoints`, `.../checkpoints_best`: its newest step)."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--checkpoint={path} does not exist; pass best, latest or a checkpoint directory.")
  if not os.path.isdir(os.path.join(path, "meta")):
    steps = sorted((int(d) for d in os.listdir(path) if d.isdigit() and os.path.isdir(os.path.join(path, d, "meta"))))
    if not steps:
      raise FileNotFoundError(
          f"--checkpoint={path} is neither a veinjax checkpoint (no 'meta' item inside) nor a directory of them "
          f"(e.g. WORKDIR/{LATEST_DIR} or WORKDIR/{LATEST_DIR}/<step>).")
    path = os.path.join(path, str(steps[-1]))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    return _restore(lambda args: checkpointer.restore(path, args=args), path, model_target, opt_target, fingerprint)
  finally:
    checkpointer.close()
