"""Synthetic ultrasound-like frames for the benchmarks (numpy only: importable without TensorFlow)."""

from __future__ import annotations

import numpy as np


def synthetic_frame(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """A speckled grey uint8 frame [S, S] with 1 to 3 dark ellipses; the ellipses are the mask [S, S]."""
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
  mask = np.zeros((size, size), np.uint8)
  for _ in range(rng.integers(1, 4)):
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    ay, ax = rng.uniform(0.04, 0.12, 2) * size
    mask |= (((ys - cy) / ay) ** 2 + ((xs - cx) / ax) ** 2 < 1.0).astype(np.uint8)
  image = 0.5 * rng.rayleigh(1.0, (size, size)) * np.where(mask, 0.1, 1.0)
  return np.clip(image * 180, 0, 255).astype(np.uint8), mask
