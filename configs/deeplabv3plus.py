"""DeepLab v3+ (Chen et al., 2018) on a ResNet34 encoder, the paper's strongest baseline, on its recipe.

  python train.py --config=configs/deeplabv3plus.py --workdir=runs/deeplabv3plus
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = "deeplabv3plus"
  config.encoder = "resnet34"
  return config
