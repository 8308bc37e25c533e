"""FCN-8s (Long et al., 2015) on VGG-16, the paper's weakest baseline, on the paper's recipe.

  python train.py --config=configs/fcn8s.py --workdir=runs/fcn8s
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = "fcn8s"  # has its own encoder (VGG-16): config.encoder is not used
  return config
