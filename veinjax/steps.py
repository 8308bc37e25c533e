"""The model, optimizer and state of a run, and its steps: pure functions of (state, batch), no loop, no files.

  model = create_model(config)                       # the config's Flax module
  state = create_train_state(config, model, lr_fn)   # TrainState with BatchNorm statistics
  state = create_train_state(config, model, lr_fn, variables=initialization.initial_variables(config, model))
  p_train_step, p_eval_step = wrap_steps(config, par, model, lr_fn)   # under pmap or jit (veinjax.parallel)

`train_step` and `eval_step` take `axis_name`: "batch" under pmap, None under jit; metrics leave a step as
psum-able sums (a confusion matrix, a loss sum and a count), never means of means. This module imports
without TensorFlow, so an accelerator machine without it can train on numpy batches and benchmark.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from veinjax import checkpoint as checkpoint_lib
from veinjax import labels as labels_lib
from veinjax import losses
from veinjax import metrics as metrics_lib
from veinjax import models
from veinjax import parallel

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")

PyTree = Any


def check_choice(value: str, choices, flag: str) -> None:
  """A ValueError naming the flag and the valid choices unless `value` is one of them."""
  if value not in choices:
    raise ValueError(f"Unknown {flag}={value!r}; choose one of {', '.join(choices)}.")


# ---- Model, optimizer, state ----


class TrainState(train_state.TrainState):
  """Flax's TrainState (step, params, opt_state, apply_fn, tx) plus BatchNorm statistics, and with
  `config.ema_decay` > 0 the exponential moving average of both (`ema`: {'params', 'batch_stats'}; None when
  off), which is what the run evaluates and its checkpoints' model holds (see `ema_update`)."""
  batch_stats: Any = None
  ema: Any = None


def ema_decay(config: ml_collections.ConfigDict) -> float:
  """`config.ema_decay` (0, the default and a config.json written before the field existed: no average),
  checked: 0 <= decay < 1."""
  decay = config.get("ema_decay", 0.0)
  if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0.0 <= decay < 1.0:
    raise ValueError(f"--config.ema_decay must be in [0, 1) (0: no weight average; e.g. 0.999); got {decay!r}.")
  return float(decay)


def create_model(config: ml_collections.ConfigDict, bn_axis_name: str | None = None) -> flax.linen.Module:
  """The config's model; bf16 computation under `config.half_precision` (parameters stay float32).

  `models.create_model` validates model, encoder and num_classes, naming the valid choices;
  bn_running_variance and model_init (issue 18: train as the PyTorch reference) are checked here, and read
  with their defaults from a config.json written before they existed (inference, export, init_from).
  """
  bn_running_variance = config.get("bn_running_variance", "biased")
  model_init = config.get("model_init", "veinjax")
  check_choice(bn_running_variance, models.BN_RUNNING_VARIANCES, "--config.bn_running_variance")
  check_choice(model_init, models.MODEL_INITS, "--config.model_init")
  kwargs = {}
  # Models with a fixed encoder (unet, fcn8s) reject any other value; the encoder field is for the others.
  if config.model not in models.FIXED_ENCODERS:
    kwargs["encoder"] = config.encoder
  if config.model == "unet":
    kwargs["unet_widths"] = unet_widths(config)
  try:
    return models.create_model(config.model, num_classes=config.num_classes,
                               dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
                               bn_axis_name=bn_axis_name, bn_running_variance=bn_running_variance,
                               model_init=model_init, **kwargs)
  except ValueError as e:
    flags = "--config.model / --config.encoder / --config.num_classes"
    if config.model == "unet":
      flags += " / --config.unet_widths"
    if model_init != "veinjax":
      flags += " / --config.model_init"
    raise ValueError(f"{e} ({flags})") from None


def unet_widths(config: ml_collections.ConfigDict) -> tuple:
  """`unet`'s stage widths; the original's for a config.json written before the field existed. (A tuple: a
  config read back from JSON has a list.)"""
  widths = config.get("unet_widths", models.UNET_WIDTHS)
  return tuple(widths) if isinstance(widths, (list, tuple)) else widths


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """What a checkpoint must share with a config to be restored into its model (the optimizer is checked by
  restoring its state: see `veinjax.checkpoint`)."""
  result = {"model": config.model,
            "encoder": None if config.model in models.FIXED_ENCODERS else config.encoder,
            "num_classes": int(config.num_classes), "in_channels": int(config.in_channels)}
  if config.model == "unet":  # a list: what the checkpoint's JSON metadata reads back
    result["unet_widths"] = list(unet_widths(config))
  return result


