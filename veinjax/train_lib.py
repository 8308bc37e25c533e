"""The training loop: restore or init -> train one epoch -> evaluate and record -> checkpoint, until done.

  result = train_and_evaluate(config, workdir)   # train.py
  result = train_and_evaluate(config, workdir, allow_config_change=True)   # train.py --allow_config_change

The pieces live elsewhere: the model, optimizer and steps in `veinjax.steps`, split evaluation in
`veinjax.evaluation`, the run's files in `veinjax.workdir`, checkpoints in `veinjax.checkpoint`. A workdir
holds:

  config.json            the resolved config of the run (with its input normalisation: input_mean, input_std)
  history.jsonl          one JSON object per evaluation (epoch, step, train_loss, val_loss, acc, miou, ...)
  tensorboard/           TensorBoard event files (curves and image panels)
  checkpoints/           the latest `keep_checkpoints` checkpoints (resume); see veinjax.checkpoint
  checkpoints_best/      the checkpoint with the best `best_metric` on `eval_split` (eval_split "none": no
                         held-out evaluation, history records the training figures, and the last checkpoint
                         is the best; a final fit trains so, see veinjax.final_fit)
  eval/<split>_metrics.json, eval/<split>_predictions/   written by `veinjax.evaluation.evaluate` (the best
                         checkpoint; <split>_latest_*, <split>_step<N>_* for the others)
  config.json.<time>     the config.json a resume with a changed config replaced

A fresh run starts from random variables, a pretrained ResNet encoder (`config.encoder_weights`) or another
run (`config.init_from`), at step 0 with a fresh optimizer: see `veinjax.initialization`. Running
`train_and_evaluate` again on a workdir resumes from its latest checkpoint: the state, the position
in the (deterministic) input pipeline and the running statistics of a partly done epoch are restored, so the
run ends exactly as an uninterrupted one would (tests/train_lib_test.py).

A resume compares the config with the run's config.json first (input normalisation resolved as recorded;
fields added to the config since the run was recorded: `workdir.ADDED_FIELDS`). Only RESUME_FREE_FIELDS may
differ: how long the run goes (num_epochs, unless lr_schedule=cosine, whose decay spans the whole run), how
often it logs, evaluates and checkpoints, how many checkpoints and summary images it keeps, the evaluation
batch size (metrics do not depend on it), the HD95 pixel spacing (reporting only), where its data lies
(dataset.root, dataset.data_dir), the `compare` block (read by the compare runner only) and final_fit (it
only adds the WORKDIR/final/ run after this one, so it may be switched on for a finished run). Any other
difference (seed, loss, augmentation, ...) would continue the run with another recipe or other data: it is a
`CheckpointMismatchError` naming the fields, before any data is prepared, unless `allow_config_change=True`,
which logs each difference. Whenever config.json changes, the old one is kept as config.json.<time>.

Before the first step every split's examples of a `folder` dataset are checked (`sources.check_files`:
images from their headers, labels read), so a bad test file stops the run at its start rather than eval.py
after it. A
training loss that grows 1000-fold over the first step's is warned about (once); a NaN/Inf one stops the
run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from veinjax import checkpoint as checkpoint_lib
from veinjax import evaluation
from veinjax import initialization
from veinjax import metrics as metrics_lib
from veinjax import models
from veinjax import parallel
from veinjax import preemption
from veinjax import steps
from veinjax import summary_writer
from veinjax import workdir as workdir_lib
from veinjax.config_checks import NO_EVAL_SPLIT, validate_config
from veinjax.progress import Clock, EpochStats

__all__ = ["RESUME_FREE_FIELDS", "train_and_evaluate", "validate_config"]

# Config fields a resumed run may change without allow_config_change (see the module docstring); fields under
# these prefixes as well.
RESUME_FREE_FIELDS = ("num_epochs", "eval_every_epochs", "log_every_steps", "keep_checkpoints",
                      "checkpoint_every_steps", "num_summary_images", "eval_batch_size", "pixel_spacing_mm",
                      "dataset.root", "dataset.data_dir", "final_fit")
_RESUME_FREE_PREFIXES = ("compare.",)
# The training loss this many times its first value (this process's first step) is warned about, once.
DIVERGENCE_FACTOR = 1e3


@dataclasses.dataclass
class _Run:
  """What stays fixed during a run: its config, devices, steps, checkpoints and summary writer."""
  config: ml_collections.ConfigDict
  workdir: str
  par: parallel.DataParallel
  steps_per_epoch: int
  num_labels: int
  learning_rate_fn: Callable
  model: Any
  checkpoints: checkpoint_lib.Checkpoints
  p_train_step: Callable = None
  p_eval_step: Callable = None
  writer: summary_writer.SummaryWriter = None
  preemption: preemption.PreemptionWatcher = None  # SIGTERM -> checkpoint and stop (see veinjax.preemption)
  config_changes: list = dataclasses.field(default_factory=list)  # (field, recorded, now) of a resume

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.config.num_epochs


@dataclasses.dataclass
class _Progress:
  """Where the run is: the global step, the epoch, the statistics read back so far, the clock."""
  step: int
  epoch: int
  epoch_stats: EpochStats  # this epoch (saved in mid-epoch checkpoints)
  interval_stats: EpochStats  # since the last progress log line
  learning_rate: float
  clock: Clock
  last_metrics: dict | None = None
  first_loss: tuple[int, float] | None = None  # (step, loss) of the first step this process trained
  warned_divergence: bool = False


def _check_data(config, process_count: int) -> int:
  """Steps per epoch, after checking the dataset's classes and that the selection split has examples."""
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top
  sources.check_files(config)  # every split, test included (images from their headers): a bad file fails now
  steps_per_epoch = pipeline.steps_per_epoch(config, process_count)
  num_labels = metrics_lib.num_labels_for_classes(config.num_classes)
  dataset_classes = sources.num_classes(config)
  if num_labels != dataset_classes:
    raise ValueError(f"{config.dataset.name!r} has {dataset_classes} classes (background included) but "
                     f"--config.num_classes={config.num_classes} predicts {num_labels}; set "
                     f"--config.num_classes={1 if dataset_classes == 2 else dataset_classes}.")
  if config.eval_split == NO_EVAL_SPLIT:  # nothing held out: the last checkpoint is the best
    return steps_per_epoch
  if sources.num_examples(config, config.eval_split) == 0:  # fail now, not after the first epoch
    raise ValueError(f"--config.eval_split={config.eval_split!r} of {config.dataset.name!r} is empty; set "
                     "--config.dataset.validation_fraction > 0 or --config.eval_split=test.")
  return steps_per_epoch


