"""Pictures of a segmentation: colour maps, overlays, panels, PNG encoding (numpy and Pillow only).

Every picture of veinjax comes from here: TensorBoard images (`veinjax.summary_writer`), `eval.py
--save_predictions`, the figures of `veinjax.experiments.plots` and `predict.py`'s overlays.
`to_uint8` turns a model input (any float range) into uint8 RGB; `panel` puts input | label | prediction side
by side.
"""

from __future__ import annotations

import io

import numpy as np

from veinjax.labels import IGNORE_LABEL

# Background black; the first foreground class (the vein) red, then other classes.
PALETTE = np.array([[0, 0, 0], [230, 40, 40], [40, 200, 60], [50, 110, 240], [240, 200, 30], [200, 60, 220]],
                   np.uint8)
IGNORE_COLOR = np.array([128, 128, 128], np.uint8)  # ignored pixels of a label (IGNORE_LABEL): gray


def to_uint8(image: np.ndarray) -> np.ndarray:
  """An image [H, W, C] (C = 1 or 3) -> uint8 RGB [H, W, 3]: a uint8 frame as it is, a model input (any
  float range) min-max scaled per image."""
  if np.asarray(image).dtype == np.uint8:
    image = np.asarray(image)
    image = image[..., None] if image.ndim == 2 else image
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  lo, hi = float(image.min()), float(image.max())
  scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
  rgb = np.repeat(scaled, 3, axis=-1) if scaled.shape[-1] == 1 else scaled[..., :3]
  return np.round(rgb * 255).astype(np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
  """Class indices [H, W] -> uint8 RGB [H, W, 3] (`PALETTE`, cycling past its end; IGNORE_LABEL gray)."""
  labels = np.asarray(labels).astype(np.int64)
  return np.where((labels == IGNORE_LABEL)[..., None], IGNORE_COLOR, PALETTE[labels % len(PALETTE)])


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """The input with the foreground classes of `labels` blended over it (uint8 RGB)."""
  base = to_uint8(image).astype(np.float32)
  colors = colorize(labels).astype(np.float32)
  mask = (np.asarray(labels) > 0)[..., None]
  return np.where(mask, (1 - alpha) * base + alpha * colors, base).round().astype(np.uint8)


def panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
  """[input | label overlay | prediction overlay] as one uint8 RGB image with 2-pixel white gaps."""
  h = np.asarray(image).shape[0]
  gap = np.full((h, 2, 3), 255, np.uint8)
  return np.concatenate([to_uint8(image), gap, overlay(image, label), gap, overlay(image, prediction)], axis=1)


def encode_png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()