def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """`config.lr_schedule` over the whole run, with `warmup_epochs` of linear warmup from 0."""
  check_choice(config.lr_schedule, LR_SCHEDULES, "--config.lr_schedule")
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
  check_choice(config.optimizer, OPTIMIZERS, "--config.optimizer")
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


# The model is a static argument: equal modules (the same config) share one compiled initialisation per
# process (seconds each: every parameter's random initialiser is its own piece of the program), e.g. a
# compare or recipe runner's runs, a resumed run, or the test suite's many tiny runs.
@functools.partial(jax.jit, static_argnums=0)
def _initialize(model: flax.linen.Module, rng: jax.Array, inputs: jax.Array) -> dict:
  return model.init(rng, inputs, train=False)


def init_variables(model: flax.linen.Module, config, rng: jax.Array) -> dict:
  """{'params', 'batch_stats'} of a freshly initialised model."""
  shape = (1, config.image_size, config.image_size, config.in_channels)
  variables = _initialize(model, rng, jnp.zeros(shape))
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def abstract_variables(model: flax.linen.Module, config) -> dict:
  """The shapes and dtypes of `init_variables` without computing them (a target to restore into)."""
  return jax.eval_shape(lambda: init_variables(model, config, jax.random.key(0)))


def create_train_state(config, model: flax.linen.Module, learning_rate_fn: optax.Schedule,
                       rng: jax.Array | None = None, abstract: bool = False,
                       variables: Mapping[str, PyTree] | None = None) -> TrainState:
  """A TrainState for `model` at step 0 with a fresh optimizer state; `abstract=True` gives only its shapes
  (to restore into, without initialising).

  `variables` ({'params', 'batch_stats'}) start the state instead of `init_variables(model, config, rng)`:
  a fresh run passes `veinjax.initialization.initial_variables` (pretrained encoder, init_from).
  """
  rng = jax.random.key(config.seed) if rng is None else rng
  tx = create_optimizer(config, learning_rate_fn)

  use_ema = ema_decay(config) > 0

  def make(rng):
    init = init_variables(model, config, rng) if variables is None else variables
    # The first step replaces the average's start (`ema_update`); a copy, as the state is donated under jit.
    ema = None
    if use_ema:
      ema = jax.tree.map(jnp.array, {"params": init["params"], "batch_stats": init["batch_stats"]})
    return TrainState.create(apply_fn=model.apply, params=init["params"], tx=tx,
                             batch_stats=init["batch_stats"], ema=ema)

  return jax.eval_shape(make, rng) if abstract else make(rng)


def trained_variables(state: TrainState) -> dict:
  """{'params', 'batch_stats'} as trained (never the weight average)."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def model_variables(state: TrainState) -> dict:
  """The variables the run evaluates and checkpoints as its model: the weight average where there is one."""
  return state.ema if state.ema is not None else trained_variables(state)


def split_state(state: TrainState) -> tuple[dict, dict]:
  """The checkpoint items of a (host) state: the model (`model_variables`, what eval, inference, export and
  init_from read) and what resuming adds (with a weight average, the trained variables themselves)."""
  resume = {"opt_state": state.opt_state, "step": state.step}
  if state.ema is not None:
    resume["train_variables"] = trained_variables(state)
  return model_variables(state), resume


def join_state(abstract: TrainState, model_tree: dict, opt_tree: dict) -> TrainState:
  """The inverse of `split_state`: the state of `abstract`'s structure from restored checkpoint items."""
  trained = opt_tree["train_variables"] if abstract.ema is not None else model_tree
  return abstract.replace(params=trained["params"], batch_stats=trained["batch_stats"],
                          opt_state=opt_tree["opt_state"], step=opt_tree["step"],
                          ema=model_tree if abstract.ema is not None else None)


