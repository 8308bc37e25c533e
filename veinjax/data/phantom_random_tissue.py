"""The randomised phantom's tissue, in beam space: layers below the skin and the distractors in them.

`random_tissue` draws the `layers` group (1-6 layers with wavy, tilted boundaries, each with its own
echogenicity, heterogeneity, striation, lobules and specks; echogenic, broken interfaces; the skin line and
the near field); `phantom_tissue` is that group switched off (`phantom.py`'s anatomy). `distractors` draws
the `distractors` group into either: a tendon, a nerve, a bone surface, bright specks and a hypoechoic blob,
clear of the vessels.
"""

import dataclasses
import functools
import math
from typing import List, Optional, Tuple

import numpy as np

from veinjax.data import phantom
from veinjax.data.phantom_random_fields import (bbox, coords, gaussian_band, integer, noise_grid, smooth_curves,
                                                smooth_field, uniform, upsample)
from veinjax.data.phantom_random_ranges import RandomizationRanges


@dataclasses.dataclass
class Tissue:
  """One frame's tissue (beam space); vessels, distractors and artefacts draw into echo and mu in place."""
  echo: np.ndarray
  mu: np.ndarray
  skin: float  # depth (px) of the skin's lower edge: vessels lie below it
  fascia: float  # a deep-fascia depth for phantom.py's vessel placement
  level: float  # typical tissue echo (for haze, looks)


def phantom_tissue(rng: np.random.Generator, n: int) -> Tissue:
  """The `layers` group off: `phantom.py`'s anatomy, rendered."""
  scene = phantom.sample_scene(rng, n)
  echo, mu = phantom.render_tissue(scene.anatomy, n, rng)
  a = scene.anatomy
  return Tissue(echo.astype(np.float32), mu, a.skin + a.skin_thick, a.fascia_depth,
                0.5 * (a.fat_level + a.muscle_level))


# ---- Layers ----


def _stripes(rng: np.random.Generator, p: RandomizationRanges, n: int, ys, xs) -> np.ndarray:
  """Fine, broken echogenic lines at a random angle and spacing (0..~2)."""
  period = max(uniform(rng, p.striation_period) * n, 2.5)
  angle = uniform(rng, p.striation_angle)
  warp = smooth_field(rng, n, 4.0) * (0.03 * n)
  phase = (ys * math.cos(angle) + xs * math.sin(angle) + warp) * (2 * math.pi / period)
  sharpness = max(0.05, (2.2 / period) ** 2)
  streaks = np.clip(smooth_field(rng, n, uniform(rng, (4.0, 8.0)), uniform(rng, (8.0, 20.0))), 0, 2)
  return np.exp(-(np.sin(phase) ** 2) / sharpness) * streaks


def _interfaces(rng: np.random.Generator, p: RandomizationRanges, n: int, echo: np.ndarray,
                bounds: np.ndarray, num: int) -> None:
  """Draws echogenic interfaces (fascia) on the num - 1 layer boundaries into `echo`, broken in places."""
  ys, _ = coords(n)
  interfaces = rng.uniform(*p.interface_echo, num - 1).tolist()  # Python floats: no float64 upcasts
  widths = (rng.uniform(*p.interface_width, num - 1) * n).tolist()
  gaps = smooth_curves(rng, max(num - 1, 1), n, uniform(rng, (3.0, 12.0)))
  gap_share = rng.uniform(*p.interface_gaps, num - 1).tolist()
  for k in range(num - 1):
    w = max(widths[k], 0.6)
    top, bottom = int(max(bounds[k].min() - 3 * w, 0)), int(min(bounds[k].max() + 3 * w + 1, n))
    if bottom <= top or interfaces[k] <= 0:
      continue
    # Threshold of a unit Gaussian curve that leaves about `gap_share` of the line broken off.
    keep = np.clip((gaps[k] - (2.5 * gap_share[k] - 1.25)) * 2.0 + 0.5, 0, 1)
    echo[top:bottom] += interfaces[k] * keep[None, :] * gaussian_band(ys[top:bottom], bounds[k][None, :], w)


