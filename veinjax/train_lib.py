"""Training and evaluation: the train step, the eval step, the training loop, evaluation and inference loading.

Sections, in order: config checks; model, optimizer and state; the steps (pure functions, wrapped for the
devices by `veinjax.parallel`); evaluation of a split; the training loop; evaluation and inference from a
workdir.

A workdir holds:

  config.json            the resolved config of the run
  history.jsonl          one JSON object per evaluation (epoch, step, train_loss, val_loss, acc, miou, ...)
  tensorboard/           TensorBoard event files (curves and image panels)
  checkpoints/           the latest `keep_checkpoints` checkpoints (resume); see veinjax.checkpoint
  checkpoints_best/      the checkpoint with the best `best_metric` on `eval_split`
  eval/<split>_metrics.json, eval/<split>_predictions/   written by `evaluate`

Running `train_and_evaluate` again on a workdir resumes from its latest checkpoint: the state, the position
in the (deterministic) input pipeline and the running statistics of a partly done epoch are restored, so the
run ends exactly as an uninterrupted one would (tests/train_lib_test.py).

This module imports without TensorFlow; the tf.data input pipeline is imported where it is used.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from veinjax import checkpoint as checkpoint_lib
from veinjax import losses
from veinjax import metrics as metrics_lib
from veinjax import models
from veinjax import parallel
from veinjax import summary as summary_lib

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
EVAL_SPLITS = ("validation", "test")  # where the best checkpoint may be chosen
SPLITS = ("train", "validation", "test")  # what `evaluate` can measure
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.jsonl"

PyTree = Any


# ---------------------------------------------------------------------------------------------------------
# Config checks.
# ---------------------------------------------------------------------------------------------------------


def _choice(value: str, choices, flag: str) -> None:
  if value not in choices:
    raise ValueError(f"Unknown {flag}={value!r}; choose one of {', '.join(choices)}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the flag and the valid choices, on a config that cannot train.

  Dataset-specific fields (paths, label maps) are checked by `veinjax.data` where the data is read.
  """
  _choice(config.model, models.MODEL_NAMES, "--config.model")
  _choice(config.encoder, models.ENCODER_NAMES, "--config.encoder")
  _choice(config.loss, losses.LOSS_NAMES, "--config.loss")
  _choice(config.optimizer, OPTIMIZERS, "--config.optimizer")
  _choice(config.lr_schedule, LR_SCHEDULES, "--config.lr_schedule")
  _choice(config.eval_split, EVAL_SPLITS, "--config.eval_split")
  _choice(config.parallelism, parallel.PARALLELISM, "--config.parallelism")
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top  (TensorFlow, needed to train anyway)
  _choice(config.dataset.name, sources.DATASETS, "--config.dataset.name")
  if not isinstance(config.num_classes, int) or config.num_classes < 1:
    raise ValueError(f"--config.num_classes must be an integer >= 1 (1 = one sigmoid 'vein' logit); "
                     f"got {config.num_classes!r}.")
  models.check_input_size(config.image_size, config.image_size)
  for flag in ("batch_size", "eval_batch_size", "num_epochs", "eval_every_epochs", "keep_checkpoints",
               "log_every_steps"):
    if int(config[flag]) < 1:
      raise ValueError(f"--config.{flag} must be >= 1; got {config[flag]}.")
  if config.get("checkpoint_every_steps", 0) < 0:
    raise ValueError(f"--config.checkpoint_every_steps must be >= 0 (0 = at evaluations only); got "
                     f"{config.checkpoint_every_steps}.")
  # best_metric must be one of the evaluation metrics: ask `summarize` what it returns.
  known = set(metrics_lib.summarize(np.eye(2))) | {"hd95", "loss"}
  if config.best_metric not in known:
    raise ValueError(f"Unknown --config.best_metric={config.best_metric!r}; choose one of "
                     f"{', '.join(sorted(k for k in known if not k.endswith('per_class')))} (higher is better).")


# ---------------------------------------------------------------------------------------------------------
# Model, optimizer, state.
# ---------------------------------------------------------------------------------------------------------


class TrainState(train_state.TrainState):
  """Flax's TrainState (step, params, opt_state, apply_fn, tx) plus BatchNorm statistics."""
  batch_stats: Any = None


