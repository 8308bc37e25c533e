"""The synthetic vein phantom's scenes: everything random about a frame but its noise (numpy only).

`scene_rngs(seed)` splits a seed into a scene stream and a noise stream; `sample_scene(geo, size)` draws a
whole `Scene` from the scene stream: the tissue layers (`Anatomy`), 1-3 veins and 0-2 arteries (`Vessel`,
placed by `_place_vessels`, their looks drawn by `_sample_looks`) and the acoustics. `veinjax.data.phantom`
renders a scene into a frame (and re-exports these names); `veinjax.data.phantom_clips` re-renders one
scene with a moving probe.
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

Seed = Union[int, Sequence[int]]


def _field_grid(rng: np.random.Generator, height: int, width: int, cells: float,
                cells_y: float = 0.0) -> np.ndarray:
  """The coarse white-noise grid of a smooth field (`phantom._field_values` evaluates it): its only random part."""
  gx = int(np.ceil(cells)) + 4
  gy = int(np.ceil(cells_y or cells * height / width)) + 4
  return rng.standard_normal((gy, gx)).astype(np.float32)


@dataclasses.dataclass
class Vessel:
  """One vessel: an (optionally irregular) rotated ellipse with a wall of given thickness, and its looks."""
  cx: float
  cy: float
  a: float
  b: float
  angle: float
  wall: float
  harmonics: list  # [(k, amplitude, phase)] perturbations of the boundary radius
  is_vein: bool
  # Looks, drawn by `_sample_looks`: wall brightness, lumen echo (or "smoke" from slow flow), edge shadowing.
  wall_gain: float = 0.0
  lumen_echo: float = 0.0
  smoke_grid: Optional[np.ndarray] = None
  smoke_level: float = 0.0
  refraction: float = 0.0

  @property
  def outer_radius(self) -> float:
    return max(self.a, self.b) * (1 + sum(abs(h[1]) for h in self.harmonics)) + self.wall

  def signed_distance(self, ys: np.ndarray, xs: np.ndarray):
    """First-order signed distance (pixels) to the inner wall boundary, and the boundary normal (nx, ny)."""
    c, s = np.cos(self.angle), np.sin(self.angle)
    dx, dy = xs - self.cx, ys - self.cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    q = np.sqrt((u / self.a) ** 2 + (v / self.b) ** 2) + 1e-6
    phi = np.arctan2(v / self.b, u / self.a)
    r = np.ones_like(q)
    for k, amp, phase in self.harmonics:
      r += amp * np.cos(k * phi + phase)
    gu, gv = u / self.a**2, v / self.b**2  # gradient of q (times q), in the vessel's frame
    gnorm = np.sqrt(gu**2 + gv**2) + 1e-6
    dist = (q - r) * q / gnorm
    nu, nv = gu / gnorm, gv / gnorm
    return dist, c * nu - s * nv, s * nu + c * nv


def _place_vessels(rng: np.random.Generator, size: int, skin: float, fascia: float,
                   spacing: float = 0.02) -> List[Vessel]:
  """Draws 1-3 veins and 0-2 arteries that overlap neither each other, the skin nor the image border.

  Most veins are superficial (in the subcutaneous fat, above the deep fascia at depth `fascia`); arteries
  and the remaining veins lie deeper. `spacing`: the least gap between two vessels' walls, times the size.
  """
  vessels = []

  def try_place(make):
    for _ in range(50):
      cand = make()
      rad = cand.outer_radius
      if cand.cy - rad < skin + 0.02 * size or cand.cy + rad > 0.95 * size:
        continue
      if cand.cx - rad < 0.01 * size or cand.cx + rad > 0.99 * size:
        continue
      if any(np.hypot(cand.cx - o.cx, cand.cy - o.cy) < rad + o.outer_radius + spacing * size for o in vessels):
        continue
      vessels.append(cand)
      return

  def vein():
    a = rng.uniform(0.065, 0.13) * size
    b = max(a * rng.uniform(0.42, 0.8), 0.035 * size)
    if rng.random() < 0.7:
      cy = rng.uniform(skin + 0.5 * b, fascia)
    else:
      cy = rng.uniform(fascia, 0.75 * size)
    harmonics = [(k, rng.uniform(-0.05, 0.05), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
    return Vessel(rng.uniform(0.12, 0.88) * size, cy, a, b, rng.normal(0.0, 0.12),
                  rng.uniform(0.006, 0.01) * size, harmonics, True)

  def artery():
    a = rng.uniform(0.05, 0.095) * size
    cy = rng.uniform(max(fascia - 0.05 * size, 0.3 * size), 0.8 * size)
    return Vessel(rng.uniform(0.12, 0.88) * size, cy, a, a * rng.uniform(0.9, 1.0), rng.uniform(0, np.pi),
                  rng.uniform(0.02, 0.03) * size, [], False)

  num_veins = int(rng.integers(1, 4))
  num_arteries = int(rng.choice(3, p=[0.2, 0.4, 0.4]))
  for _ in range(num_veins):
    try_place(vein)
  if not vessels:  # Could not fit one (very unlikely): a small centred vein.
    a = 0.07 * size
    vessels.append(Vessel(0.5 * size, 0.4 * size, a, 0.6 * a, 0.0, 0.008 * size, [], True))
  for _ in range(num_arteries):
    try_place(artery)
  return vessels


def _sample_looks(rng: np.random.Generator, vessel: Vessel, fat_level: float) -> None:
  """Draws a vessel's wall brightness, lumen echo and edge shadowing (in the order frames always drew them)."""
  if vessel.is_vein:
    vessel.wall_gain = rng.uniform(1.0, 1.5)
    vessel.lumen_echo = rng.uniform(0.015, 0.03)
    if rng.random() < 0.35:  # slow flow: faint swirling "smoke" echoes fill the lumen
      vessel.smoke_grid = _field_grid(rng, 1, 1, 3.0, 3.0)  # fixed grid: same draws at any size
      vessel.smoke_level = rng.uniform(0.15, 0.3) * fat_level
  else:
    vessel.wall_gain = rng.uniform(1.0, 1.4)
    vessel.lumen_echo = rng.uniform(0.015, 0.03)
  vessel.refraction = rng.uniform(1.0, 5.0)


