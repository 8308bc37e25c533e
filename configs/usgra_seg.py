"""ResNet34-UNet on the public usgra-seg ultrasound set (blood vessels, binary), the paper's recipe.

  python train.py --config=configs/usgra_seg.py --workdir=runs/usgra_seg \
      [--config.dataset.root=/path/to/usgra-seg]

`dataset.root` is a clone of github.com/tmkand/usgra-seg; it defaults to ../shared/data/usgra-seg beside this
repository. 204 train / 40 test pairs; the best checkpoint is chosen on a validation split carved from train.
`--config.dataset.usgra_config=nerve_vessel --config.num_classes=3` trains nerve + vessel (softmax).
"""

import os

import ml_collections

from configs import default

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset.name = "usgra_seg"
  config.dataset.root = os.path.normpath(os.path.join(_REPO, "..", "shared", "data", "usgra-seg"))
  config.dataset.usgra_config = "vessel"
  config.num_classes = 1
  return config