def create_model(config: ml_collections.ConfigDict, bn_axis_name: str | None = None) -> flax.linen.Module:
  """The config's model; bf16 computation under `config.half_precision` (parameters stay float32)."""
  kwargs = {}
  # Models with a fixed encoder (unet, fcn8s) reject any other value; the encoder field is for the others.
  if config.model not in models.FIXED_ENCODERS:
    kwargs["encoder"] = config.encoder
  return models.create_model(config.model, num_classes=config.num_classes,
                             dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
                             bn_axis_name=bn_axis_name, **kwargs)


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """What a checkpoint must share with a config to be restored into its model."""
  return {"model": config.model,
          "encoder": None if config.model in models.FIXED_ENCODERS else config.encoder,
          "num_classes": int(config.num_classes), "in_channels": int(config.in_channels)}


def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """`config.lr_schedule` over the whole run, with `warmup_epochs` of linear warmup from 0."""
  total = config.num_epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  lr = config.learning_rate
  if config.lr_schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    main = optax.cosine_decay_schedule(lr, decay_steps=max(1, total - warmup))
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def create_optimizer(config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule):
  """Adam (AdamW when weight_decay > 0) or SGD with momentum, after optional global-norm clipping."""
  if config.optimizer == "adam":
    tx = (optax.adamw(learning_rate_fn, weight_decay=config.weight_decay) if config.weight_decay > 0
          else optax.adam(learning_rate_fn))
  else:
    tx = optax.sgd(learning_rate_fn, momentum=0.9, nesterov=True)
    if config.weight_decay > 0:
      tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def _input_shape(config) -> tuple[int, int, int, int]:
  return (1, config.image_size, config.image_size, config.in_channels)


def init_variables(model: flax.linen.Module, config, rng: jax.Array) -> dict:
  """{'params', 'batch_stats'} of a freshly initialised model."""
  variables = jax.jit(functools.partial(model.init, train=False))(rng, jnp.zeros(_input_shape(config)))
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def create_train_state(config, model: flax.linen.Module, learning_rate_fn: optax.Schedule,
                       rng: jax.Array | None = None, abstract: bool = False) -> TrainState:
  """A TrainState for `model`; `abstract=True` gives only its shapes (to restore into, without initialising)."""
  rng = jax.random.key(config.seed) if rng is None else rng
  tx = create_optimizer(config, learning_rate_fn)

  def make(rng):
    variables = init_variables(model, config, rng)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])

  return jax.eval_shape(make, rng) if abstract else make(rng)


def _split_state(state: TrainState) -> tuple[dict, dict]:
  """The checkpoint items of a (host) state: the model and what resuming adds."""
  return ({"params": state.params, "batch_stats": state.batch_stats},
          {"opt_state": state.opt_state, "step": state.step})


# ---------------------------------------------------------------------------------------------------------
# Steps. Pure functions of (state, batch); `axis_name` is "batch" under pmap and None under jit
# (see veinjax.parallel). Labels are int32 [N, H, W]; metrics are psum-able sums, never means of means.
# ---------------------------------------------------------------------------------------------------------


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _pmean(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, loss_fn: losses.LossFn,
               learning_rate_fn: optax.Schedule, num_classes: int,
               axis_name: str | None = None) -> tuple[TrainState, dict]:
  """One optimizer step on a batch {'image' [N,H,W,C], 'label' [N,H,W]}.

  Returns the new state and {'loss': mean loss of the global batch, 'confusion': the batch's pixel confusion
  matrix (train mode), 'learning_rate': the rate this step used}.
  """
  images, labels = batch["image"], batch["label"]
  weights = jnp.ones(labels.shape[:1], jnp.float32)

  def compute_loss(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                     train=True, mutable=["batch_stats"])
    return loss_fn(logits, labels, weights), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  # Equal per-device batches: the mean of the per-device mean gradients is the global-batch gradient.
  grads = _pmean(grads, axis_name)
  new_state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  pred = metrics_lib.predictions(logits, num_classes)
  confusion = metrics_lib.confusion_matrix(pred, labels, metrics_lib.num_labels_for_classes(num_classes), weights)
  return new_state, {"loss": _pmean(loss, axis_name), "confusion": _psum(confusion, axis_name),
                     "learning_rate": learning_rate_fn(state.step)}