def _is_resume_free(field: str, config: ml_collections.ConfigDict) -> bool:
  if field == "num_epochs":
    return config.lr_schedule != "cosine"  # a cosine decay spans num_epochs: another length, another schedule
  return field in RESUME_FREE_FIELDS or field.startswith(_RESUME_FREE_PREFIXES)


def _show(value) -> str:
  return "(absent)" if value is None else repr(value)


def _check_resume_config(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool) -> list:
  """The differences between `config` (normalisation resolved) and the resumed run's config.json; raises on
  any beyond RESUME_FREE_FIELDS unless `allow_config_change` (then each is logged)."""
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    stored = json.load(f)
  changes = workdir_lib.config_changes(stored, workdir_lib.config_json(config))
  refused = [c for c in changes if not _is_resume_free(c[0], config)]
  if refused and not allow_config_change:
    shown = "; ".join(f"{field}: {_show(old)} there, {_show(new)} now" for field, old, new in refused)
    raise checkpoint_lib.CheckpointMismatchError(
        f"{workdir} holds a run trained with another config: {', '.join(c[0] for c in refused)} "
        f"{'differs' if len(refused) == 1 else 'differ'} from its {workdir_lib.CONFIG_FILE} ({shown}). "
        "Resuming would continue that run with another recipe or other data. Give the run's own settings, "
        "train into a fresh --workdir, or pass "
        f"--allow_config_change (train.py) to resume anyway (the old {workdir_lib.CONFIG_FILE} is kept "
        f"beside the new one).")
  for field, old, new in changes:
    if _is_resume_free(field, config):
      logging.info("Resuming with --config.%s changed: %s in %s, %s now.", field, _show(old),
                   workdir_lib.CONFIG_FILE, _show(new))
    else:
      logging.warning("Resuming with --config.%s changed (--allow_config_change): %s in %s, %s now.", field,
                      _show(old), workdir_lib.CONFIG_FILE, _show(new))
  return changes