def random_tissue(rng: np.random.Generator, p: RandomizationRanges, n: int) -> Tuple[Tissue, dict]:
  """The `layers` group: tissue layers, their interfaces, the skin and the near field; and what it drew."""
  ys, xs = coords(n)
  skin = uniform(rng, p.skin_depth) * n
  skin_thick = rng.uniform(0.008, 0.025) * n
  num = integer(rng, p.num_layers)
  depths = np.sort(rng.uniform(skin + skin_thick + 0.03 * n, 1.1 * n, num - 1)).astype(np.float32)
  tilt = rng.uniform(*p.boundary_tilt, num - 1).astype(np.float32)
  wave = rng.uniform(*p.boundary_wave, num - 1).astype(np.float32) * n
  bounds = (depths[:, None] + tilt[:, None] * (xs - 0.5 * n)
            + wave[:, None] * smooth_curves(rng, num - 1, n, uniform(rng, (2.0, 8.0))))  # [num - 1, n]
  index = np.zeros((n, n), dtype=np.int8)
  for k in range(num - 1):
    index += ys > bounds[k][None, :]

  levels = np.exp(rng.uniform(np.log(p.layer_echo[0]), np.log(p.layer_echo[1]), num)).astype(np.float32)
  texture = rng.uniform(*p.layer_texture, num).astype(np.float32)
  striated = (rng.random(num) < p.striation_probability) * rng.uniform(*p.striation_echo, num)
  lobular = (rng.random(num) < p.lobule_probability) * rng.uniform(*p.lobule_echo, num)
  cells = uniform(rng, p.texture_cells)
  hetero = smooth_field(rng, n, cells * uniform(rng, (1.0, 3.0)), cells)  # structures elongated along the skin
  t = texture[index]
  echo = levels[index] * np.exp(t * hetero - 0.5 * t**2)
  if striated.any():
    echo += striated.astype(np.float32)[index] * _stripes(rng, p, n, ys, xs)
  if lobular.any():
    lob_cells = uniform(rng, (6.0, 14.0))
    lobules = smooth_field(rng, n, 2.2 * lob_cells, lob_cells)
    septa = np.exp(-((lobules / uniform(rng, (0.1, 0.2))) ** 2))
    lob = lobular.astype(np.float32)[index]
    echo *= 1.0 + np.where(lob > 0, np.float32(0.5), np.float32(0.0)) * np.tanh(lobules)
    echo += lob * septa
  density = uniform(rng, p.speck_density) * min(n / phantom._REFERENCE_SIZE, 1.0)  # pylint: disable=protected-access
  count = int(density * n * n)
  if count:
    flat = echo.reshape(-1)
    flat[rng.integers(0, n * n, count)] += rng.uniform(0.5, 1.5, count).astype(np.float32)
  _interfaces(rng, p, n, echo, bounds, num)

  echo *= ys > skin  # gel / stand-off above the skin
  echo += uniform(rng, p.skin_echo) * gaussian_band(ys, skin + 0.5 * skin_thick, 0.5 * skin_thick)
  echo += uniform(rng, p.near_field_echo) * gaussian_band(ys, 0.006 * n, 0.004 * n)
  fascia = float(np.clip(depths[0] if num > 1 else 0.45 * n, skin + 0.15 * n, 0.65 * n))
  mu = np.ones((n, n), dtype=np.float32)
  info = dict(num_layers=num, levels=levels.tolist(), skin=skin)
  return Tissue(echo.astype(np.float32), mu, skin + skin_thick, fascia, float(np.median(levels))), info


# ---- Distractors ----


def _clear_of(vessels, cy: float, cx: float, r: float, gap: float) -> bool:
  return all(np.hypot(cx - v.cx, cy - v.cy) > r + v.outer_radius + gap for v in vessels)


def _ellipse(ys, xs, cy, cx, a, b, angle):
  c, s = math.cos(angle), math.sin(angle)
  u, v = c * (xs - cx) + s * (ys - cy), -s * (xs - cx) + c * (ys - cy)
  return u, v, np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _place(rng: np.random.Generator, n: int, tissue: Tissue, vessels, r: float) -> Optional[Tuple[float, float]]:
  """A centre (cy, cx) for a structure of radius r below the skin and clear of the vessels; None: no room."""
  if tissue.skin + r >= 0.95 * n - r:
    return None
  for _ in range(20):
    cy, cx = rng.uniform(tissue.skin + r, 0.95 * n - r), rng.uniform(0.05, 0.95) * n
    if _clear_of(vessels, cy, cx, r, 0.01 * n):
      return cy, cx
  return None


def _tendon(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: Tissue, place) -> List[str]:
  """A fibrillar band (bright, with fine lines along it) that attenuates a little."""
  ys, xs = coords(n)
  half = 0.5 * uniform(rng, p.tendon_length) * n
  thick, angle, level = half * uniform(rng, p.tendon_aspect), rng.normal(0, 0.15), uniform(rng, p.tendon_echo)
  period = max(uniform(rng, (0.008, 0.02)) * n, 2.0)
  at = place(half)
  if not at:
    return []
  y0, y1, x0, x1 = bbox(n, at[0], at[1], half)
  _, v, q = _ellipse(ys[y0:y1], xs[:, x0:x1], at[0], at[1], half, max(thick, 1.0), angle)
  inside = np.clip((1 - q) * 4, 0, 1)
  fibrils = 0.6 + 0.4 * np.cos(2 * np.pi * v / period) ** 2
  tissue.echo[y0:y1, x0:x1] = tissue.echo[y0:y1, x0:x1] * (1 - inside) + inside * level * fibrils
  tissue.mu[y0:y1, x0:x1] += 0.5 * inside
  return ["tendon"]


