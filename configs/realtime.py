"""Real time: the recommended model for a puncture robot's CPU, light_unet on MobileNetV3-small at 256x256.

  python train.py --config=configs/realtime.py --workdir=runs/realtime
  python export.py --workdir=runs/realtime --format=tflite          # then veinjax.exported.load(...)

light_unet:mobilenetv3_small (980,353 parameters; veinjax/models/light_decoder.py on mobilenet.py) was picked
by measurement among the light models (`python -m benchmarks.realtime` and the README's Dice per light
model): the most accurate of those that run >= 100 frames/s end to end on one core of the 2-core CPU (215
frames/s under XLA). ultralight_unet is 2.5x faster still (544 frames/s) but lost 0.03 more vein Dice on the
phantom and 0.02 more vessel Dice on usgra-seg at 128x128 (3 seeds each, at 30 / 40 epochs). The recipe is
the quickstart's (batch 8, Adam 2e-3 with a cosine schedule and half an epoch of warm-up, BCE + Dice, its
augmentation) at 256x256 on the phantom; for another dataset set --config.dataset.* as in configs/usgra_seg.py.

Epochs: a network this small underfits from scratch with ResNet34-UNet's epoch count and trains ~4-5x more
images per second, so it gets several times the epochs: 60 here (the quickstart's ResNet34-UNet: 8), 160 on
usgra-seg (configs/usgra_seg_best.py: 40; add --config.num_epochs=160). Measured at 128x128, 3 seeds each
(README, "Models"): with ResNet34-UNet's epochs light_unet was 0.029 (phantom) and 0.115 (usgra-seg) Dice
behind it, with these 0.005 behind (0.967 ± 0.001) and 0.005 ahead (0.795 ± 0.014).
"""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.model = "light_unet"
  config.encoder = "mobilenetv3_small"
  config.image_size = 256
  config.dataset.phantom_size = 256
  config.num_epochs = 60
  return config
