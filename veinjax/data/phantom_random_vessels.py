"""The randomised phantom's vessels, in beam space: placement, looks, drawing, and whether a frame shows them.

`random_vessels` draws the `vessels` group (veins and arteries of random size, aspect, irregularity, tilt,
wall, border blur, lumen echo, smoke, partial filling, posterior enhancement and edge shadows);
`phantom_vessels` is that group switched off (`phantom.py`'s vessels and looks). `draw_random_vessels` draws
them into the tissue, and `lumen_contrast` measures, on the display, how much darker a lumen is than the
tissue around it (a vessel the frame does not show is left out of the mask).
"""

import dataclasses
import math
from typing import List, Sequence

import numpy as np

from veinjax.data import phantom_scene
from veinjax.data.phantom_random_fields import bbox, coords, integer, noise_grid, uniform, upsample
from veinjax.data.phantom_random_geometry import Geometry
from veinjax.data.phantom_random_ranges import RandomizationRanges
from veinjax.data.phantom_random_tissue import Tissue


@dataclasses.dataclass
class RandomVessel(phantom_scene.Vessel):
  """A phantom vessel with the randomised looks `phantom_scene.Vessel` lacks (beam-space pixels)."""
  blur: float = 0.0  # width of the soft lumen edge
  specularity: float = 0.7
  lumen_rel: float = 0.0  # lumen echo, times the surrounding tissue's
  smoke_rel: float = 0.0
  fill_fraction: float = 0.0  # share of the lumen's height that is filled
  fill_angle: float = 0.0  # direction (radians, 0 = down) of the filled side
  fill_rel: float = 0.0
  enhancement: float = 0.9

  def signed_distance(self, ys: np.ndarray, xs: np.ndarray):
    """`phantom_scene.Vessel.signed_distance` in float32 (the same formula; its float64 scalars upcast it)."""
    c, s = math.cos(self.angle), math.sin(self.angle)
    dx, dy = xs - np.float32(self.cx), ys - np.float32(self.cy)
    u, v = c * dx + s * dy, -s * dx + c * dy
    ua, vb = u * np.float32(1 / self.a), v * np.float32(1 / self.b)
    q = np.sqrt(ua**2 + vb**2) + np.float32(1e-6)
    r = np.ones_like(q)
    if self.harmonics:
      phi = np.arctan2(vb, ua)
      for k, amp, phase in self.harmonics:
        r += np.float32(amp) * np.cos(k * phi + np.float32(phase))
    gu, gv = u * np.float32(1 / self.a**2), v * np.float32(1 / self.b**2)
    gnorm = np.sqrt(gu**2 + gv**2) + np.float32(1e-6)
    dist = (q - r) * q / gnorm
    nu, nv = gu / gnorm, gv / gnorm
    return dist, c * nu - s * nv, s * nu + c * nv


def _min_half_axis(n: int) -> float:
  return max(1.0, 0.006 * n)


