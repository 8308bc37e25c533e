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

# Where the best checkpoint may be chosen (`config.eval_split`).
EVAL_SPLITS = ("validation", "test")
# Integer fields of the training loop that must be >= 1.
_POSITIVE_FIELDS = ("batch_size", "eval_batch_size", "num_epochs", "eval_every_epochs", "keep_checkpoints",
                    "log_every_steps")

__all__ = ["EVAL_SPLITS", "SPLITS", "validate_config"]


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
