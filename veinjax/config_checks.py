"""One check of a whole run config before anything expensive starts, built from each reader's own check.

Every field is validated by the code that reads it (the model factory, the loss, the optimizer, the
schedule, the parallelism, the dataset registry, the metrics); `validate_config` only calls those, so a bad
value fails in seconds, naming the flag and the valid choices, instead of after the data is prepared.
"""

from __future__ import annotations

import ml_collections

from veinjax import initialization
from veinjax import losses
from veinjax import metrics as metrics_lib
from veinjax import models
from veinjax import parallel
from veinjax import steps
from veinjax.data import SPLITS

# Where the best checkpoint may be chosen (`config.eval_split`); "none": nowhere, the last checkpoint is the best
# (a run with no held-out split, e.g. a final fit on train + validation: veinjax.final_fit).
NO_EVAL_SPLIT = "none"
EVAL_SPLITS = ("validation", "test", NO_EVAL_SPLIT)
# Integer fields of the training loop that must be >= 1.
_POSITIVE_FIELDS = ("batch_size", "eval_batch_size", "num_epochs", "eval_every_epochs", "keep_checkpoints",
                    "log_every_steps")

__all__ = ["EVAL_SPLITS", "NO_EVAL_SPLIT", "SPLITS", "validate_config"]


def _check_image_size(size) -> None:
  """--config.image_size must suit every model (`models.check_input_size`); the message names the flag."""
  try:
    models.check_input_size(size, size)
  except ValueError:
    divisor = models.layers.SIZE_DIVISOR
    below, above = int(size) // divisor * divisor, max(-(-int(size) // divisor) * divisor, divisor)
    choices = " or ".join(str(c) for c in dict.fromkeys((below, above)) if c > 0)
    raise ValueError(f"--config.image_size={size} is not a positive multiple of {divisor} (the models' input "
                     f"must divide by {divisor}); use --config.image_size={choices}.") from None


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the flag and the valid choices, on a config that cannot train.

  Dataset-specific fields (paths, label maps) are checked by `veinjax.data` where the data is read.
  """
  steps.create_model(config)  # model, encoder, num_classes
  losses.get_loss_fn(config.loss, config.num_classes)
  steps.create_optimizer(config, steps.create_learning_rate_fn(config, steps_per_epoch=1))
  steps.ema_decay(config)
  steps.check_choice(config.eval_split, EVAL_SPLITS, "--config.eval_split")
  parallel.check_mode(config.parallelism)
  initialization.check_config(config)  # encoder_weights / init_from (their files: when a fresh run reads them)
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow, needed to train anyway)
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top
  sources.get_source(config)
  pipeline.input_normalization(config)  # input_mean / input_std
  _check_image_size(config.image_size)
  for flag in _POSITIVE_FIELDS:
    if int(config[flag]) < 1:
      raise ValueError(f"--config.{flag} must be >= 1; got {config[flag]}.")
  if config.get("checkpoint_every_steps", 0) < 0:
    raise ValueError(f"--config.checkpoint_every_steps must be >= 0 (0 = at evaluations only); got "
                     f"{config.checkpoint_every_steps}.")
  metrics_lib.check_metric_name(config.best_metric)
  _check_final_fit(config)


def _check_final_fit(config: ml_collections.ConfigDict) -> None:
  """A final fit recovers the validation examples for the epoch count chosen on them: it needs that choice.
  (Whether the validation split is carved from train, so that it can go back, is the data's question:
  `veinjax.final_fit.check_data`.)"""
  if not config.get("final_fit", False):
    return
  if config.eval_split != "validation":
    raise ValueError(f"--config.final_fit=True retrains on train + validation for the epoch count the validation "
                     f"split chose, but with --config.eval_split={config.eval_split!r} nothing is chosen on "
                     "validation; set --config.eval_split=validation or --config.final_fit=False.")
  if float(config.dataset.validation_fraction) == 0.0:
    raise ValueError("--config.final_fit=True retrains on train + validation for the epoch count the validation "
                     "split chose, but --config.dataset.validation_fraction=0 carves no validation split from "
                     "train; set it > 0 (e.g. 0.1) or --config.final_fit=False.")
