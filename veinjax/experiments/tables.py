"""What the experiment tables share: model display names, mean ± std, number formatting, config differences.

`compare` (Table 1) and `recipes` (the recipe search) both build their tables from these; nothing here
trains, reads a workdir or imports JAX.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

# Names as in the paper; "{encoder}" is filled from config.encoder (e.g. "ResNet18-UNet"), so a row never
# claims a ResNet34 encoder it did not have.
_DISPLAY_NAMES = {
    "resnet34_unet": "{encoder}-UNet",
    "deeplabv3plus": "DeepLab v3+ ({encoder})",
    "fcn8s": "FCN-8s",
    "unet": "U-Net",
}


def display_name(model: str, encoder: str) -> str:
  """The model's name in the table and figures: ("resnet34_unet", "resnet18") -> "ResNet18-UNet"."""
  return _DISPLAY_NAMES.get(model, model).format(encoder=encoder.replace("resnet", "ResNet"))


def foreground_name(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
  """What the foreground IoU / Dice columns measure on the config's dataset: "Vein", "Vessel"..."""
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top  # TensorFlow only when needed
  if not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)  # a config JSON read back from a workdir
  return sources.foreground_name(config)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
  """Mean and sample standard deviation (ddof=1; 0 for one value), ignoring missing / NaN values."""
  values = [float(v) for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None, None
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), std


def format_mean_std(mean: float | None, std: float | None, num_seeds: int, digits: int = 3) -> str:
  """"0.943 ± 0.011" (one seed: "0.943"; nothing measured: "—")."""
  if mean is None:
    return "—"
  return f"{mean:.{digits}f} ± {std:.{digits}f}" if num_seeds > 1 else f"{mean:.{digits}f}"


def format_number(value: float | None, digits: int = 3) -> str:
  return "—" if value is None else f"{value:.{digits}f}"


def plural(count: int, noun: str) -> str:
  return f"{count} {noun}{'' if count == 1 else 's'}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested config JSON as dotted field names: {"augment": {"gamma": 0.3}} -> {"augment.gamma": 0.3}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
  """The dotted fields (sorted) whose values differ between two config JSONs, or that only one has."""
  stored, wanted = flatten(stored), flatten(wanted)
  absent = object()
  return sorted(k for k in set(stored) | set(wanted) if stored.get(k, absent) != wanted.get(k, absent))
