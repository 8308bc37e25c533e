"""The randomised phantom's overlays: what a scanner draws over the frame, at its edges and in its margins.

`draw_overlays` draws the `overlays` group onto the frame's display levels: text-like glyphs, a depth scale,
a focus marker and a logo, never over a vessel.
"""

from typing import List, Tuple

import numpy as np

from veinjax.data.phantom_random_fields import integer, uniform
from veinjax.data.phantom_random_ranges import RandomizationRanges


def _glyph_line(rng: np.random.Generator, count: int, scale: int) -> np.ndarray:
  """A row of `count` random 5x3 glyphs (bool), each pixel `scale` wide, one glyph column apart."""
  glyphs = rng.random((count, 5, 3)) < 0.55
  row = np.zeros((5, count * 4), dtype=bool)
  for i, g in enumerate(glyphs):
    row[:, 4 * i:4 * i + 3] = g
  return np.kron(row, np.ones((scale, scale), dtype=bool))


def draw_overlays(rng: np.random.Generator, p: RandomizationRanges, display: np.ndarray, protect: np.ndarray,
                  box: Tuple[float, float, float, float]) -> List[str]:
  """Draws text-like glyphs, a depth scale, a focus marker and a logo near the edges (not over `protect`)."""
  n = display.shape[0]
  level = np.float32(uniform(rng, p.overlay_brightness))
  drawn = []

  def put(y: int, x: int, shape: np.ndarray, value=level):
    h, w = shape.shape
    y, x = max(min(y, n - h), 0), max(min(x, n - w), 0)
    region = shape[:n - y, :n - x] & ~protect[y:y + h, x:x + w]
    display[y:y + h, x:x + w][region] = value

  y0, y1, x0, x1 = (int(round(v)) for v in box)
  if rng.random() < p.text_probability:
    scale = max(1, int(round(uniform(rng, p.text_height) * n / 5)))
    lines = integer(rng, p.text_lines)
    corner = rng.integers(4)
    for k in range(lines):
      line = _glyph_line(rng, int(rng.integers(2, 10)), scale)
      y = 2 + k * 7 * scale if corner < 2 else n - 2 - (k + 1) * 7 * scale
      x = 2 if corner % 2 == 0 else n - 2 - line.shape[1]
      if 0 <= y < n:
        put(y, x, line)
    drawn.append("text")
  if rng.random() < p.depth_scale_probability:
    right = rng.random() < 0.5
    x = min(x1 + 2, n - 6) if right else max(x0 - 6, 0)
    step = max(int(rng.uniform(0.04, 0.12) * n), 4)
    for i, y in enumerate(range(max(y0, 0), min(y1, n), step)):
      length = 5 if i % 5 == 0 else 3
      put(y, x if right else x + 5 - length, np.ones((1, length), dtype=bool))
    drawn.append("depth_scale")
  if rng.random() < p.focus_marker_probability:
    size = max(3, n // 64)
    tri = np.tri(size, size, dtype=bool)[:, ::-1] | np.tri(size, size, dtype=bool)[::-1, ::-1]
    y = int(rng.uniform(y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0)))
    right = rng.random() < 0.5
    put(y, min(x1 + 1, n - size) if right else max(x0 - size - 1, 0), tri[:, ::-1] if right else tri)
    drawn.append("focus_marker")
  if rng.random() < p.logo_probability:
    size = max(3, int(rng.uniform(0.015, 0.035) * n))
    yy, xx = np.mgrid[:size, :size]
    shape = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= (size / 2) ** 2) if rng.random() < 0.5 \
        else np.ones((size, size), dtype=bool)
    put(max(y0 - size - 1, 1), max(x0, 2) if rng.random() < 0.5 else min(x1, n - 2) - size, shape)
    drawn.append("logo")
  return drawn