def _setup(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> _Run:
  """The run's fixed parts. Its config is the caller's with the input normalisation resolved: on a fresh
  start from encoder_weights / init_from (whose files are checked here, before the data is prepared), on a
  resumed run the one its config.json records (and the rest of config.json is compared with the config
  here too, before the data is prepared: `_check_resume_config`)."""
  par = parallel.DataParallel(config.parallelism)
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size, "--config.eval_batch_size")
  checkpoints = checkpoint_lib.Checkpoints(workdir, keep=config.keep_checkpoints, best_metric=config.best_metric)
  config_changes = []
  try:
    if checkpoints.latest_step() is None:
      initialization.check_sources(config)
      config = initialization.with_input_normalization(config)
    else:
      config = initialization.with_recorded_normalization(config, workdir)
      config_changes = _check_resume_config(config, workdir, allow_config_change)
    steps_per_epoch = _check_data(config, jax.process_count())
    learning_rate_fn = steps.create_learning_rate_fn(config, steps_per_epoch)
    model = steps.create_model(config, bn_axis_name=par.axis_name)
  except BaseException:
    checkpoints.close()
    raise
  return _Run(config=config, workdir=workdir, par=par, steps_per_epoch=steps_per_epoch,
              num_labels=metrics_lib.num_labels_for_classes(config.num_classes),
              learning_rate_fn=learning_rate_fn, model=model, checkpoints=checkpoints,
              config_changes=config_changes)


def _restore_or_init(run: _Run) -> tuple[steps.TrainState, _Progress]:
  """The host state and progress: from the latest checkpoint when there is one, else freshly initialised."""
  config, checkpoints = run.config, run.checkpoints
  meta: dict = {}
  if checkpoints.latest_step() is not None:
    abstract = steps.create_train_state(config, run.model, run.learning_rate_fn, abstract=True)
    model_tree, opt_tree, meta = checkpoints.restore("latest", *steps.split_state(abstract),
                                                     steps.fingerprint(config))
    if meta.get("steps_per_epoch") != run.steps_per_epoch:
      raise checkpoint_lib.CheckpointMismatchError(
          f"The checkpoint in {run.workdir} was written with {meta.get('steps_per_epoch')} steps per epoch, "
          f"this config gives {run.steps_per_epoch} (batch_size or the train split changed): resuming would "
          "not continue the same run. Restore those settings or train into a fresh --workdir.")
    host_state = steps.join_state(abstract, model_tree, opt_tree)
    workdir_lib.truncate_history(run.workdir, int(meta["step"]))
    if meta["step"] >= run.total_steps:
      logging.info("%s already holds the finished run (step %d of %d); nothing to train.",
                   checkpoints.step_dir("latest"), meta["step"], run.total_steps)
    else:
      logging.info("Resuming from %s at step %d (epoch %d, step %d of it).", checkpoints.step_dir("latest"),
                   meta["step"], meta["epoch"] + 1, meta["step_in_epoch"])
    ignored = [f for f in ("encoder_weights", "init_from") if config.get(f, "")]
    if ignored:
      logging.info("Resumed from the checkpoint: %s apply to a fresh start only (ignored).",
                   " and ".join(f"--config.{f}" for f in ignored))
  else:
    # A fresh start: random, or from encoder_weights / init_from; step 0 and a fresh optimizer either way.
    variables = initialization.initial_variables(config, run.model)
    host_state = steps.create_train_state(config, run.model, run.learning_rate_fn, variables=variables)
    logging.info("%s: %s parameters; %d steps (%d epochs of %d).", config.model,
                 f"{models.count_params(host_state.params):,}", run.total_steps, config.num_epochs,
                 run.steps_per_epoch)
  step = int(meta.get("step", 0))
  mid_epoch = step % run.steps_per_epoch
  progress = _Progress(step=step, epoch=step // run.steps_per_epoch,
                       epoch_stats=EpochStats(run.num_labels, meta.get("epoch_stats") if mid_epoch else None),
                       interval_stats=EpochStats(run.num_labels),
                       learning_rate=float(run.learning_rate_fn(step)), clock=Clock(step),
                       last_metrics=meta.get("metrics"))
  return host_state, progress


