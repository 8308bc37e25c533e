"""Post-processing of predicted class masks: connected components per class (scipy.ndimage), numpy only.

  mask = postprocess(mask, num_labels, largest=1, fill_holes=True, min_size=20)

Each step works class by class on the foreground classes (background = 0) of one [H, W] mask and is off by
default. Order: remove small components, fill holes, keep the k largest. A removed pixel becomes background;
a filled hole takes the class around it. Connectivity is 8-neighbour (a vessel's diagonal pixels are one
vessel). Probabilities are never changed: these steps act on the class mask only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)
STEP_NAMES = ("largest", "fill_holes", "min_size")


@dataclasses.dataclass(frozen=True)
class PostProcess:
  """Which steps run: `largest` = keep the k largest components per class (0 = all), `fill_holes`,
  `min_size` = drop components under N pixels (0 = none)."""
  largest: int = 0
  fill_holes: bool = False
  min_size: int = 0

  def __post_init__(self):
    if self.largest < 0 or self.min_size < 0:
      raise ValueError(f"largest={self.largest} and min_size={self.min_size} must be >= 0 (0 = off).")

  @property
  def enabled(self) -> bool:
    return bool(self.largest or self.fill_holes or self.min_size)

  @classmethod
  def parse(cls, spec: str, flag: str = "--postprocess") -> "PostProcess":
    """From "largest,fill_holes,min_size=20" (largest alone = 1 component; largest=3 keeps three)."""
    values = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
      name, _, number = item.partition("=")
      if name not in STEP_NAMES:
        raise ValueError(f"{flag}={spec!r}: unknown step {name!r}; choose from {', '.join(STEP_NAMES)} "
                         "(e.g. largest,fill_holes,min_size=20).")
      if name == "fill_holes":
        if number:
          raise ValueError(f"{flag}={spec!r}: fill_holes takes no value.")
        values[name] = True
        continue
      try:
        values[name] = int(number) if number else (1 if name == "largest" else None)
      except ValueError:
        raise ValueError(f"{flag}={spec!r}: {name}={number!r} is not an integer.") from None
      if values[name] is None:
        raise ValueError(f"{flag}={spec!r}: min_size needs a pixel count, e.g. min_size=20.")
    return cls(**values)


def _components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(labelled components, their sizes indexed by label; sizes[0] is unused)."""
  labels, count = ndimage.label(binary, structure=_EIGHT_NEIGHBOURS)
  return labels, np.bincount(labels.ravel(), minlength=count + 1)


def remove_small(binary: np.ndarray, min_size: int) -> np.ndarray:
  """`binary` without its components of fewer than `min_size` pixels."""
  labels, sizes = _components(binary)
  keep = sizes >= min_size
  keep[0] = False
  return keep[labels]


def keep_largest(binary: np.ndarray, k: int) -> np.ndarray:
  """The `k` largest components of `binary` (ties: the lower label, i.e. the first in raster order)."""
  labels, sizes = _components(binary)
  if len(sizes) - 1 <= k:
    return binary.astype(bool)
  order = np.argsort(-sizes[1:], kind="stable")[:k] + 1
  keep = np.zeros(len(sizes), bool)
  keep[order] = True
  return keep[labels]


def postprocess(mask: np.ndarray, num_labels: int, steps: PostProcess) -> np.ndarray:
  """The class mask [H, W] after `steps`, each applied per foreground class 1..num_labels-1."""
  if not steps.enabled:
    return mask
  out = np.zeros_like(mask)
  for c in range(1, num_labels):
    binary = mask == c
    if steps.min_size:
      binary = remove_small(binary, steps.min_size)
    if steps.fill_holes:
      # A hole is filled only where no other foreground class lies, so classes never overwrite each other.
      binary = ndimage.binary_fill_holes(binary) & ((mask == 0) | (mask == c))
    if steps.largest:
      binary = keep_largest(binary, steps.largest)
    out[binary & (out == 0)] = c
  return out