def eval_step(variables: Mapping[str, PyTree], batch: Mapping[str, jax.Array], *, apply_fn: Callable,
              loss_fn: losses.LossFn, num_classes: int, axis_name: str | None = None) -> dict:
  """Evaluates a padded batch {'image', 'label', 'valid' bool [N]} with the model's running statistics.

  Returns sums over the real examples of all devices ('confusion', 'loss_sum', 'count') and the per-example
  'prediction' (uint8 class indices [N, H, W]) for the host's HD95 and pictures.
  """
  logits = apply_fn(variables, batch["image"], train=False)
  labels = batch["label"]
  weights = batch["valid"].astype(jnp.float32)
  count = jnp.sum(weights)
  # The loss is a weighted mean over the real examples: times their count it adds up across batches.
  loss_sum = loss_fn(logits, labels, weights) * count
  pred = metrics_lib.predictions(logits, num_classes)
  confusion = metrics_lib.confusion_matrix(pred, labels, metrics_lib.num_labels_for_classes(num_classes), weights)
  return {"confusion": _psum(confusion, axis_name), "loss_sum": _psum(loss_sum, axis_name),
          "count": _psum(count, axis_name), "prediction": pred.astype(jnp.uint8)}


def predict_logits(model: flax.linen.Module, variables: Mapping[str, PyTree], images) -> jax.Array:
  """float32 logits [N, H, W, num_classes] of preprocessed images [N, H, W, C] (traceable: jit it freely)."""
  return model.apply(variables, jnp.asarray(images, jnp.float32), train=False)


# ---------------------------------------------------------------------------------------------------------
# Evaluation of one split.
# ---------------------------------------------------------------------------------------------------------


