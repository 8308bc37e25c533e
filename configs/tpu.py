"""The paper's recipe scaled to every accelerator of a TPU (or GPU) host: bf16 computation, a large batch.

  python train.py --config=configs/tpu.py --workdir=gs://bucket/runs/tpu

Parameters, optimizer state and the loss stay float32 (`half_precision` only lowers the computation). A
64-image batch gives few steps per epoch on the 300-image phantom, so the run is longer and the learning
rate follows a warmed-up cosine. The global batch must divide over the devices (8 per TPU v3/v4 host).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.half_precision = True
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 60
  config.learning_rate = 2e-3
  config.lr_schedule = "cosine"
  config.warmup_epochs = 2.0
  config.log_every_steps = 5
  return config
