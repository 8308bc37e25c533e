"""ResNet34-UNet, the paper's model: the default recipe, named for symmetry with the other model configs.

  python train.py --config=configs/resnet34_unet.py --workdir=runs/resnet34_unet
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = "resnet34_unet"
  config.encoder = "resnet34"
  return config
