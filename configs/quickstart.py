"""Quickstart: the paper's ResNet34-UNet on the built-in vein phantom, small enough for a laptop CPU.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python eval.py --workdir=runs/quickstart --split=test --save_predictions

Differs from the paper's recipe (configs/default.py) only where a 2-core CPU needs it: 128x128 frames (the
phantom generated at that size), batch 8 with a cosine learning-rate schedule, and Dice added to the
cross-entropy so that a few epochs reach a good vein IoU. See the README for the time and the test figures.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.image_size = 128
  config.dataset.phantom_size = 128
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_epochs = 8
  config.loss = "bce_dice"
  config.learning_rate = 2e-3
  config.lr_schedule = "cosine"
  config.warmup_epochs = 0.5
  config.log_every_steps = 10
  return config