def restore_variables(config, model: flax.linen.Module, workdir: str,
                      checkpoint: str = "best") -> tuple[dict, dict]:
  """({'params', 'batch_stats'} as host numpy, the checkpoint's meta) of a run's 'best', 'latest' or a
  checkpoint directory; a checkpoint of another model or config is a `CheckpointMismatchError`."""
  tree, _, meta = checkpoint_lib.restore_path(checkpoint_lib.resolve(workdir, checkpoint),
                                              abstract_variables(model, config), fingerprint(config))
  return tree, meta


# ---- Steps ----


def ema_update(ema: PyTree, variables: PyTree, step: jax.Array, decay: float) -> PyTree:
  """The weight average after optimizer step `step` (1 for the first): the mean of the variables after steps
  1..step weighted decay**(step - i), normalised as Adam corrects its moments' bias, so neither the
  initialisation nor a zero start weighs in. As an update: ema <- d ema + (1 - d) variables with
  d = decay (1 - decay**(step - 1)) / (1 - decay**step): 0 at the first step (the average is its variables),
  about (step - 1) / step (a plain mean) while step << 1 / (1 - decay), then `decay`."""
  t, log_decay = jnp.asarray(step, jnp.float32), math.log(decay)
  d = decay * jnp.expm1((t - 1.0) * log_decay) / jnp.expm1(t * log_decay)  # (1 - decay**n = -expm1(n log decay))
  return jax.tree.map(lambda e, v: (d * e + (1.0 - d) * v).astype(e.dtype), ema, variables)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _pmean(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, loss_fn: losses.LossFn,
               learning_rate_fn: optax.Schedule, num_classes: int, axis_name: str | None = None,
               ema_decay: float = 0.0) -> tuple[TrainState, dict]:
  """One optimizer step on a batch {'image' [N,H,W,C], 'label' [N,H,W]}; where the state keeps a weight
  average (`state.ema`), it is updated with `ema_decay` (`ema_update`).

  Pixels labelled `veinjax.labels.IGNORE_LABEL` count in neither the loss (if `loss_fn` was built with
  ignore_label=True, see `veinjax.losses`) nor the confusion matrix.

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
  if state.ema is not None:
    new_state = new_state.replace(ema=ema_update(state.ema, trained_variables(new_state), new_state.step, ema_decay))
  pred = metrics_lib.predictions(logits, num_classes)
  confusion = metrics_lib.confusion_matrix(pred, labels, metrics_lib.num_labels_for_classes(num_classes), weights)
  return new_state, {"loss": _pmean(loss, axis_name), "confusion": _psum(confusion, axis_name),
                     "learning_rate": learning_rate_fn(state.step)}


def eval_step(variables: Mapping[str, PyTree], batch: Mapping[str, jax.Array], *, apply_fn: Callable,
              loss_fn: losses.LossFn, num_classes: int, axis_name: str | None = None) -> dict:
  """Evaluates a padded batch {'image', 'label', 'valid' bool [N]} with the model's running statistics.

  Returns sums over the real examples of all devices ('confusion', 'loss_sum', 'count') and the per-example
  'prediction' (uint8 class indices [N, H, W]) for the host's HD95 and pictures. Ignored pixels count as in
  `train_step` (the prediction is made everywhere; the host's HD95 drops them too).
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


def config_loss_fn(config) -> losses.LossFn:
  """The config's loss; it honours ignored pixels where the dataset may have them (the plain formula, op for
  op, elsewhere: see `veinjax.losses`)."""
  return losses.get_loss_fn(config.loss, config.num_classes,
                            ignore_label=labels_lib.may_have_ignored_pixels(config))


def wrap_eval_step(config, par: parallel.DataParallel, model: flax.linen.Module) -> Callable:
  """`eval_step` with the config's loss, under `par`'s parallelism."""
  loss_fn = config_loss_fn(config)
  return par.wrap_eval_step(functools.partial(
      eval_step, apply_fn=model.apply, loss_fn=loss_fn, num_classes=config.num_classes))


def wrap_train_step(config, par: parallel.DataParallel, learning_rate_fn: optax.Schedule) -> Callable:
  """`train_step` with the config's loss and schedule, under `par`'s parallelism."""
  loss_fn = config_loss_fn(config)
  return par.wrap_train_step(functools.partial(
      train_step, loss_fn=loss_fn, learning_rate_fn=learning_rate_fn, num_classes=config.num_classes,
      ema_decay=ema_decay(config)))
