"""The randomised phantom's scan geometry: where each frame pixel lies in beam space, and scan conversion.

`sample_geometry` draws the `geometry` group: a linear or sector (curvilinear / phased) scan, letterboxed
into the frame with black margins, or (off) a linear full-frame scan, "identity". `scan_convert` resamples
the beam-space display and instance mask into the frame; outside the fan or the box both are 0.
"""

import dataclasses
import math
from typing import Tuple

import numpy as np

from veinjax.data.phantom_random_fields import coords, uniform
from veinjax.data.phantom_random_ranges import RandomizationRanges


@dataclasses.dataclass
class Geometry:
  """A scan: its kind, its box in the frame and, for a sector, the fan (apex, radii, half angle)."""
  kind: str  # "identity" | "linear" | "sector"
  box: Tuple[float, float, float, float]  # y0, y1, x0, x1 in frame pixels
  apex: Tuple[float, float] = (0.0, 0.0)  # (y, x) of a sector's apex
  radii: Tuple[float, float] = (0.0, 0.0)  # r0, r1
  half_angle: float = 0.0

  def scale(self, n: int, row: float) -> Tuple[float, float]:
    """Frame pixels per beam-space pixel (axially, laterally) at beam-space depth `row`."""
    y0, y1, x0, x1 = self.box
    if self.kind == "sector":
      r0, r1 = self.radii
      radius = r0 + (row / n) * (r1 - r0)
      return (r1 - r0) / n, radius * 2 * self.half_angle / n
    return (y1 - y0) / n, (x1 - x0) / n

  def beam_coordinates(self, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beam-space (row, column) of every frame pixel centre [n, n] each, and which lie inside [n, n]."""
    ys, xs = coords(n)
    y0, y1, x0, x1 = self.box
    if self.kind == "sector":
      ay, ax = self.apex
      dy, dx = ys - ay, xs - ax
      radius = np.sqrt(dy**2 + dx**2)
      theta = np.arctan2(dx, dy)
      r0, r1 = self.radii
      rows = (radius - r0) / (r1 - r0) * n
      cols = (theta + self.half_angle) / (2 * self.half_angle) * n
    else:
      rows = np.broadcast_to((ys - y0) / (y1 - y0) * n, (n, n))
      cols = np.broadcast_to((xs - x0) / (x1 - x0) * n, (n, n))
    valid = (rows >= 0) & (rows <= n) & (cols >= 0) & (cols <= n)
    return rows - 0.5, cols - 0.5, valid


def sample_geometry(rng: np.random.Generator, p: RandomizationRanges, n: int) -> Geometry:
  """The `geometry` group: linear or sector, maybe letterboxed (off: "identity", the full frame)."""
  if not p.geometry:
    return Geometry("identity", (0.0, n, 0.0, n))
  sector = rng.random() < p.sector_probability
  if rng.random() < p.letterbox_probability:
    y0, y1 = uniform(rng, p.margin_top) * n, n - uniform(rng, p.margin_bottom) * n
    x0, x1 = uniform(rng, p.margin_side) * n, n - uniform(rng, p.margin_side) * n
  else:
    y0, y1, x0, x1 = 0.0, float(n), 0.0, float(n)
  if not sector:
    return Geometry("linear", (y0, y1, x0, x1))
  for _ in range(10):
    half = math.radians(uniform(rng, p.sector_angle)) / 2
    d = uniform(rng, p.apex_distance) * n
    r0 = d / math.cos(half)  # the fan's top corners touch the top of the box
    r1 = min(y1 - y0 + d, (x1 - x0) / (2 * math.sin(half)))
    if r1 - r0 >= 0.5 * (y1 - y0):
      return Geometry("sector", (y0, y1, x0, x1), (y0 - d, 0.5 * (x0 + x1)), (r0, r1), half)
  return Geometry("linear", (y0, y1, x0, x1))


def _resample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Bilinear samples of `image` [n, n] at fractional pixel indices (edges clamped), and the flat index of
  each sample's nearest pixel (for masks)."""
  n = image.shape[0]
  rows, cols = np.clip(rows, 0, n - 1), np.clip(cols, 0, n - 1)
  r0 = np.minimum(rows.astype(np.int32), n - 2)
  c0 = np.minimum(cols.astype(np.int32), n - 2)
  fr, fc = (rows - r0).astype(np.float32), (cols - c0).astype(np.float32)
  flat = image.ravel()
  i = r0 * n + c0
  top = flat.take(i)
  top += (flat.take(i + 1) - top) * fc
  bottom = flat.take(i + n)
  bottom += (flat.take(i + n + 1) - bottom) * fc
  top += (bottom - top) * fr
  i += (fr >= 0.5) * np.int32(n)
  i += fc >= 0.5
  return top, i


def _resample_separable(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Bilinear samples of `image` [n, n] at rows [n] x columns [n] (fractional indices, edges clamped)."""
  n = image.shape[0]

  def taps(positions):
    positions = np.clip(positions, 0, n - 1)
    i = np.minimum(positions.astype(np.int32), n - 2)
    return i, (positions - i).astype(np.float32)

  r, fr = taps(rows)
  c, fc = taps(cols)
  top = image[r]
  top += (image[r + 1] - top) * fr[:, None]
  left = top[:, c]
  left += (top[:, c + 1] - left) * fc[None, :]
  return left


def _nearest(positions: np.ndarray, n: int) -> np.ndarray:
  return np.clip(np.rint(positions), 0, n - 1).astype(np.int32)


def scan_convert(geometry: Geometry, display: np.ndarray,
                 instances: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Beam-space display levels and instance mask [n, n] -> the frame's, and which frame pixels are inside
  the fan or box (bool [n, n]); outside, both are 0. Bilinear for the display, nearest for the mask."""
  n = display.shape[0]
  if geometry.kind == "identity":
    valid = np.ones((n, n), dtype=bool)
  elif geometry.kind == "linear":  # separable: rows map to rows, columns to columns
    rows, cols, valid = geometry.beam_coordinates(n)
    display = _resample_separable(display, rows[:, 0], cols[0]) * valid
    instances = instances[_nearest(rows[:, 0], n)][:, _nearest(cols[0], n)] * valid
  else:
    rows, cols, valid = geometry.beam_coordinates(n)
    display, nearest = _resample(display, rows, cols)
    display *= valid
    instances = instances.ravel().take(nearest) * valid
  return display, instances, valid