def _host_gather(x: np.ndarray) -> np.ndarray:
  """Every process's per-example rows, concatenated (only on many hosts)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = np.asarray(multihost_utils.process_allgather(x))
  return gathered.reshape((-1,) + gathered.shape[2:])


def _safe_name(example_id, index: int) -> str:
  name = example_id.decode("utf-8", "replace") if isinstance(example_id, bytes) else str(example_id)
  name = name.replace(os.sep, "__").replace("/", "__").strip() or f"example_{index:05d}"
  return os.path.splitext(name)[0]


def evaluate_split(config, par: parallel.DataParallel, p_eval_step: Callable, variables: PyTree, split: str, *,
                   num_images: int = 0, predictions_dir: str | None = None) -> tuple[dict, list]:
  """Metrics of the whole `split` (every real example counted once) and up to `num_images` image panels.

  `variables` are in the layout `par` expects (replicated). HD95 is measured on the host per image.
  """
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top
  ds = pipeline.create_eval_dataset(config, split, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  accumulator = metrics_lib.MetricsAccumulator(config.num_classes, config.pixel_spacing_mm)
  loss_sum = count = 0.0
  panels = []
  written = 0
  if predictions_dir and jax.process_index() == 0:
    os.makedirs(predictions_dir, exist_ok=True)
  for device_batch, host_batch in par.prefetch(ds.as_numpy_iterator()):
    out = p_eval_step(variables, device_batch)
    sums = par.first({k: out[k] for k in ("confusion", "loss_sum", "count")})
    accumulator.add(sums["confusion"])
    loss_sum += float(sums["loss_sum"])
    count += float(sums["count"])
    pred, label, valid = par.local(out["prediction"]), host_batch["label"], host_batch["valid"]
    image, ids = host_batch["image"], host_batch["id"]
    if jax.process_count() > 1:
      pred, label, valid = _host_gather(pred), _host_gather(label), _host_gather(valid)
    accumulator.add_hd95(pred, label, valid)
    if jax.process_count() > 1:
      continue  # pictures come from process 0's own examples only
    for i in np.flatnonzero(valid):
      if len(panels) < num_images:
        panels.append(summary_lib.panel(image[i], label[i], pred[i]))
      if predictions_dir:
        path = os.path.join(predictions_dir, _safe_name(ids[i], written) + ".png")
        with open(path, "wb") as f:
          f.write(summary_lib.encode_png(summary_lib.panel(image[i], label[i], pred[i])))
        written += 1
  result = accumulator.result()
  result["loss"] = loss_sum / count if count else float("nan")
  return result, panels


# ---------------------------------------------------------------------------------------------------------
# The training loop.
# ---------------------------------------------------------------------------------------------------------


def _format_seconds(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _write_json(path: str, value) -> None:
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(checkpoint_lib.to_jsonable(value), f, indent=2, sort_keys=True, allow_nan=False)
    f.write("\n")
  os.replace(tmp, path)


def read_history(workdir: str) -> list[dict]:
  """The records of DIR/history.jsonl, in the order written."""
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_history(workdir: str, step: int) -> None:
  """Drops records newer than the checkpoint a resumed run continues from (it will write them again)."""
  if jax.process_index() != 0:
    return
  records = [r for r in read_history(workdir) if r.get("step", 0) <= step]
  path = os.path.join(workdir, HISTORY_FILE)
  with open(path + ".tmp", "w") as f:
    for r in records:
      f.write(json.dumps(r, allow_nan=False) + "\n")
  os.replace(path + ".tmp", path)


def _append_history(workdir: str, record: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
      f.write(json.dumps(checkpoint_lib.to_jsonable(record), allow_nan=False) + "\n")


class _EpochStats:
  """Running training statistics of the current epoch (saved in mid-epoch checkpoints, so that a resumed
  run reports the same epoch loss as an uninterrupted one)."""

  def __init__(self, num_labels: int, saved: Mapping[str, Any] | None = None):
    saved = saved or {}
    self.loss_sum = float(saved.get("loss_sum", 0.0))
    self.steps = int(saved.get("steps", 0))
    self.confusion = np.asarray(saved.get("confusion", np.zeros((num_labels, num_labels))), np.float64)

  def add(self, loss: float, confusion: np.ndarray) -> None:
    self.loss_sum += loss
    self.steps += 1
    self.confusion += confusion

  def to_json(self) -> dict:
    return {"loss_sum": self.loss_sum, "steps": self.steps, "confusion": self.confusion.tolist()}


class _Clock:
  """Training throughput measured between sync points, with compilation and evaluation left out."""

  def __init__(self, step: int):
    self.compiled = False
    self._time, self._step = time.time(), step
    self.epoch_seconds, self.epoch_steps = 0.0, 0
    self.total_seconds, self.total_steps = 0.0, 0

  def new_epoch(self) -> None:
    self.epoch_seconds, self.epoch_steps = 0.0, 0

  def lap(self, step: int, count: bool = True) -> tuple[float, int]:
    """(seconds, steps) since the last lap; `count=False` keeps them out of the epoch's throughput."""
    now = time.time()
    seconds, steps = now - self._time, step - self._step
    self._time, self._step = now, step
    if count:
      self.epoch_seconds += seconds
      self.epoch_steps += steps
      self.total_seconds += seconds
      self.total_steps += steps
    return seconds, steps

  def epoch_rate(self) -> float:
    """Training steps per second in the current epoch."""
    return self.epoch_steps / self.epoch_seconds if self.epoch_seconds > 0 else float("nan")

  def eta(self, steps_left: int) -> str:
    """Time the remaining training steps take at this run's average rate."""
    if self.total_steps == 0 or self.total_seconds <= 0:
      return "?"
    return _format_seconds(steps_left * self.total_seconds / self.total_steps)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluating on `config.eval_split`.

  Returns:
    {'step', 'epoch', 'best_step', 'best_metric', 'best_value', 'metrics' (the last evaluation),
    'workdir'}.

  Raises:
    ValueError: a bad config (the message names the flag and the valid choices).
    FloatingPointError: the training loss became NaN/Inf (the message names the step); no checkpoint is
      written after it, so the latest and best checkpoints are those from before.
    checkpoint.CheckpointMismatchError: `workdir` holds a checkpoint of another model or config.
  """
  validate_config(config)
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)

  # ---- Devices and input ----
  par = parallel.DataParallel(config.parallelism)
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size, "--config.eval_batch_size")
  workdir = os.path.abspath(workdir)
  process_index, process_count = jax.process_index(), jax.process_count()
  steps_per_epoch = pipeline.steps_per_epoch(config, process_count)
  num_labels = metrics_lib.num_labels_for_classes(config.num_classes)
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top
  dataset_classes = sources.num_classes(config)
  if num_labels != dataset_classes:
    raise ValueError(f"{config.dataset.name!r} has {dataset_classes} classes (background included) but "
                     f"--config.num_classes={config.num_classes} predicts {num_labels}; set "
                     f"--config.num_classes={1 if dataset_classes == 2 else dataset_classes}.")
  if sources.num_examples(config, config.eval_split) == 0:  # fail now, not after the first epoch
    raise ValueError(f"--config.eval_split={config.eval_split!r} of {config.dataset.name!r} is empty; set "
                     "--config.dataset.validation_fraction > 0 or --config.eval_split=test.")
  total_steps = steps_per_epoch * config.num_epochs

  # ---- Model, optimizer, state (restored when the workdir has a checkpoint) ----
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
  model = create_model(config, bn_axis_name=par.axis_name)
  checkpoints = checkpoint_lib.Checkpoints(workdir, keep=config.keep_checkpoints, best_metric=config.best_metric)
  meta: dict = {}
  if checkpoints.latest_step() is not None:
    abstract = create_train_state(config, model, learning_rate_fn, abstract=True)
    model_tree, opt_tree, meta = checkpoints.restore("latest", *_split_state(abstract), fingerprint(config))
    if meta.get("steps_per_epoch") != steps_per_epoch:
      raise checkpoint_lib.CheckpointMismatchError(
          f"The checkpoint in {workdir} was written with {meta.get('steps_per_epoch')} steps per epoch, this "
          f"config gives {steps_per_epoch} (batch_size or the train split changed): resuming would not continue "
          "the same run. Restore those settings or train into a fresh --workdir.")
    host_state = abstract.replace(params=model_tree["params"], batch_stats=model_tree["batch_stats"],
                                  opt_state=opt_tree["opt_state"], step=opt_tree["step"])
    _truncate_history(workdir, int(meta["step"]))
    if meta["step"] >= total_steps:
      logging.info("%s already holds the finished run (step %d of %d); nothing to train.",
                   checkpoints.step_dir("latest"), meta["step"], total_steps)
    else:
      logging.info("Resuming from %s at step %d (epoch %d, step %d of it).", checkpoints.step_dir("latest"),
                   meta["step"], meta["epoch"] + 1, meta["step_in_epoch"])
  else:
    host_state = create_train_state(config, model, learning_rate_fn)
    logging.info("%s: %s parameters; %d steps (%d epochs of %d).", config.model,
                 f"{models.count_params(host_state.params):,}", total_steps, config.num_epochs, steps_per_epoch)
  # Written once the workdir's checkpoint (if any) is known to fit this config, so a mistaken config never
  # overwrites the record of the run that is there.
  if jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  step = int(meta.get("step", 0))
  state = par.replicate(host_state)
  del host_state

  # ---- Steps ----
  loss_fn = losses.get_loss_fn(config.loss, config.num_classes)
  p_train_step = par.wrap_train_step(functools.partial(
      train_step, loss_fn=loss_fn, learning_rate_fn=learning_rate_fn, num_classes=config.num_classes))
  p_eval_step = par.wrap_eval_step(functools.partial(
      eval_step, apply_fn=model.apply, loss_fn=loss_fn, num_classes=config.num_classes))

  writer = summary_lib.SummaryWriter(os.path.join(workdir, "tensorboard"))
  last_metrics = meta.get("metrics")
  epoch = step // steps_per_epoch
  stats = _EpochStats(num_labels, meta.get("epoch_stats") if step % steps_per_epoch else None)
  interval = _EpochStats(num_labels)
  pending: list[tuple[int, dict]] = []  # device metrics of steps not yet read back
  learning_rate = float(learning_rate_fn(step))
  clock = _Clock(step)
  every_steps = config.get("checkpoint_every_steps", 0)  # mid-epoch checkpoints (epoch ends always save)

  def drain(epoch: int) -> None:
    """Reads back pending step metrics (a sync point); stops the run at the first non-finite loss."""
    nonlocal learning_rate
    for step_no, m in pending:
      m = par.first(m)
      loss = float(m["loss"])
      if not math.isfinite(loss):
        raise FloatingPointError(
            f"The training loss is {loss} at step {step_no} (epoch {epoch + 1}); stopping. No checkpoint was "
            f"written after step {checkpoints.latest_step()}, so the latest and the best "
            f"(step {checkpoints.best_step()}) checkpoints in {workdir} are from before the divergence. "
            "Lower --config.learning_rate, set --config.grad_clip_norm, or check the data.")
      stats.add(loss, m["confusion"])
      interval.add(loss, m["confusion"])
      learning_rate = float(m["learning_rate"])
    pending.clear()

  def save(epoch: int, step_in_epoch: int, eval_metrics: dict | None) -> None:
    model_tree, opt_tree = _split_state(par.unreplicate(state))
    run_meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "steps_per_epoch": steps_per_epoch,
                "epoch_stats": stats.to_json(), "fingerprint": fingerprint(config), "model": config.model,
                "eval_split": config.eval_split, "best_metric": config.best_metric}
    if checkpoints.save(step, model_tree, opt_tree, run_meta, eval_metrics):
      logging.info("New best %s %.4f on %s at step %d.", config.best_metric,
                   eval_metrics[config.best_metric], config.eval_split, step)

  try:
    while epoch < config.num_epochs:
      # ---- One epoch (or what is left of it) ----
      start_in_epoch = step - epoch * steps_per_epoch
      ds = pipeline.create_train_dataset(config, epoch=epoch, process_index=process_index,
                                         process_count=process_count)
      if start_in_epoch:
        ds = ds.skip(start_in_epoch)
      clock.new_epoch()
      for device_batch, _ in par.prefetch(ds.as_numpy_iterator()):
        state, step_metrics = p_train_step(state, device_batch)
        step += 1
        pending.append((step, step_metrics))
        if not clock.compiled:
          jax.block_until_ready(step_metrics["loss"])
          logging.info("Compiled and ran the first step in %.1f s.", clock.lap(step, count=False)[0])
          clock.compiled = True
        if step % config.log_every_steps == 0 or step == total_steps:
          drain(epoch)
          seconds, steps = clock.lap(step)
          steps_per_sec = steps / seconds if seconds > 0 else float("nan")
          summary = metrics_lib.summarize(interval.confusion)
          train_loss = interval.loss_sum / max(interval.steps, 1)
          logging.info("epoch %d/%d step %d/%d | loss %.4f acc %.4f miou %.4f | lr %.2e | %.2f steps/s "
                       "%.1f images/s | ETA %s", epoch + 1, config.num_epochs, step, total_steps, train_loss,
                       summary["acc"], summary["miou"], learning_rate, steps_per_sec,
                       steps_per_sec * config.batch_size, clock.eta(total_steps - step))
          writer.scalars(step, {"train/loss": train_loss, "train/acc": summary["acc"],
                                "train/miou": summary["miou"], "train/dice": summary["dice"],
                                "learning_rate": learning_rate, "steps_per_sec": steps_per_sec,
                                "images_per_sec": steps_per_sec * config.batch_size})
          interval = _EpochStats(num_labels)
        if every_steps and step % every_steps == 0 and step % steps_per_epoch:
          drain(epoch)
          save(epoch, step - epoch * steps_per_epoch, None)
      drain(epoch)
      jax.block_until_ready(state.step)
      clock.lap(step)
      images_per_sec = clock.epoch_rate() * config.batch_size

      # ---- Evaluation, history, checkpoint ----
      epoch += 1
      eval_metrics = None
      if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
        eval_t0 = time.time()
        eval_metrics, panels = evaluate_split(
            config, par, p_eval_step, {"params": state.params, "batch_stats": state.batch_stats},
            config.eval_split, num_images=config.num_summary_images)
        train_summary = metrics_lib.summarize(stats.confusion)
        record = {"epoch": epoch, "step": step, "eval_split": config.eval_split,
                  "train_loss": stats.loss_sum / max(stats.steps, 1), "train_acc": train_summary["acc"],
                  "train_miou": train_summary["miou"], "train_dice": train_summary["dice"],
                  "val_loss": eval_metrics["loss"],
                  **{k: v for k, v in eval_metrics.items() if k != "loss"},
                  "learning_rate": learning_rate, "images_per_sec": images_per_sec,
                  "train_seconds": clock.epoch_seconds, "eval_seconds": time.time() - eval_t0}
        _append_history(workdir, record)
        logging.info("epoch %d/%d eval on %s: loss %.4f acc %.4f miou %.4f iou %.4f dice %.4f hd95 %.2f "
                     "(%.1f s)", epoch, config.num_epochs, config.eval_split, eval_metrics["loss"],
                     eval_metrics["acc"], eval_metrics["miou"], eval_metrics["iou"], eval_metrics["dice"],
                     eval_metrics["hd95"], record["eval_seconds"])
        split = config.eval_split
        writer.scalars(step, {f"{split}/{k}": v for k, v in eval_metrics.items() if np.ndim(v) == 0})
        writer.scalars(step, {"epoch/train_loss": record["train_loss"], "epoch/images_per_sec": images_per_sec})
        for i, picture in enumerate(panels):
          writer.image(step, f"{split}/input_label_prediction/{i}", picture)
        writer.flush()
        last_metrics = eval_metrics
      stats = _EpochStats(num_labels)
      save(epoch, 0, eval_metrics)
      clock.lap(step, count=False)  # evaluation and saving are not training time
  finally:
    checkpoints.wait()
    checkpoints.close()
    writer.close()

  return {"step": step, "epoch": epoch, "best_step": checkpoints.best_step(), "best_metric": config.best_metric,
          "best_value": checkpoints.best_value, "metrics": last_metrics, "workdir": workdir}


# ---------------------------------------------------------------------------------------------------------
# Evaluation and inference from a workdir.
# ---------------------------------------------------------------------------------------------------------


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to DIR/config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} a train.py workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _restore_model(config, workdir: str, checkpoint: str, model_target: dict) -> tuple[dict, dict, str]:
  """Restores {'params', 'batch_stats'} from 'best', 'latest' or a checkpoint path; returns (tree, meta, where)."""
  if checkpoint in checkpoint_lib.CHECKPOINT_CHOICES:
    sub = checkpoint_lib.BEST_DIR if checkpoint == "best" else checkpoint_lib.LATEST_DIR
    if not os.path.isdir(os.path.join(workdir, sub)):
      raise FileNotFoundError(f"No {checkpoint} checkpoint: {os.path.join(workdir, sub)} does not exist; train "
                              "first (train.py) or pass --checkpoint=PATH.")
    path = os.path.join(workdir, sub)
  else:
    path = checkpoint
  tree, _, meta = checkpoint_lib.restore_path(path, model_target, fingerprint(config))
  return tree, meta, meta["path"]


def load_for_inference(workdir: str, checkpoint: str = "best") -> tuple[flax.linen.Module, dict,
                                                                        ml_collections.ConfigDict]:
  """(model, variables, config) of a trained run, for `predict_logits` or `model.apply(..., train=False)`."""
  config = load_config(workdir)
  model = create_model(config)
  target = jax.eval_shape(lambda: init_variables(model, config, jax.random.key(0)))
  tree, _, _ = _restore_model(config, workdir, checkpoint, target)
  return model, jax.tree.map(jnp.asarray, tree), config


def evaluate(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "best", split: str = "test",
             save_predictions: bool = False) -> dict:
  """Evaluates a checkpoint of `workdir` on `split`; writes DIR/eval/<split>_metrics.json and returns it.

  Args:
    config: the run's config (its model must match the checkpoint's; the data fields pick what is measured).
    workdir: the train.py workdir.
    checkpoint: "best", "latest" or a checkpoint directory.
    split: "train", "validation" or "test".
    save_predictions: also write input | label | prediction panels to DIR/eval/<split>_predictions/.

  Returns:
    The metrics (acc, miou, iou, iou_per_class (background first), dice, precision, recall, specificity,
    hd95, loss, num_examples) and where they came from (split, checkpoint, checkpoint_step, selected_on).
  """
  validate_config(config)
  _choice(split, SPLITS, "--split")
  par = parallel.DataParallel(config.parallelism)
  par.check_batch_size(config.eval_batch_size, "--config.eval_batch_size")
  model = create_model(config, bn_axis_name=par.axis_name)
  target = jax.eval_shape(lambda: init_variables(model, config, jax.random.key(0)))
  tree, meta, where = _restore_model(config, os.path.abspath(workdir), checkpoint, target)
  loss_fn = losses.get_loss_fn(config.loss, config.num_classes)
  p_eval_step = par.wrap_eval_step(functools.partial(
      eval_step, apply_fn=model.apply, loss_fn=loss_fn, num_classes=config.num_classes))
  out_dir = os.path.join(os.path.abspath(workdir), "eval")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
  result, _ = evaluate_split(config, par, p_eval_step, par.replicate(tree), split,
                             predictions_dir=os.path.join(out_dir, f"{split}_predictions") if save_predictions
                             else None)
  result.update({"split": split, "checkpoint": checkpoint, "checkpoint_path": where,
                 "checkpoint_step": meta.get("step"), "model": config.model,
                 "selected_on": meta.get("eval_split") if checkpoint == "best" else None,
                 "best_metric": meta.get("best_metric")})
  result = checkpoint_lib.to_jsonable(result)
  _write_json(os.path.join(out_dir, f"{split}_metrics.json"), result)
  return result