def _read_back(run: _Run, pending: list, progress: _Progress) -> None:
  """Adds the pending steps' metrics to the statistics (their copies to the host overlap; a sync point);
  warns once when the loss has grown DIVERGENCE_FACTOR-fold over the first step's; stops the run at the first
  non-finite loss."""
  for _, m in pending:  # start every copy before waiting on the first
    jax.tree.map(lambda x: x.copy_to_host_async(), m)
  for step_no, m in pending:
    m = run.par.first(m)
    loss = float(m["loss"])
    if not math.isfinite(loss):
      raise FloatingPointError(
          f"The training loss is {loss} at step {step_no} (epoch {progress.epoch + 1}); stopping. "
          f"{_saved_before(run)} Lower --config.learning_rate, set --config.grad_clip_norm, or check the data.")
    if progress.first_loss is None:
      progress.first_loss = (step_no, loss)
    elif (not progress.warned_divergence and progress.first_loss[1] > 0
          and loss >= DIVERGENCE_FACTOR * progress.first_loss[1]):
      progress.warned_divergence = True
      logging.warning(
          "The training loss grew from %.4g at step %d to %.4g at step %d (%.3g times): the run is probably "
          "diverging. Lower --config.learning_rate (%g now) or set --config.grad_clip_norm.",
          progress.first_loss[1], progress.first_loss[0], loss, step_no, loss / progress.first_loss[1],
          run.config.learning_rate)
    progress.epoch_stats.add(loss, m["confusion"])
    progress.interval_stats.add(loss, m["confusion"])
    progress.learning_rate = float(m["learning_rate"])
  pending.clear()


def _saved_before(run: _Run) -> str:
  """Which checkpoints of the run predate a divergence (all of them: none is written after it)."""
  latest, best = run.checkpoints.latest_step(), run.checkpoints.best_step()
  if latest is None:
    return f"No checkpoint yet: {run.workdir} holds none."
  best_part = (f"and so is the best (step {best})" if best is not None else
               "and there is no best checkpoint yet (no evaluation has finished)")
  return (f"No checkpoint was written after step {latest}, so the latest checkpoint in {run.workdir} is from "
          f"before the divergence, {best_part}.")


def _log_progress(run: _Run, progress: _Progress) -> None:
  config, stats = run.config, progress.interval_stats
  seconds, num_steps = progress.clock.lap(progress.step)
  steps_per_sec = num_steps / seconds if seconds > 0 else float("nan")
  train = metrics_lib.summarize(stats.confusion)
  train_loss = stats.loss_sum / max(stats.steps, 1)
  logging.info("epoch %d/%d step %d/%d | loss %.4f acc %.4f miou %.4f | lr %.2e | %.2f steps/s "
               "%.1f images/s | ETA %s", progress.epoch + 1, config.num_epochs, progress.step, run.total_steps,
               train_loss, train["acc"], train["miou"], progress.learning_rate, steps_per_sec,
               steps_per_sec * config.batch_size, progress.clock.eta(run.total_steps - progress.step))
  run.writer.scalars(progress.step, {"train/loss": train_loss, "train/acc": train["acc"],
                                     "train/miou": train["miou"], "train/dice": train["dice"],
                                     "learning_rate": progress.learning_rate, "steps_per_sec": steps_per_sec,
                                     "images_per_sec": steps_per_sec * config.batch_size})
  progress.interval_stats = EpochStats(run.num_labels)


def _save(run: _Run, state, progress: _Progress, eval_metrics: dict | None) -> None:
  """A checkpoint at the current step (mid-epoch ones carry the epoch's statistics and position). With no
  held-out split (eval_split "none") the run's last checkpoint is its best."""
  config = run.config
  last_of_unselected = config.eval_split == NO_EVAL_SPLIT and progress.step == run.total_steps
  model_tree, opt_tree = steps.split_state(run.par.unreplicate(state))
  meta = {"epoch": progress.epoch, "step_in_epoch": progress.step - progress.epoch * run.steps_per_epoch,
          "steps_per_epoch": run.steps_per_epoch, "epoch_stats": progress.epoch_stats.to_json(),
          "fingerprint": steps.fingerprint(config), "model": config.model, "eval_split": config.eval_split,
          "best_metric": config.best_metric}
  if run.checkpoints.save(progress.step, model_tree, opt_tree, meta, eval_metrics, keep_as_best=last_of_unselected):
    if last_of_unselected:
      logging.info("The last checkpoint (step %d) is the best: nothing is held out to choose on.", progress.step)
      return
    logging.info("New best %s %.4f on %s at step %d.", config.best_metric, eval_metrics[config.best_metric],
                 config.eval_split, progress.step)


