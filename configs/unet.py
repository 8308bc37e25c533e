"""The original U-Net (Ronneberger et al., 2015) on the paper's recipe.

  python train.py --config=configs/unet.py --workdir=runs/unet
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = "unet"  # has its own encoder: config.encoder is not used
  return config
