"""Vein segmentation trained on phantom clip frames (probe motion, pulsation, compression sweeps), 256x256.

  python -m veinjax.data.phantom_clips --root=data/phantom_clips                   # 60 train + 20 test clips
  python train.py --config=configs/phantom_clips.py --workdir=runs/clips
  python -m benchmarks.tracking --workdir=runs/clips                               # tracking on its masks

The model a tracker runs on at the bedside: frames of moving clips, including veins flattened to a 3 px
sliver under probe compression, which static phantom frames never show (a model trained on them misses most
compressed veins, and the tracker then loses them: README, Tracking). The frames are a `folder` dataset
(`veinjax.data.phantom_clips.export_clips`, masks 0/255); validation holds out whole clips
(`dataset.group_pattern`), since neighbouring frames of one clip are near copies. The model and recipe are
the realtime config's (configs/realtime.py), at the clips' size, for 10 epochs of the 4x larger
train split.
"""

import os

import ml_collections

from configs import realtime

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config() -> ml_collections.ConfigDict:
  config = realtime.get_config()
  config.image_size = 256
  config.dataset.name = "folder"
  config.dataset.root = os.path.join(_REPO, "data", "phantom_clips")
  config.dataset.mask_values = "0:0,255:1"
  config.dataset.group_pattern = r"^(\w+_clip\d+)_f"  # one clip, one group: validation holds out whole clips
  config.dataset.validation_fraction = 0.1
  # 1080 train frames (60 clips x 20, minus the 6 validation clips): 3.6x the phantom's 300 per epoch.
  config.num_epochs = 10
  return config