def _train_one_epoch(run: _Run, state, progress: _Progress):
  """Trains the rest of the current epoch (all of it unless resuming mid-epoch); returns the new state."""
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  config = run.config
  start_in_epoch = progress.step - progress.epoch * run.steps_per_epoch
  ds = pipeline.create_train_dataset(config, epoch=progress.epoch, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  if start_in_epoch:
    ds = ds.skip(start_in_epoch)
  every_steps = config.get("checkpoint_every_steps", 0)  # mid-epoch checkpoints (epoch ends always save)
  pending: list[tuple[int, dict]] = []  # device metrics of steps not yet read back
  progress.clock.new_epoch()
  for device_batch, _ in run.par.prefetch(ds.as_numpy_iterator()):
    state, step_metrics = run.p_train_step(state, device_batch)
    progress.step += 1
    pending.append((progress.step, step_metrics))
    if not progress.clock.compiled:
      jax.block_until_ready(step_metrics["loss"])
      logging.info("Compiled and ran the first step in %.1f s.", progress.clock.lap(progress.step, count=False)[0])
      progress.clock.compiled = True
    if progress.step % config.log_every_steps == 0 or progress.step == run.total_steps:
      _read_back(run, pending, progress)
      _log_progress(run, progress)
    if progress.step % run.steps_per_epoch:  # mid-epoch (an epoch's last step is saved after its evaluation)
      preempted = run.preemption.reached(progress.step)
      if preempted or (every_steps and progress.step % every_steps == 0):
        _read_back(run, pending, progress)
        _save(run, state, progress, None)
      if preempted:
        raise preemption.Preempted(progress.step)
  _read_back(run, pending, progress)
  jax.block_until_ready(state.step)
  progress.clock.lap(progress.step)
  return state


def _evaluate_and_record(run: _Run, state, progress: _Progress) -> dict | None:
  """Evaluates on `eval_split` after an epoch; appends the history record and writes the summaries. With
  eval_split "none" the record holds the training figures alone and nothing is evaluated (returns None)."""
  config, clock = run.config, progress.clock
  images_per_sec = clock.epoch_rate() * config.batch_size
  train = metrics_lib.summarize(progress.epoch_stats.confusion)
  stats = progress.epoch_stats
  record = {"epoch": progress.epoch, "step": progress.step, "eval_split": config.eval_split,
            "train_loss": stats.loss_sum / max(stats.steps, 1), "train_acc": train["acc"],
            "train_miou": train["miou"], "train_dice": train["dice"]}
  timing = {"learning_rate": progress.learning_rate, "images_per_sec": images_per_sec,
            "train_seconds": clock.epoch_seconds}
  run.writer.scalars(progress.step, {"epoch/train_loss": record["train_loss"],
                                     "epoch/images_per_sec": images_per_sec})
  if config.eval_split == NO_EVAL_SPLIT:
    workdir_lib.append_history(run.workdir, {**record, **timing})
    run.writer.flush()
    return None
  eval_start = time.time()
  panels = evaluation.PanelCollector(config.num_summary_images)
  eval_metrics = evaluation.evaluate_split(config, run.par, run.p_eval_step, steps.model_variables(state),
                                           config.eval_split, on_example=panels)
  eval_seconds = time.time() - eval_start
  record.update({"val_loss": eval_metrics["loss"], **{k: v for k, v in eval_metrics.items() if k != "loss"},
                 **timing, "eval_seconds": eval_seconds})
  workdir_lib.append_history(run.workdir, record)
  logging.info("epoch %d/%d eval on %s: loss %.4f acc %.4f miou %.4f iou %.4f dice %.4f hd95 %.2f (%.1f s)",
               progress.epoch, config.num_epochs, config.eval_split, eval_metrics["loss"], eval_metrics["acc"],
               eval_metrics["miou"], eval_metrics["iou"], eval_metrics["dice"], eval_metrics["hd95"], eval_seconds)
  split = config.eval_split
  run.writer.scalars(progress.step, {f"{split}/{k}": v for k, v in eval_metrics.items() if np.ndim(v) == 0})
  for i, picture in enumerate(panels.panels):
    run.writer.image(progress.step, f"{split}/input_label_prediction/{i}", picture)
  run.writer.flush()
  return eval_metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluating on `config.eval_split`.

  `allow_config_change`: resume even where `config` differs from the run's config.json beyond
  RESUME_FREE_FIELDS (each difference is logged; the old config.json is kept as config.json.<time>).

  Returns:
    {'step', 'epoch', 'best_step', 'best_metric', 'best_value', 'metrics' (the last evaluation),
    'workdir', 'preempted'}. `preempted`: a SIGTERM stopped the run after `step`, with a checkpoint of that
    step (mid-epoch position included) written; calling again resumes exactly (veinjax.preemption).

  Raises:
    ValueError: a bad config (the message names the flag and the valid choices).
    FloatingPointError: the training loss became NaN/Inf (the message names the step); no checkpoint is
      written after it, so the latest and best checkpoints are those from before.
    checkpoint.CheckpointMismatchError: `workdir` holds a checkpoint of another model or config (a resume
      whose config differs from config.json beyond RESUME_FREE_FIELDS, without allow_config_change).
    decode.BadExampleError: a file of any split of a `folder` dataset is bad (named with its split).
    FileNotFoundError / pretrained.WeightsError: a fresh start's encoder_weights or init_from cannot be
      read (the message names the flag and the path).
    files.DiskFullError: the disk filled up (or the quota ran out) writing a checkpoint or a record; the
      checkpoints before it are intact, and the same call resumes from the latest once there is space.
  """
  validate_config(config)
  workdir = os.path.abspath(workdir)
  run = _setup(config, workdir, allow_config_change)
  config = run.config  # the input normalisation resolved (config.json records it)
  try:
    host_state, progress = _restore_or_init(run)
  except BaseException:  # e.g. a checkpoint of another config, an encoder_weights file that does not fit
    run.checkpoints.close()
    raise
  # Written once the workdir's checkpoint (if any) is known to fit this config, so a mistaken config never
  # overwrites the record of the run that is there; a changed one keeps the old record beside it.
  if run.config_changes:
    kept = workdir_lib.keep_previous_config(workdir)
    if kept:
      logging.info("The config changed on resuming (%s); the previous %s is kept as %s.",
                   ", ".join(c[0] for c in run.config_changes), workdir_lib.CONFIG_FILE, kept)
  workdir_lib.write_config(workdir, config)
  state = run.par.replicate(host_state)
  del host_state
  run.p_train_step = steps.wrap_train_step(config, run.par, run.learning_rate_fn)
  run.p_eval_step = steps.wrap_eval_step(config, run.par, run.model)
  run.writer = summary_writer.SummaryWriter(os.path.join(workdir, "tensorboard"))
  run.preemption = preemption.PreemptionWatcher()
  preempted = False
  try:
    while progress.epoch < config.num_epochs:
      state = _train_one_epoch(run, state, progress)
      progress.epoch += 1
      eval_metrics = None
      if progress.epoch % config.eval_every_epochs == 0 or progress.epoch == config.num_epochs:
        eval_metrics = progress.last_metrics = _evaluate_and_record(run, state, progress)
      progress.epoch_stats = EpochStats(run.num_labels)
      _save(run, state, progress, eval_metrics)
      progress.clock.lap(progress.step, count=False)  # evaluation and saving are not training time
      if progress.epoch < config.num_epochs and run.preemption.reached(progress.step):
        raise preemption.Preempted(progress.step)
  except preemption.Preempted:
    preempted = True
    logging.warning("Preempted: stopped after step %d with a checkpoint written; run the same command again "
                    "to resume from it.", progress.step)
  finally:
    run.preemption.close()
    try:
      run.checkpoints.wait()  # a background write that failed (e.g. a full disk) is raised here
    finally:
      run.checkpoints.close()
      run.writer.close()
  return {"step": progress.step, "epoch": progress.epoch, "best_step": run.checkpoints.best_step(),
          "best_metric": config.best_metric, "best_value": run.checkpoints.best_value,
          "metrics": progress.last_metrics, "workdir": workdir, "preempted": preempted}