@dataclasses.dataclass
class Anatomy:
  """The tissue layers of one scene, in pixels of the size it was sampled at (grids: smooth-field noise)."""
  skin: float
  skin_thick: float
  fascia_depth: float
  fascia_wave: np.ndarray
  fat_level: float
  muscle_level: float
  lobule_cells: float
  lobule_grid: np.ndarray
  septa_width: float
  septa_echo: float
  striation_angle: float
  striation_period: float
  warp_grid: np.ndarray
  streak_grid: np.ndarray
  bundle_grid: np.ndarray
  dot_density: float
  skin_echo: float
  fascia_width: float
  fascia_echo: float
  superficial_fascia: Optional[Tuple[float, np.ndarray, float]]  # (relative depth, wave grid, echo)
  bone: Optional[Tuple[float, float, float, float]]  # (centre x, half width, depth, curvature), in units of n


@dataclasses.dataclass
class Scene:
  """Everything random about a frame but its noise: what `sample_scene` draws and the renderers read."""
  size: int
  anatomy: Anatomy
  vessels: List[Vessel]
  acoustics: Tuple[float, float, float, float, float, float]  # alpha, tgc, noise, range dB, grey, gamma


def _sample_anatomy(geo: np.random.Generator, n: int) -> Anatomy:
  """Draws the tissue layers: skin, fat lobules and septa, fascia, muscle striation, maybe a bone."""
  skin, skin_thick = geo.uniform(0.025, 0.05) * n, geo.uniform(0.012, 0.022) * n
  fascia_depth = geo.uniform(0.35, 0.6) * n
  fascia_wave = _field_grid(geo, 1, n, 3)
  fat_level, muscle_level = geo.uniform(0.18, 0.32), geo.uniform(0.38, 0.55)
  cells = geo.uniform(7, 12)
  lobule_grid = _field_grid(geo, n, n, cells, 2.2 * cells)
  septa_width, septa_echo = geo.uniform(0.1, 0.16), geo.uniform(0.4, 0.8)
  striation_angle, period = geo.uniform(-0.5, 0.5), geo.uniform(0.03, 0.06) * n
  warp_grid, streak_grid, bundle_grid = (_field_grid(geo, n, n, c) for c in (4, 14, 8))
  dot_density, skin_echo = geo.uniform(0.001, 0.003), geo.uniform(0.9, 1.3)
  fascia_width = geo.uniform(0.004, 0.007) * n
  fascia_echo = geo.uniform(0.7, 1.1)
  superficial = bone = None
  if geo.random() < 0.6:  # A faint superficial fascia inside the fat.
    superficial = (geo.uniform(0.35, 0.65), _field_grid(geo, 1, n, 3), geo.uniform(0.25, 0.5))
  if geo.random() < 0.35:  # A bone surface deep down.
    bone = (geo.uniform(0.2, 0.8), geo.uniform(0.25, 0.5), geo.uniform(0.8, 0.92), geo.uniform(0.05, 0.15))
  return Anatomy(skin, skin_thick, fascia_depth, fascia_wave, fat_level, muscle_level, cells, lobule_grid,
                 septa_width, septa_echo, striation_angle, period, warp_grid, streak_grid, bundle_grid,
                 dot_density, skin_echo, fascia_width, fascia_echo, superficial, bone)


def scene_rngs(seed: Seed) -> Tuple[np.random.Generator, np.random.Generator]:
  """The two streams of a seed: scene parameters first, noise last, so a scene is the same at every size."""
  rng = np.random.default_rng(seed)
  geo = np.random.default_rng(rng.integers(2**63))
  return geo, np.random.default_rng(rng.integers(2**63))


def sample_scene(geo: np.random.Generator, size: int, vessel_spacing: float = 0.02) -> Scene:
  """Draws a whole scene from the parameter stream `geo` (`scene_rngs`), in the order frames always did."""
  anatomy = _sample_anatomy(geo, size)
  vessels = _place_vessels(geo, size, anatomy.skin + anatomy.skin_thick, anatomy.fascia_depth, vessel_spacing)
  for vessel in vessels:
    _sample_looks(geo, vessel, anatomy.fat_level)
  alpha = geo.uniform(2.0, 3.5)  # total tissue attenuation over the depth, nepers (amplitude)
  tgc = alpha * geo.uniform(0.65, 1.0)  # the operator's gain compensates most of it
  noise_level = geo.uniform(0.008, 0.016)
  dynamic_range = geo.uniform(45.0, 60.0)  # dB shown between black and white
  tissue_grey = geo.uniform(0.3, 0.6)  # where the operator's gain puts typical tissue (~0.4) on the screen
  gamma = geo.uniform(0.85, 1.2)
  return Scene(size, anatomy, vessels, (alpha, tgc, noise_level, dynamic_range, tissue_grey, gamma))
