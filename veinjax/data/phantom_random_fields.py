"""The randomised phantom's primitives: smooth random fields, pixel coordinates, draws from ranges.

Smooth fields are cubic B-spline upsamplings of a coarse noise grid (no BLAS, cheap). Coordinates are pixel
centres; a range (lo, hi) is drawn uniformly (`uniform`), log-uniformly (`log_uniform`) or, for integers,
inclusively (`integer`). Used by the `phantom_random_*` modules.
"""

import functools
import math
from typing import Optional, Tuple

import numpy as np

from veinjax.data.phantom_random_ranges import IntRange, Range


@functools.lru_cache(maxsize=256)
def _spline_weights(n: int, g: int) -> Tuple[np.ndarray, np.ndarray]:
  """Indices [4, n] and weights [4, n] (unit L2 norm per position) from g grid nodes to n pixel centres."""
  pos = (np.arange(n, dtype=np.float64) + 0.5) / n * (g - 3) + 1.0
  i = np.minimum(np.floor(pos).astype(np.int64), g - 3)
  t = pos - i
  w = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]) / 6.0
  w /= np.sqrt((w**2).sum(axis=0, keepdims=True))
  idx = np.stack([i - 1, i, i + 1, i + 2])
  idx.setflags(write=False)
  w = w.astype(np.float32)
  w.setflags(write=False)
  return idx, w


def noise_grid(rng: np.random.Generator, cells_y: float, cells_x: float) -> np.ndarray:
  return rng.standard_normal((int(math.ceil(cells_y)) + 3, int(math.ceil(cells_x)) + 3), dtype=np.float32)


def _interpolate(values: np.ndarray, length: int, axis: int) -> np.ndarray:
  """Cubic B-spline interpolation of `values` along `axis` (its grid nodes) to `length` pixel centres."""
  index, weights = _spline_weights(length, values.shape[axis])
  shape = (-1, 1) if axis == 0 else (1, -1)
  out = values.take(index[0], axis=axis)
  out *= weights[0].reshape(shape)
  for k in range(1, 4):  # take + in-place: ~5x faster than fancy indexing into temporaries
    tap = values.take(index[k], axis=axis)
    tap *= weights[k].reshape(shape)
    out += tap
  return out


def upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
  """A smooth unit-variance field [height, width] from its coarse noise grid (`noise_grid`)."""
  return _interpolate(_interpolate(coarse, width, axis=1), height, axis=0)


def smooth_field(rng: np.random.Generator, n: int, cells_y: float, cells_x: Optional[float] = None) -> np.ndarray:
  """A smooth Gaussian random field [n, n], unit std, about `cells` correlation lengths across."""
  return upsample(noise_grid(rng, cells_y, cells_x or cells_y), n, n)


def smooth_curves(rng: np.random.Generator, count: int, n: int, cells: float) -> np.ndarray:
  """`count` smooth unit-std random curves over n columns [count, n]."""
  grid = rng.standard_normal((count, int(math.ceil(cells)) + 3), dtype=np.float32)
  return _interpolate(grid, n, axis=1)


def coords(n: int) -> Tuple[np.ndarray, np.ndarray]:
  """Pixel-centre depths ys [n, 1] and lateral positions xs [1, n]."""
  c = np.arange(n, dtype=np.float32) + 0.5
  return c[:, None], c[None, :]


def uniform(rng: np.random.Generator, r: Range) -> float:
  return float(rng.uniform(r[0], r[1]))


def log_uniform(rng: np.random.Generator, r: Range) -> float:
  return float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1]))))


def integer(rng: np.random.Generator, r: IntRange) -> int:
  return int(rng.integers(r[0], r[1] + 1))


def gaussian_band(ys: np.ndarray, center, half_width: float) -> np.ndarray:
  return np.exp(-(((ys - center) / max(half_width, 0.6)) ** 2))


def bbox(n: int, cy: float, cx: float, r: float):
  """The pixel box (y0, y1, x0, x1) around a disc of radius r at (cy, cx), with 2 px to spare, in the frame."""
  r = int(math.ceil(r)) + 2
  return max(int(cy) - r, 0), min(int(cy) + r + 1, n), max(int(cx) - r, 0), min(int(cx) + r + 1, n)