def random_vessels(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: Tissue,
                   geometry: Geometry) -> List[RandomVessel]:
  """Veins and arteries that overlap neither each other, the skin nor the bottom (beam space)."""
  vessels: List[RandomVessel] = []
  kinds = [True] * integer(rng, p.num_veins) + [False] * integer(rng, p.num_arteries)
  for is_vein in kinds:
    for _ in range(30):
      cy = uniform(rng, p.vessel_depth) * n
      cx = uniform(rng, p.vessel_lateral) * n
      sy, sx = geometry.scale(n, cy)
      if is_vein:
        radius = uniform(rng, p.vein_radius) * n
        aspect = uniform(rng, p.compressed_aspect if rng.random() < p.compressed_probability else p.vein_aspect)
        angle, wall = uniform(rng, p.vein_tilt), uniform(rng, p.vein_wall) * n
      else:
        radius = uniform(rng, p.artery_radius) * n
        aspect, angle, wall = uniform(rng, p.artery_aspect), rng.uniform(0, np.pi), uniform(rng, p.artery_wall) * n
      # Sizes are drawn in frame pixels; a beam-space vessel is pre-distorted to look so after scan conversion.
      a = max(radius / sx, 1.5)
      b = max(radius * aspect / sy, _min_half_axis(n))
      irregular = uniform(rng, p.irregularity)
      harmonics = [(k, rng.uniform(-irregular, irregular), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
      v = RandomVessel(cx, cy, a, b, angle, max(wall / sy, 0.0), harmonics, is_vein)
      rad = v.outer_radius
      vertical = max(b, a * abs(math.sin(angle))) * (1 + 2 * irregular) + v.wall
      below = cy + vertical - 0.98 * n  # how far it runs past the scan's bottom (<= 0: whole)
      if cy - vertical < tissue.skin + 0.01 * n or below > p.max_share_below * 2 * vertical:
        continue
      if any(np.hypot(cx - o.cx, cy - o.cy) < rad + o.outer_radius + 0.01 * n for o in vessels):
        continue
      y0, y1, x0, x1 = bbox(n, cy, cx, rad)
      if tissue.echo[y0:y1, x0:x1].mean() < 0.4 * tissue.level:  # a black lumen in black tissue: unseen
        continue
      v.wall_gain = uniform(rng, p.wall_echo)
      v.specularity = uniform(rng, p.wall_specularity)
      v.blur = uniform(rng, p.border_blur) * n / sy
      v.lumen_rel = uniform(rng, p.lumen_echo)
      if rng.random() < p.smoke_probability:
        v.smoke_grid = noise_grid(rng, 3.0, 3.0)
        v.smoke_rel = uniform(rng, p.smoke_echo)
      if rng.random() < p.partial_fill_probability:
        v.fill_fraction, v.fill_angle = uniform(rng, p.partial_fill), rng.normal(0.0, 0.8)
        v.fill_rel = uniform(rng, p.fill_echo)
      v.enhancement = uniform(rng, p.posterior_enhancement)
      v.refraction = uniform(rng, p.edge_shadow)
      vessels.append(v)
      break
  return vessels


def phantom_vessels(rng: np.random.Generator, n: int, tissue: Tissue) -> List[phantom_scene.Vessel]:
  """The `vessels` group off: `phantom.py`'s 1-3 veins and 0-2 arteries with its looks."""
  vessels = phantom_scene._place_vessels(rng, n, tissue.skin, tissue.fascia)  # pylint: disable=protected-access
  for vessel in vessels:
    phantom_scene._sample_looks(rng, vessel, tissue.level)  # pylint: disable=protected-access
  return vessels


def _ring_width(vessel: phantom_scene.Vessel) -> float:
  """Width (px) of the ring of tissue around a vessel that `lumen_contrast` compares its lumen with."""
  return max(2.0, 0.3 * min(vessel.a, vessel.b))


def vessel_box(vessel: phantom_scene.Vessel, n: int):
  """A vessel's pixels (bbox), with its soft edge and the ring around it, and the signed distance there."""
  ys, xs = coords(n)
  c, s = math.cos(vessel.angle), math.sin(vessel.angle)
  bulge = 1 + sum(abs(h[1]) for h in vessel.harmonics)
  margin = vessel.wall + 3 * getattr(vessel, "blur", 0.0) + _ring_width(vessel) + 3
  half_y = math.hypot(vessel.a * s, vessel.b * c) * bulge + margin  # the rotated ellipse's extent
  half_x = math.hypot(vessel.a * c, vessel.b * s) * bulge + margin
  y0, y1 = max(int(vessel.cy - half_y), 0), min(int(math.ceil(vessel.cy + half_y)) + 1, n)
  x0, x1 = max(int(vessel.cx - half_x), 0), min(int(math.ceil(vessel.cx + half_x)) + 1, n)
  if y1 <= y0 or x1 <= x0:
    return None
  return (y0, y1, x0, x1), vessel.signed_distance(ys[y0:y1], xs[:, x0:x1])


def draw_random_vessels(vessels: Sequence[RandomVessel], n: int, echo: np.ndarray, mu: np.ndarray):
  """Draws the vessels into echo and mu in place -> instance mask (vessel i: i + 1 over its lumen), and
  each vessel's `vessel_box` (None when out of the frame)."""
  ys, xs = coords(n)
  instances = np.zeros((n, n), dtype=np.uint8)
  boxes = []
  for index, v in enumerate(vessels):
    boxes.append(vessel_box(v, n))
    if boxes[-1] is None:
      continue
    (y0, y1, x0, x1), (dist, nx, ny) = boxes[-1]
    instances[y0:y1, x0:x1][dist < 0] = index + 1
    sub = echo[y0:y1, x0:x1]
    local = float(sub.mean())
    soft = max(v.blur, 0.5)
    lumen = 0.5 - 0.5 * np.tanh(dist / soft)
    outer = 0.5 - 0.5 * np.tanh((dist - v.wall) / soft)
    wall = np.clip(outer - lumen, 0, 1)
    content = v.lumen_rel * local
    if v.smoke_grid is not None:
      content = content + v.smoke_rel * local * np.clip(1.0 + 0.6 * upsample(v.smoke_grid, y1 - y0, x1 - x0),
                                                        0.0, 2.5)
    if v.fill_fraction > 0:
      reach = max(v.a, v.b)
      toward = ((xs[:, x0:x1] - v.cx) * math.sin(v.fill_angle) + (ys[y0:y1] - v.cy) * math.cos(v.fill_angle))
      filled = np.clip((toward / reach - (1 - 2 * v.fill_fraction)) / 0.15, 0, 1)
      content = content * (1 - filled) + v.fill_rel * local * filled
    wall_echo = v.wall_gain * (1 - v.specularity + v.specularity * ny**2)
    echo[y0:y1, x0:x1] = sub * (1 - outer) + wall * wall_echo + lumen * content
    mu[y0:y1, x0:x1] += v.refraction * wall * nx**8 - v.enhancement * lumen
  np.maximum(mu, 0.05, out=mu)
  return instances, boxes


def lumen_contrast(vessel: phantom_scene.Vessel, box, n: int, display: np.ndarray, gamma: float = 1.0) -> float:
  """How much darker a vessel's lumen is than the tissue around it (Weber contrast of display levels).

  (around - lumen) / max(around, 0.15), with `around` the brighter of the mean display level of the wall
  and that of a ring of tissue around it, and `lumen` the mean level of the lumen (its unfilled part where
  partly filled). The wall counts on its own, so that a bright wall shows a vessel in tissue as dark as its
  lumen; means, not medians, so that a lumen among sparse bright scatterers counts as seen; relative, so
  that a black lumen in dark tissue does too.
  """
  if box is None:
    return 0.0
  ys, xs = coords(n)
  blur, ring = getattr(vessel, "blur", 0.0), _ring_width(vessel)
  (y0, y1, x0, x1), (dist, _, _) = box
  lumen = dist < -0.5
  fill = getattr(vessel, "fill_fraction", 0.0)
  if fill > 0:
    toward = ((xs[:, x0:x1] - vessel.cx) * math.sin(vessel.fill_angle)
              + (ys[y0:y1] - vessel.cy) * math.cos(vessel.fill_angle))
    lumen &= toward / max(vessel.a, vessel.b) < 1 - 2 * fill - 0.1
  edge = vessel.wall + blur + 1
  wall = (dist > 0.5) & (dist < edge)
  outside = (dist >= edge) & (dist < edge + ring)
  if lumen.sum() < 2 or outside.sum() < 4:
    return 0.0
  sub = display[y0:y1, x0:x1] ** np.float32(gamma)  # as shown
  around = max(float(sub[outside].mean()), float(sub[wall].mean()) if wall.sum() >= 4 else 0.0)
  return (around - float(sub[lumen].mean())) / max(around, 0.15)

