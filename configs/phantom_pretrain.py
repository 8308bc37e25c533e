"""Pre-training on the domain-randomised phantom only: ResNet34-UNet at 128x128, the quickstart recipe.

  python train.py --config=configs/phantom_pretrain.py --workdir=runs/phantom_pretrain
  python eval.py --workdir=runs/phantom_pretrain --split=test

The data is `vein_phantom_random` (veinjax.data.phantom_random with its default ranges), generated at the
model's size, with vessel masks (veins and arteries: the usgra-seg "vessel" class, the sim-to-real target;
--config.dataset.phantom_foreground=vein for veins only). Everything else is configs/quickstart.py (batch 8,
Adam 2e-3 with a cosine schedule, BCE + Dice, 8 epochs, its augmentation), but with 1500 train frames instead
of 300: a randomised look per frame wants more frames, not more epochs. That is 5x the quickstart's steps
(1350 train frames after the 10% validation carve-out, 169 steps an epoch). The validation split is carved
from the phantom's train frames, so the best checkpoint is chosen on phantom frames, never on real data.
"""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.dataset.name = "vein_phantom_random"
  # Read by veinjax.data.sources (default "vessel" where a config lacks the field).
  config.dataset.phantom_foreground = "vessel"
  # Randomisation groups switched off, comma-separated (veinjax.data.phantom_random.GROUPS; for ablations,
  # see benchmarks/phantom_ablation.py); empty = every group randomised.
  config.dataset.phantom_random_off = ""
  # Ranges changed from RandomizationRanges' defaults, "field=lo:hi; field=value" (e.g. "lumen_echo=0:0.5");
  # empty = the defaults. Each field's documented range is in veinjax/data/phantom_random_ranges.py.
  config.dataset.phantom_random_settings = ""
  config.dataset.phantom_num_train = 1500
  config.dataset.phantom_num_test = 200
  config.dataset.phantom_size = 128
  config.image_size = 128
  return config