def _nerve(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: Tissue, place) -> List[str]:
  """A honeycomb: dark fascicles in a bright sheath."""
  ys, xs = coords(n)
  r = uniform(rng, p.nerve_radius) * n
  aspect, angle, level = rng.uniform(0.5, 1.0), rng.normal(0, 0.3), uniform(rng, p.nerve_echo)
  fascicles, threshold, dark = uniform(rng, p.nerve_fascicles), rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.3)
  grid = noise_grid(rng, 1.5 * fascicles, 1.5 * fascicles)
  at = place(r)
  if not at:
    return []
  y0, y1, x0, x1 = bbox(n, at[0], at[1], r)
  _, _, q = _ellipse(ys[y0:y1], xs[:, x0:x1], at[0], at[1], r, r * aspect, angle)
  inside = np.clip((1 - q) * 5, 0, 1)
  holes = np.clip((upsample(grid, y1 - y0, x1 - x0) - threshold) * 3, 0, 1) * np.clip((0.85 - q) * 8, 0, 1)
  sheath = level * (1 - holes * (1 - dark))
  tissue.echo[y0:y1, x0:x1] = tissue.echo[y0:y1, x0:x1] * (1 - inside) + inside * sheath
  return ["nerve"]


def _bone(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: Tissue, vessels) -> List[str]:
  """A bright arc with a full shadow below, deeper than every vessel it would shadow."""
  ys, xs = coords(n)
  xc, half = rng.uniform(0.1, 0.9) * n, 0.5 * uniform(rng, p.bone_width) * n
  curve, level = rng.uniform(-0.05, 0.15) * n, uniform(rng, p.bone_echo)
  floor = max([v.cy + v.outer_radius + 0.03 * n for v in vessels if abs(v.cx - xc) < half + v.outer_radius]
              + [0.5 * n, tissue.skin + 0.1 * n])
  if floor >= 0.93 * n:
    return []
  depth = rng.uniform(floor, 0.95 * n)
  rel = (xs - xc) / half
  bone_y = depth + curve * rel**2
  extent = np.clip(1.5 - 1.5 * rel**2, 0, 1)
  if curve < 0:  # concave: its ends rise; keep them below the floor too
    bone_y = np.maximum(bone_y, floor)
  tissue.echo += level * extent * gaussian_band(ys, bone_y, 0.008 * n)
  tissue.mu += 40.0 * extent * (ys > bone_y)
  return ["bone"]


def _specks(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: Tissue, place) -> List[str]:
  """Small bright reflectors (calcification, needle tip, gas)."""
  ys, xs = coords(n)
  drawn = []
  for _ in range(integer(rng, p.num_specks)):
    level, r = uniform(rng, p.speck_echo), rng.uniform(0.5, 1.5) * max(n / 256, 0.5)
    at = place(r + 1)
    if at:
      y0, y1, x0, x1 = bbox(n, at[0], at[1], r + 1)
      tissue.echo[y0:y1, x0:x1] += level * np.exp(-((ys[y0:y1] - at[0]) ** 2 + (xs[:, x0:x1] - at[1]) ** 2) / r**2)
      drawn.append("speck")
  return drawn


def _hypoechoic(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: Tissue, place) -> List[str]:
  """A grey, soft-edged blob darker than its tissue, not anechoic (the speckle stays), maybe with a bright
  centre: what a vessel is not, although it is dark."""
  ys, xs = coords(n)
  a = uniform(rng, p.hypoechoic_radius) * n
  aspect, angle, level = rng.uniform(0.4, 1.0), rng.normal(0, 0.4), uniform(rng, p.hypoechoic_echo)
  blur, hilum = rng.uniform(0.05, 0.4), rng.random() < p.hypoechoic_hilum_probability
  at = place(a)
  if not at:
    return []
  y0, y1, x0, x1 = bbox(n, at[0], at[1], a)
  _, _, q = _ellipse(ys[y0:y1], xs[:, x0:x1], at[0], at[1], a, max(a * aspect, 1.0), angle)
  inside = np.clip((1 - q) / blur, 0, 1)
  around = tissue.echo[y0:y1, x0:x1]
  echo = around * (1 - inside * (1 - level))
  if hilum:  # an echogenic centre, as a lymph node's: brighter than the tissue around
    echo = echo + around * np.clip((0.35 - q) * 6, 0, 1) * rng.uniform(0.8, 2.0)
  tissue.echo[y0:y1, x0:x1] = echo
  return ["hypoechoic"]


def distractors(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: Tissue,
                vessels) -> List[str]:
  """Draws a tendon, a nerve, a bone, specks and a hypoechoic blob into the tissue, clear of the vessels.
  -> their kinds."""
  place = functools.partial(_place, rng, n, tissue, vessels)
  drawn = []
  if rng.random() < p.tendon_probability:
    drawn += _tendon(rng, p, n, tissue, place)
  if rng.random() < p.nerve_probability:
    drawn += _nerve(rng, p, n, tissue, place)
  if rng.random() < p.bone_probability:
    drawn += _bone(rng, p, n, tissue, vessels)
  drawn += _specks(rng, p, n, tissue, place)
  # Last, so that the draws above (and the frames of a probability of 0) are those of generator 1.2.0.
  if p.hypoechoic_probability > 0 and rng.random() < p.hypoechoic_probability:
    drawn += _hypoechoic(rng, p, n, tissue, place)
  return drawn
