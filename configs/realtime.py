"""Real time: the recommended model for a puncture robot's CPU, ultralight_unet at 256x256.

  python train.py --config=configs/realtime.py --workdir=runs/realtime
  python export.py --workdir=runs/realtime --format=tflite          # then veinjax.exported.load(...)

ultralight_unet (172,065 parameters; veinjax/models/ultralight.py) was picked by measurement among the light
models (`python -m benchmarks.realtime`; the README's real-time table): the fastest end to end on one core
of the 2-core CPU, with the vessel Dice of ResNet34-UNet kept (README). The recipe is the quickstart's (batch
8, Adam 2e-3 with a cosine schedule and half an epoch of warm-up, BCE + Dice, its augmentation) at 256x256
on the phantom; for another dataset set --config.dataset.* as in configs/usgra_seg.py. A network this
small trains from scratch for more epochs than ResNet34-UNet in the same time: 30 here.
"""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.model = "ultralight_unet"
  config.image_size = 256
  config.dataset.phantom_size = 256
  config.num_epochs = 30
  return config
