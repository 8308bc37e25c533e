"""A domain-randomised B-mode vessel phantom (numpy and scipy only, deterministic by seed).

`generate_randomized_example(seed, size, params=RandomizationRanges())` returns one frame and its vessel
mask, like `phantom.generate_example`, but every look of the frame is drawn per frame from ranges chosen
to span far beyond any one scanner or preset (SynthSeg-style domain randomisation): a network trained on
it should learn what makes a vessel (a dark, walled, round-to-oval lumen) and nothing about one look.
The ranges are first guesses, not yet chosen by measurement (see `RandomizationRanges`).

A frame is rendered in beam space (rows = depth along the beam, columns = beams), then scan-converted:

1. tissue (`layers`): 1-6 layers below a skin line with wavy, tilted boundaries, each with its own
   echogenicity (dark to bright, log-uniform), smooth heterogeneity, and maybe fine echogenic lines
   (perimysium, septa), fat lobules or sparse bright specks; echogenic interfaces (fascia), often broken;
2. vessels (`vessels`): veins and arteries of random size, aspect, irregularity, tilt, wall thickness and
   brightness, border blur, lumen echo (anechoic to "smoke"), partly filled (sediment, thrombus) or
   compressed lumens, posterior enhancement and edge shadows;
3. hyperechoic distractors (`distractors`): tendons (fibrillar), nerves (honeycomb of dark fascicles in a
   bright sheath), a bone surface with its shadow, bright specks;
4. artefacts (`artifacts`): reverberation copies of the near field, haze (clutter that greys the lumens),
   acoustic shadows under a bright reflector, a lifted probe edge (a dark strip);
5. acoustics (`gain`): attenuation with depth, time-gain compensation (a ramp plus 8 sliders), lateral
   gain fall-off, electronic noise amplified by the gain;
6. speckle (`speckle`): the echo times complex scatterers (maybe sparse, plus a coherent part that lowers
   the speckle contrast: Rician, as partly developed or compounded speckle) convolved with a Gaussian
   point-spread function of random axial and lateral width, wider away from a focal depth; envelope power;
7. display (`compression`): log compression to a random dynamic range, overall gain (from very dark to
   bright), reject level and contrast curve;
8. geometry (`geometry`): linear or sector (curvilinear / phased) scan conversion, letterboxed into the
   frame with black margins; outside the fan or the box the frame is black and the mask 0;
9. overlays (`overlays`): text-like glyphs, a depth scale, a focus marker and a logo at the edges and in
   the margins (never over a vessel).

Each of these groups is switched by a boolean field of `RandomizationRanges` named after it. Off, the
group keeps a fixed setting (`layers` and `vessels` off: the anatomy and vessels of `phantom.py`, its
cartoon; `distractors`, `artifacts` and `overlays` off: none; `geometry` off: a linear full-frame scan;
`speckle`, `gain`, `compression` off: fixed mid-range values, see `_FIXED`). Each group draws from its
own random stream (and the noise from another), so switching one group off changes only what that group
draws: the ablations compare like with like.

Mask (`foreground`): "vessel" (the default) labels every vessel lumen, veins and arteries alike, as the
usgra-seg "vessel" class does (its target for sim-to-real); "vein" labels veins only, arteries being
distractors as in `phantom.py`. The lumen is the inside of the inner wall boundary (pixel centres),
including a partly filled part of it and whatever speckle or haze lies over it. A vessel the frame does not
show (its lumen hardly darker than its wall and surroundings, as shown: `min_contrast`) is left out of the
mask; with the default ranges that is about 1 vessel in 5. Frames may hold no vessel at all (1 in 12 with
the default counts; with unseen vessels about 1 in 6 masks is empty) or, with "vein", only arteries: empty
masks teach negatives.

Geometric ranges are fractions of the frame size, so they mean the same at every size (unlike
`phantom.py`, one seed at two sizes is not the same scene pixel for pixel). Speed: about 10-20 ms a frame
at 256x256 and 4 ms at 128x128 on a shared 2-core CPU (`python -m benchmarks.phantom_speed`).
"""

import dataclasses
import functools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import fft as sp_fft

from veinjax.data import phantom

Range = Tuple[float, float]
IntRange = Tuple[int, int]

# The randomisation groups, each switched by the field of `RandomizationRanges` with its name.
GROUPS = ("layers", "vessels", "distractors", "artifacts", "gain", "speckle", "compression", "geometry",
          "overlays")
FOREGROUNDS = ("vessel", "vein")
_SALT = 19  # Keeps these streams apart from `phantom.generate_example`'s for the same seed.


@dataclasses.dataclass(frozen=True)
class RandomizationRanges:
  """What `generate_randomized_example` draws, and from which range, per frame.

  (lo, hi) ranges are drawn uniformly unless said otherwise, integer ranges inclusive; "x size" means a
  fraction of the frame's height (= width). Echo units: the reflectivity amplitude before attenuation, for
  which tissue spans 0.03-1 and specular lines reach 1-3; the display puts the frame's median tissue at
  `grey`, whatever its echo. Display levels: 0 (black) to 1 (white), as shown. These are first guesses,
  chosen to cover the phantom, what linear and curvilinear probes of any make show, and more; they are not
  yet tuned by measurement (sim-to-real on held-out real data).
  """
  foreground: str = "vessel"  # "vessel": veins and arteries are the mask; "vein": veins only

  # ---- layers: tissue below the skin (off: phantom.py's fat, fascia and striated muscle) ----
  layers: bool = True
  skin_depth: Range = (0.0, 0.06)  # x size: depth of the skin line (gel / stand-off above it is anechoic)
  skin_echo: Range = (0.2, 1.6)  # brightness of the skin line
  near_field_echo: Range = (0.0, 0.6)  # the transducer-face band at the very top
  num_layers: IntRange = (1, 6)  # tissue layers below the skin
  layer_echo: Range = (0.03, 1.0)  # each layer's echogenicity, log-uniform: near-anechoic to bright
  layer_texture: Range = (0.0, 0.7)  # std of each layer's smooth heterogeneity (log amplitude)
  texture_cells: Range = (3.0, 20.0)  # correlation lengths of the heterogeneity across the frame
  boundary_wave: Range = (0.0, 0.05)  # x size: std of a layer boundary's undulation
  boundary_tilt: Range = (-0.2, 0.2)  # slope of a layer boundary
  interface_echo: Range = (0.0, 1.6)  # brightness of the echogenic line (fascia) on each layer boundary
  interface_width: Range = (0.002, 0.012)  # x size: its half width
  interface_gaps: Range = (0.0, 0.8)  # share of it that is broken off
  striation_probability: float = 0.6  # chance that a layer has fine echogenic lines (perimysium, septa)
  striation_echo: Range = (0.1, 1.0)  # their brightness
  striation_period: Range = (0.015, 0.08)  # x size: their spacing
  striation_angle: Range = (-0.5, 0.5)  # radians from the horizontal
  lobule_probability: float = 0.3  # chance that a layer is lobular (fat: dark lobules, echogenic septa)
  lobule_echo: Range = (0.2, 0.9)  # brightness of the septa
  speck_density: Range = (0.0, 0.004)  # bright point scatterers per pixel (at 512 px; fewer when smaller)

  # ---- vessels (off: phantom.py's 1-3 veins and 0-2 arteries with its looks) ----
  vessels: bool = True
  num_veins: IntRange = (0, 3)
  num_arteries: IntRange = (0, 2)
  vessel_depth: Range = (0.06, 0.92)  # x size: depth of a vessel's centre (beam space)
  vein_radius: Range = (0.02, 0.15)  # x size: semi-major axis
  vein_aspect: Range = (0.35, 1.0)  # minor / major axis
  compressed_probability: float = 0.15  # chance that a vein is compressed flat ...
  compressed_aspect: Range = (0.08, 0.3)  # ... to this aspect (half thickness >= 1 px)
  artery_radius: Range = (0.02, 0.1)  # x size
  artery_aspect: Range = (0.8, 1.0)
  irregularity: Range = (0.0, 0.1)  # amplitude of the boundary's harmonics 2-4 (0: an ellipse)
  vein_tilt: Range = (-0.4, 0.4)  # radians (arteries: any angle)
  vein_wall: Range = (0.0, 0.015)  # x size: wall thickness (0: no visible wall)
  artery_wall: Range = (0.006, 0.035)  # x size
  wall_echo: Range = (0.0, 2.0)  # wall brightness
  wall_specularity: Range = (0.0, 1.0)  # 1: the wall shows only where the beam meets it at right angles
  border_blur: Range = (0.0, 0.012)  # x size: width of the lumen's soft edge (before the PSF adds its own)
  lumen_echo: Range = (0.0, 0.15)  # lumen echo, times the surrounding tissue's
  smoke_probability: float = 0.3  # chance of slow-flow "smoke" (swirling faint echoes) ...
  smoke_echo: Range = (0.1, 0.35)  # ... this bright, times the surrounding tissue's
  partial_fill_probability: float = 0.15  # chance that part of the lumen is filled (sediment, thrombus) ...
  partial_fill: Range = (0.15, 0.6)  # ... this share of its height ...
  fill_echo: Range = (0.3, 1.0)  # ... this bright, times the surrounding tissue's (still in the mask)
  posterior_enhancement: Range = (0.0, 0.95)  # share of the attenuation the lumen does not have
  edge_shadow: Range = (0.0, 6.0)  # extra attenuation where the wall runs along the beam (refraction)
  # Not drawn: a vessel whose lumen is darker than its wall and a ring around it by less than this share
  # (Weber contrast of mean display levels as shown, ring levels below 0.15 counted as 0.15) is left out of
  # the mask: the frame does not show it (a lumen as bright as its surroundings, or lost in noise).
  min_contrast: float = 0.3

  # ---- distractors: hyperechoic structures that are not vessels (off: none) ----
  distractors: bool = True
  tendon_probability: float = 0.3
  tendon_length: Range = (0.1, 0.45)  # x size
  tendon_aspect: Range = (0.12, 0.4)  # thickness / length
  tendon_echo: Range = (0.6, 1.8)
  nerve_probability: float = 0.4  # a nerve: dark fascicles in a bright sheath (honeycomb)
  nerve_radius: Range = (0.03, 0.09)  # x size
  nerve_fascicles: Range = (2.0, 6.0)  # fascicles across the nerve
  nerve_echo: Range = (0.5, 1.5)
  bone_probability: float = 0.25  # a bone surface (bright arc) with a full shadow below, under the vessels
  bone_echo: Range = (1.0, 3.0)
  bone_width: Range = (0.2, 1.0)  # x size
  num_specks: IntRange = (0, 8)  # small bright reflectors (calcification, needle tip, gas)
  speck_echo: Range = (0.8, 2.5)

  # ---- artifacts (off: none) ----
  artifacts: bool = True
  reverberation_probability: float = 0.5  # copies of the near field at multiples of a depth ...
  reverberation_period: Range = (0.03, 0.12)  # x size: ... this depth ...
  reverberation_decay: Range = (0.1, 0.5)  # ... each this much weaker than the one before
  haze: Range = (0.0, 0.15)  # diffuse clutter, times the mean tissue echo (greys the lumens) ...
  haze_depth: Range = (0.1, 1.0)  # x size: ... decaying with depth over this length
  num_shadows: IntRange = (0, 2)  # acoustic shadows below a bright reflector, never over a vessel
  shadow_width: Range = (0.02, 0.15)  # x size
  shadow_strength: Range = (1.0, 20.0)  # extra attenuation (tissue: 1)
  lifted_probe_probability: float = 0.1  # a dark strip at one side (lost contact), never over a vessel
  lifted_width: Range = (0.03, 0.2)  # x size

  # ---- gain: attenuation, TGC, noise (off: fixed, see _FIXED) ----
  gain: bool = True
  attenuation: Range = (0.5, 4.0)  # total loss over the depth, nepers (amplitude)
  tgc_compensation: Range = (0.6, 1.15)  # share of it a linear TGC ramp gives back (under / over)
  tgc_sliders: Range = (0.0, 0.4)  # std (nepers) of 8 TGC sliders' offsets
  lateral_falloff: Range = (0.0, 0.7)  # loss at the lateral edges (aperture, sector edges)
  noise_level: Range = (0.001, 0.02)  # electronic noise amplitude, amplified with the gain

  # ---- speckle: scatterers convolved with a Gaussian PSF (off: fixed PSF, see _FIXED) ----
  speckle: bool = True
  psf_axial: Range = (0.0015, 0.008)  # x size: PSF std along the beam (at 256 px: 0.4-2 px)
  psf_lateral: Range = (0.002, 0.014)  # x size: PSF std across beams at the focus
  psf_defocus: Range = (1.0, 2.5)  # lateral PSF width far from the focus / at the focus
  focus_depth: Range = (0.15, 0.85)  # x size
  scatterer_density: Range = (0.25, 1.0)  # share of cells with a scatterer, log-uniform (1: fully developed)
  speckle_contrast: Range = (0.35, 1.0)  # std / mean of the speckle's power (1: Rayleigh; less: Rician,
  # as partly developed or compounded speckle)

  # ---- compression: log compression and display (off: fixed, see _FIXED) ----
  compression: bool = True
  dynamic_range: Range = (25.0, 80.0)  # dB between black and white
  grey: Range = (0.08, 0.6)  # display level (0-1, as shown) of the median tissue: very dark to bright scans
  gamma: Range = (0.6, 1.8)  # contrast curve
  reject: Range = (0.0, 0.12)  # display levels below this are black (at most half the median tissue's)

  # ---- geometry: scan conversion (off: linear, full frame) ----
  geometry: bool = True
  sector_probability: float = 0.4  # sector (curvilinear or phased) rather than linear
  sector_angle: Range = (30.0, 100.0)  # degrees, the whole fan
  apex_distance: Range = (0.05, 1.5)  # x size: the fan's apex above the top of its box
  letterbox_probability: float = 0.6  # black margins around the image
  margin_top: Range = (0.0, 0.15)  # x size, each
  margin_bottom: Range = (0.0, 0.15)
  margin_side: Range = (0.0, 0.15)  # left and right drawn separately

  # ---- overlays at the edges (off: none) ----
  overlays: bool = True
  text_probability: float = 0.7
  text_lines: IntRange = (1, 6)
  text_height: Range = (0.015, 0.04)  # x size (at least 5 px)
  overlay_brightness: Range = (0.4, 1.0)  # display level
  depth_scale_probability: float = 0.6
  focus_marker_probability: float = 0.4
  logo_probability: float = 0.3

  def __post_init__(self):
    if self.foreground not in FOREGROUNDS:
      raise ValueError(f"foreground={self.foreground!r}; valid: {', '.join(FOREGROUNDS)}.")
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
        raise ValueError(f"RandomizationRanges.{field.name}={value}: expected a (lo, hi) pair with lo <= hi.")
      if field.name.endswith("_probability") and not 0.0 <= value <= 1.0:
        raise ValueError(f"RandomizationRanges.{field.name}={value}: a probability must be in [0, 1].")

  def without(self, *groups: str) -> "RandomizationRanges":
    """A copy with these groups (names in `GROUPS`) switched off."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
      raise ValueError(f"unknown randomisation group(s) {sorted(unknown)}; valid: {', '.join(GROUPS)}.")
    return dataclasses.replace(self, **{g: False for g in groups})

  def only(self, *groups: str) -> "RandomizationRanges":
    """A copy with only these groups on."""
    return self.without(*(g for g in GROUPS if g not in groups))


# The fixed settings of groups that are switched off (mid-range, or phantom.py's own).
_FIXED = {
    "gain": dict(attenuation=2.75, tgc_compensation=0.8, lateral_falloff=0.25, noise_level=0.012),
    "speckle": dict(psf_axial=0.0035, psf_lateral=0.006, psf_defocus=1.0, focus_depth=0.5,
                    scatterer_density=1.0, speckle_contrast=1.0),
    "compression": dict(dynamic_range=50.0, grey=0.45, gamma=1.0, reject=0.0),
}


@dataclasses.dataclass
class RandomVessel(phantom.Vessel):
  """A phantom vessel with the randomised looks `phantom.Vessel` lacks (beam-space pixels)."""
  blur: float = 0.0  # width of the soft lumen edge
  specularity: float = 0.7
  lumen_rel: float = 0.0  # lumen echo, times the surrounding tissue's
  smoke_rel: float = 0.0
  fill_fraction: float = 0.0  # share of the lumen's height that is filled
  fill_angle: float = 0.0  # direction (radians, 0 = down) of the filled side
  fill_rel: float = 0.0
  enhancement: float = 0.9

  def signed_distance(self, ys: np.ndarray, xs: np.ndarray):
    """`phantom.Vessel.signed_distance` in float32 (the same formula; its float64 scalars upcast it)."""
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


@dataclasses.dataclass
class RandomFrame:
  """One randomised frame with what it was drawn from (for tests and figures)."""
  image: np.ndarray  # uint8 [H, W]
  mask: np.ndarray  # uint8 [H, W]: 1 = lumen of a foreground vessel
  instances: np.ndarray  # uint8 [H, W]: vessel i + 1 over its lumen (veins and arteries alike)
  valid: np.ndarray  # bool [H, W]: inside the fan or box (the rest is black margin)
  vessels: List[phantom.Vessel]  # in beam space (= frame space when geometry is off)
  foreground: List[bool]  # per vessel: is it in the mask
  info: Dict[str, dict]  # per group: the values it drew


# ---- Smooth random fields: cubic B-spline upsampling of a coarse noise grid (no BLAS, cheap) ----


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


def _grid(rng: np.random.Generator, cells_y: float, cells_x: float) -> np.ndarray:
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


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
  """A smooth unit-variance field [height, width] from its coarse noise grid (`_grid`)."""
  return _interpolate(_interpolate(grid, width, axis=1), height, axis=0)


def _field(rng: np.random.Generator, n: int, cells_y: float, cells_x: Optional[float] = None) -> np.ndarray:
  """A smooth Gaussian random field [n, n], unit std, about `cells` correlation lengths across."""
  return _upsample(_grid(rng, cells_y, cells_x or cells_y), n, n)


def _field_1d(rng: np.random.Generator, count: int, n: int, cells: float) -> np.ndarray:
  """`count` smooth unit-std random curves over n columns [count, n]."""
  grid = rng.standard_normal((count, int(math.ceil(cells)) + 3), dtype=np.float32)
  return _interpolate(grid, n, axis=1)


def _coords(n: int) -> Tuple[np.ndarray, np.ndarray]:
  """Pixel-centre depths ys [n, 1] and lateral positions xs [1, n]."""
  c = np.arange(n, dtype=np.float32) + 0.5
  return c[:, None], c[None, :]


def _u(rng: np.random.Generator, r: Range) -> float:
  return float(rng.uniform(r[0], r[1]))


def _log_u(rng: np.random.Generator, r: Range) -> float:
  return float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1]))))


def _int(rng: np.random.Generator, r: IntRange) -> int:
  return int(rng.integers(r[0], r[1] + 1))


def _band(ys: np.ndarray, center, half_width: float) -> np.ndarray:
  return np.exp(-(((ys - center) / max(half_width, 0.6)) ** 2))


# ---- Geometry: where each frame pixel lies in beam space ----


@dataclasses.dataclass
class _Geometry:
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
    ys, xs = _coords(n)
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


def _sample_geometry(rng: np.random.Generator, p: RandomizationRanges, n: int) -> _Geometry:
  if not p.geometry:
    return _Geometry("identity", (0.0, n, 0.0, n))
  sector = rng.random() < p.sector_probability
  if rng.random() < p.letterbox_probability:
    y0, y1 = _u(rng, p.margin_top) * n, n - _u(rng, p.margin_bottom) * n
    x0, x1 = _u(rng, p.margin_side) * n, n - _u(rng, p.margin_side) * n
  else:
    y0, y1, x0, x1 = 0.0, float(n), 0.0, float(n)
  if not sector:
    return _Geometry("linear", (y0, y1, x0, x1))
  for _ in range(10):
    half = math.radians(_u(rng, p.sector_angle)) / 2
    d = _u(rng, p.apex_distance) * n
    r0 = d / math.cos(half)  # the fan's top corners touch the top of the box
    r1 = min(y1 - y0 + d, (x1 - x0) / (2 * math.sin(half)))
    if r1 - r0 >= 0.5 * (y1 - y0):
      return _Geometry("sector", (y0, y1, x0, x1), (y0 - d, 0.5 * (x0 + x1)), (r0, r1), half)
  return _Geometry("linear", (y0, y1, x0, x1))


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


# ---- Tissue ----


@dataclasses.dataclass
class _Tissue:
  echo: np.ndarray
  mu: np.ndarray
  skin: float  # depth (px) of the skin's lower edge: vessels lie below it
  fascia: float  # a deep-fascia depth for phantom.py's vessel placement
  level: float  # typical tissue echo (for haze, looks)


def _phantom_tissue(rng: np.random.Generator, n: int) -> _Tissue:
  scene = phantom.sample_scene(rng, n)
  echo, mu = phantom.render_tissue(scene.anatomy, n, rng)
  a = scene.anatomy
  return _Tissue(echo.astype(np.float32), mu, a.skin + a.skin_thick, a.fascia_depth,
                 0.5 * (a.fat_level + a.muscle_level))


def _stripes(rng: np.random.Generator, p: RandomizationRanges, n: int, ys, xs) -> np.ndarray:
  """Fine, broken echogenic lines at a random angle and spacing (0..~2)."""
  period = max(_u(rng, p.striation_period) * n, 2.5)
  angle = _u(rng, p.striation_angle)
  warp = _field(rng, n, 4.0) * (0.03 * n)
  phase = (ys * math.cos(angle) + xs * math.sin(angle) + warp) * (2 * math.pi / period)
  sharpness = max(0.05, (2.2 / period) ** 2)
  streaks = np.clip(_field(rng, n, _u(rng, (4.0, 8.0)), _u(rng, (8.0, 20.0))), 0, 2)
  return np.exp(-(np.sin(phase) ** 2) / sharpness) * streaks


def _random_tissue(rng: np.random.Generator, p: RandomizationRanges, n: int) -> Tuple[_Tissue, dict]:
  ys, xs = _coords(n)
  skin = _u(rng, p.skin_depth) * n
  skin_thick = rng.uniform(0.008, 0.025) * n
  num = _int(rng, p.num_layers)
  depths = np.sort(rng.uniform(skin + skin_thick + 0.03 * n, 1.1 * n, num - 1)).astype(np.float32)
  tilt = rng.uniform(*p.boundary_tilt, num - 1).astype(np.float32)
  wave = rng.uniform(*p.boundary_wave, num - 1).astype(np.float32) * n
  bounds = (depths[:, None] + tilt[:, None] * (xs - 0.5 * n)
            + wave[:, None] * _field_1d(rng, num - 1, n, _u(rng, (2.0, 8.0))))  # [num - 1, n]
  index = np.zeros((n, n), dtype=np.int8)
  for k in range(num - 1):
    index += ys > bounds[k][None, :]

  levels = np.exp(rng.uniform(np.log(p.layer_echo[0]), np.log(p.layer_echo[1]), num)).astype(np.float32)
  texture = rng.uniform(*p.layer_texture, num).astype(np.float32)
  striated = (rng.random(num) < p.striation_probability) * rng.uniform(*p.striation_echo, num)
  lobular = (rng.random(num) < p.lobule_probability) * rng.uniform(*p.lobule_echo, num)
  cells = _u(rng, p.texture_cells)
  hetero = _field(rng, n, cells * _u(rng, (1.0, 3.0)), cells)  # structures elongated along the skin
  t = texture[index]
  echo = levels[index] * np.exp(t * hetero - 0.5 * t**2)
  if striated.any():
    echo += striated.astype(np.float32)[index] * _stripes(rng, p, n, ys, xs)
  if lobular.any():
    lob_cells = _u(rng, (6.0, 14.0))
    lobules = _field(rng, n, 2.2 * lob_cells, lob_cells)
    septa = np.exp(-((lobules / _u(rng, (0.1, 0.2))) ** 2))
    lob = lobular.astype(np.float32)[index]
    echo *= 1.0 + np.where(lob > 0, np.float32(0.5), np.float32(0.0)) * np.tanh(lobules)
    echo += lob * septa
  density = _u(rng, p.speck_density) * min(n / phantom._REFERENCE_SIZE, 1.0)  # pylint: disable=protected-access
  count = int(density * n * n)
  if count:
    flat = echo.reshape(-1)
    flat[rng.integers(0, n * n, count)] += rng.uniform(0.5, 1.5, count).astype(np.float32)

  # Echogenic interfaces (fascia) on the layer boundaries, broken in places.
  interfaces = rng.uniform(*p.interface_echo, num - 1).tolist()  # Python floats: no float64 upcasts
  widths = (rng.uniform(*p.interface_width, num - 1) * n).tolist()
  gaps = _field_1d(rng, max(num - 1, 1), n, _u(rng, (3.0, 12.0)))
  gap_share = rng.uniform(*p.interface_gaps, num - 1).tolist()
  for k in range(num - 1):
    w = max(widths[k], 0.6)
    top, bottom = int(max(bounds[k].min() - 3 * w, 0)), int(min(bounds[k].max() + 3 * w + 1, n))
    if bottom <= top or interfaces[k] <= 0:
      continue
    # Threshold of a unit Gaussian curve that leaves about `gap_share` of the line broken off.
    keep = np.clip((gaps[k] - (2.5 * gap_share[k] - 1.25)) * 2.0 + 0.5, 0, 1)
    echo[top:bottom] += interfaces[k] * keep[None, :] * _band(ys[top:bottom], bounds[k][None, :], w)

  echo *= ys > skin  # gel / stand-off above the skin
  echo += _u(rng, p.skin_echo) * _band(ys, skin + 0.5 * skin_thick, 0.5 * skin_thick)
  echo += _u(rng, p.near_field_echo) * _band(ys, 0.006 * n, 0.004 * n)
  fascia = float(np.clip(depths[0] if num > 1 else 0.45 * n, skin + 0.15 * n, 0.65 * n))
  mu = np.ones((n, n), dtype=np.float32)
  info = dict(num_layers=num, levels=levels.tolist(), skin=skin)
  return _Tissue(echo.astype(np.float32), mu, skin + skin_thick, fascia, float(np.median(levels))), info


# ---- Vessels ----


def _min_half_axis(n: int) -> float:
  return max(1.0, 0.006 * n)


def _random_vessels(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: _Tissue,
                    geometry: _Geometry) -> List[RandomVessel]:
  """Veins and arteries that overlap neither each other, the skin nor the bottom (beam space)."""
  vessels: List[RandomVessel] = []
  kinds = [True] * _int(rng, p.num_veins) + [False] * _int(rng, p.num_arteries)
  for is_vein in kinds:
    for _ in range(30):
      cy = _u(rng, p.vessel_depth) * n
      cx = rng.uniform(0.05, 0.95) * n
      sy, sx = geometry.scale(n, cy)
      if is_vein:
        radius = _u(rng, p.vein_radius) * n
        aspect = _u(rng, p.compressed_aspect if rng.random() < p.compressed_probability else p.vein_aspect)
        angle, wall = _u(rng, p.vein_tilt), _u(rng, p.vein_wall) * n
      else:
        radius = _u(rng, p.artery_radius) * n
        aspect, angle, wall = _u(rng, p.artery_aspect), rng.uniform(0, np.pi), _u(rng, p.artery_wall) * n
      # Sizes are drawn in frame pixels; a beam-space vessel is pre-distorted to look so after scan conversion.
      a = max(radius / sx, 1.5)
      b = max(radius * aspect / sy, _min_half_axis(n))
      irregular = _u(rng, p.irregularity)
      harmonics = [(k, rng.uniform(-irregular, irregular), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
      v = RandomVessel(cx, cy, a, b, angle, max(wall / sy, 0.0), harmonics, is_vein)
      rad = v.outer_radius
      vertical = max(b, a * abs(math.sin(angle))) * (1 + 2 * irregular) + v.wall
      if cy - vertical < tissue.skin + 0.01 * n or cy + vertical > 0.98 * n:
        continue
      if any(np.hypot(cx - o.cx, cy - o.cy) < rad + o.outer_radius + 0.01 * n for o in vessels):
        continue
      y0, y1, x0, x1 = _bbox(n, cy, cx, rad)
      if tissue.echo[y0:y1, x0:x1].mean() < 0.4 * tissue.level:  # a black lumen in black tissue: unseen
        continue
      v.wall_gain = _u(rng, p.wall_echo)
      v.specularity = _u(rng, p.wall_specularity)
      v.blur = _u(rng, p.border_blur) * n / sy
      v.lumen_rel = _u(rng, p.lumen_echo)
      if rng.random() < p.smoke_probability:
        v.smoke_grid = _grid(rng, 3.0, 3.0)
        v.smoke_rel = _u(rng, p.smoke_echo)
      if rng.random() < p.partial_fill_probability:
        v.fill_fraction, v.fill_angle = _u(rng, p.partial_fill), rng.normal(0.0, 0.8)
        v.fill_rel = _u(rng, p.fill_echo)
      v.enhancement = _u(rng, p.posterior_enhancement)
      v.refraction = _u(rng, p.edge_shadow)
      vessels.append(v)
      break
  return vessels


def _phantom_vessels(rng: np.random.Generator, n: int, tissue: _Tissue) -> List[phantom.Vessel]:
  vessels = phantom._place_vessels(rng, n, tissue.skin, tissue.fascia)  # pylint: disable=protected-access
  for vessel in vessels:
    phantom._sample_looks(rng, vessel, tissue.level)  # pylint: disable=protected-access
  return vessels


def _bbox(n: int, cy: float, cx: float, r: float):
  r = int(math.ceil(r)) + 2
  return max(int(cy) - r, 0), min(int(cy) + r + 1, n), max(int(cx) - r, 0), min(int(cx) + r + 1, n)


def _ring_width(vessel: phantom.Vessel) -> float:
  """Width (px) of the ring of tissue around a vessel that `_contrast` compares its lumen with."""
  return max(2.0, 0.3 * min(vessel.a, vessel.b))


def _vessel_box(vessel: phantom.Vessel, n: int):
  """A vessel's pixels (bbox), with its soft edge and the ring around it, and the signed distance there."""
  ys, xs = _coords(n)
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


def _draw_random_vessels(vessels: Sequence[RandomVessel], n: int, echo: np.ndarray, mu: np.ndarray):
  """Draws the vessels into echo and mu in place -> instance mask (vessel i: i + 1 over its lumen), and
  each vessel's `_vessel_box` (None when out of the frame)."""
  ys, xs = _coords(n)
  instances = np.zeros((n, n), dtype=np.uint8)
  boxes = []
  for index, v in enumerate(vessels):
    boxes.append(_vessel_box(v, n))
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
      content = content + v.smoke_rel * local * np.clip(1.0 + 0.6 * _upsample(v.smoke_grid, y1 - y0, x1 - x0),
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


def _contrast(vessel: phantom.Vessel, box, n: int, display: np.ndarray, gamma: float = 1.0) -> float:
  """How much darker a vessel's lumen is than the tissue around it (Weber contrast of display levels).

  (around - lumen) / max(around, 0.15), with `around` the brighter of the mean display level of the wall
  and that of a ring of tissue around it, and `lumen` the mean level of the lumen (its unfilled part where
  partly filled). The wall counts on its own, so that a bright wall shows a vessel in tissue as dark as its
  lumen; means, not medians, so that a lumen among sparse bright scatterers counts as seen; relative, so
  that a black lumen in dark tissue does too.
  """
  if box is None:
    return 0.0
  ys, xs = _coords(n)
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


# ---- Distractors ----


def _clear_of(vessels, cy: float, cx: float, r: float, gap: float) -> bool:
  return all(np.hypot(cx - v.cx, cy - v.cy) > r + v.outer_radius + gap for v in vessels)


def _ellipse(ys, xs, cy, cx, a, b, angle):
  c, s = math.cos(angle), math.sin(angle)
  u, v = c * (xs - cx) + s * (ys - cy), -s * (xs - cx) + c * (ys - cy)
  return u, v, np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _distractors(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: _Tissue,
                 vessels) -> List[str]:
  """Draws tendons, nerves, a bone and specks into the tissue, clear of the vessels. -> their kinds."""
  ys, xs = _coords(n)
  echo, mu = tissue.echo, tissue.mu
  drawn = []

  def place(r):
    if tissue.skin + r >= 0.95 * n - r:
      return None
    for _ in range(20):
      cy, cx = rng.uniform(tissue.skin + r, 0.95 * n - r), rng.uniform(0.05, 0.95) * n
      if _clear_of(vessels, cy, cx, r, 0.01 * n):
        return cy, cx
    return None

  if rng.random() < p.tendon_probability:
    half = 0.5 * _u(rng, p.tendon_length) * n
    thick, angle, level = half * _u(rng, p.tendon_aspect), rng.normal(0, 0.15), _u(rng, p.tendon_echo)
    period = max(_u(rng, (0.008, 0.02)) * n, 2.0)
    at = place(half)
    if at:
      y0, y1, x0, x1 = _bbox(n, at[0], at[1], half)
      _, v, q = _ellipse(ys[y0:y1], xs[:, x0:x1], at[0], at[1], half, max(thick, 1.0), angle)
      inside = np.clip((1 - q) * 4, 0, 1)
      fibrils = 0.6 + 0.4 * np.cos(2 * np.pi * v / period) ** 2
      echo[y0:y1, x0:x1] = echo[y0:y1, x0:x1] * (1 - inside) + inside * level * fibrils
      mu[y0:y1, x0:x1] += 0.5 * inside
      drawn.append("tendon")
  if rng.random() < p.nerve_probability:
    r = _u(rng, p.nerve_radius) * n
    aspect, angle, level = rng.uniform(0.5, 1.0), rng.normal(0, 0.3), _u(rng, p.nerve_echo)
    fascicles, threshold, dark = _u(rng, p.nerve_fascicles), rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.3)
    grid = _grid(rng, 1.5 * fascicles, 1.5 * fascicles)
    at = place(r)
    if at:
      y0, y1, x0, x1 = _bbox(n, at[0], at[1], r)
      _, _, q = _ellipse(ys[y0:y1], xs[:, x0:x1], at[0], at[1], r, r * aspect, angle)
      inside = np.clip((1 - q) * 5, 0, 1)
      holes = np.clip((_upsample(grid, y1 - y0, x1 - x0) - threshold) * 3, 0, 1) * np.clip((0.85 - q) * 8, 0, 1)
      sheath = level * (1 - holes * (1 - dark))
      echo[y0:y1, x0:x1] = echo[y0:y1, x0:x1] * (1 - inside) + inside * sheath
      drawn.append("nerve")
  if rng.random() < p.bone_probability:
    xc, half = rng.uniform(0.1, 0.9) * n, 0.5 * _u(rng, p.bone_width) * n
    curve, level = rng.uniform(-0.05, 0.15) * n, _u(rng, p.bone_echo)
    # Below every vessel it would shadow.
    floor = max([v.cy + v.outer_radius + 0.03 * n for v in vessels if abs(v.cx - xc) < half + v.outer_radius]
                + [0.5 * n, tissue.skin + 0.1 * n])
    if floor < 0.93 * n:
      depth = rng.uniform(floor, 0.95 * n)
      rel = (xs - xc) / half
      bone_y = depth + curve * rel**2
      extent = np.clip(1.5 - 1.5 * rel**2, 0, 1)
      if curve < 0:  # concave: its ends rise; keep them below the floor too
        bone_y = np.maximum(bone_y, floor)
      echo += level * extent * _band(ys, bone_y, 0.008 * n)
      mu += 40.0 * extent * (ys > bone_y)
      drawn.append("bone")
  for _ in range(_int(rng, p.num_specks)):
    level, r = _u(rng, p.speck_echo), rng.uniform(0.5, 1.5) * max(n / 256, 0.5)
    at = place(r + 1)
    if at:
      y0, y1, x0, x1 = _bbox(n, at[0], at[1], r + 1)
      echo[y0:y1, x0:x1] += level * np.exp(-((ys[y0:y1] - at[0]) ** 2 + (xs[:, x0:x1] - at[1]) ** 2) / r**2)
      drawn.append("speck")
  return drawn


# ---- Artefacts ----


def _columns_clear(vessels, x0: float, x1: float, below: float) -> bool:
  """No vessel reaches below depth `below` within columns [x0, x1]."""
  return all(v.cy + v.outer_radius < below or v.cx + v.outer_radius < x0 or v.cx - v.outer_radius > x1
             for v in vessels)


def _artifacts(rng: np.random.Generator, p: RandomizationRanges, n: int, tissue: _Tissue, vessels) -> dict:
  """Reverberation and haze (over everything, lumens included), shadows and a lifted probe edge (mu)."""
  ys, xs = _coords(n)
  echo, mu = tissue.echo, tissue.mu
  info = {}
  if rng.random() < p.reverberation_probability:
    period = max(int(_u(rng, p.reverberation_period) * n), 2)
    decay = _u(rng, p.reverberation_decay)
    band = echo[:period].copy()
    for k in range(1, 5):
      start = k * period
      if start >= n or decay**k < 0.01:
        break
      rows = min(period, n - start)
      echo[start:start + rows] += decay**k * band[:rows]
    info["reverberation"] = (period, decay)
  haze, length = _u(rng, p.haze), _u(rng, p.haze_depth) * n
  echo += haze * tissue.level * np.exp(-ys / length)
  info["haze"] = haze
  shadows = []
  for _ in range(_int(rng, p.num_shadows)):
    width, strength = _u(rng, p.shadow_width) * n, _u(rng, p.shadow_strength)
    for _ in range(20):
      xc, top = rng.uniform(0.05, 0.95) * n, rng.uniform(tissue.skin + 0.05 * n, 0.9 * n)
      if _columns_clear(vessels, xc - width, xc + width, top):
        edges = np.clip(1.0 - np.abs(xs - xc) / (0.5 * width), 0, 1) ** 0.5
        mu += strength * edges * (ys > top)
        echo += _u(rng, (0.5, 2.0)) * edges * _band(ys, top, max(0.005 * n, 0.7))  # the reflector
        shadows.append((xc, top, width))
        break
  info["shadows"] = shadows
  if rng.random() < p.lifted_probe_probability:
    width, left = _u(rng, p.lifted_width) * n, rng.random() < 0.5
    near = [v.cx - v.outer_radius for v in vessels] if left else [n - v.cx - v.outer_radius for v in vessels]
    width = min([width] + [w - 0.01 * n for w in near])
    if width > 0.02 * n:
      side = np.clip((width - (xs if left else n - xs)) / 3.0, 0, 1)
      mu += 30.0 * side
      info["lifted"] = ("left" if left else "right", width)
  return info


# ---- Acoustics, speckle, display ----


def _gain_params(rng: np.random.Generator, p: RandomizationRanges) -> dict:
  drawn = dict(attenuation=_u(rng, p.attenuation), tgc_compensation=_u(rng, p.tgc_compensation),
               sliders=rng.normal(0.0, 1.0, 8) * _u(rng, p.tgc_sliders), lateral_falloff=_u(rng, p.lateral_falloff),
               lateral_power=rng.uniform(1.5, 4.0), noise_level=_u(rng, p.noise_level))
  if not p.gain:
    drawn.update(_FIXED["gain"], sliders=np.zeros(8), lateral_power=3.0)
  return drawn


def _speckle_params(rng: np.random.Generator, p: RandomizationRanges) -> dict:
  drawn = dict(psf_axial=_u(rng, p.psf_axial), psf_lateral=_u(rng, p.psf_lateral),
               psf_defocus=_u(rng, p.psf_defocus), focus_depth=_u(rng, p.focus_depth),
               scatterer_density=_log_u(rng, p.scatterer_density), speckle_contrast=_u(rng, p.speckle_contrast))
  return drawn if p.speckle else dict(_FIXED["speckle"])


def _compression_params(rng: np.random.Generator, p: RandomizationRanges) -> dict:
  drawn = dict(dynamic_range=_u(rng, p.dynamic_range), grey=_u(rng, p.grey), gamma=_u(rng, p.gamma),
               reject=_u(rng, p.reject))
  return drawn if p.compression else dict(_FIXED["compression"])


def _cumsum_rows(x: np.ndarray) -> np.ndarray:
  """np.cumsum(x, axis=0), row by row (about 3x faster for [n, n] float32: contiguous rows)."""
  out = np.empty_like(x)
  np.copyto(out[0], x[0])
  for i in range(1, x.shape[0]):
    np.add(out[i - 1], x[i], out=out[i])
  return out


def _gaussian_transfer(length: int, sigma: float) -> np.ndarray:
  """The DFT of a unit-sum periodic Gaussian of std `sigma` pixels, over `length` samples."""
  f = sp_fft.fftfreq(length).astype(np.float32)
  return np.exp(-2.0 * (np.pi * sigma * f) ** 2).astype(np.float32)


def _speckle_power(amplitude: np.ndarray, spk: dict, noise: np.random.Generator) -> np.ndarray:
  """The envelope power [n, n] of `amplitude` (the echo after attenuation and gain) with speckle: its mean
  is amplitude^2 where that is uniform, its std / mean `speckle_contrast` (below a pixel's size, less).

  Scatterers times the echo, convolved with the PSF (a separable Gaussian, laterally wider away from the
  focus), then the envelope's power. The scatterers are complex, unit power, maybe sparse, plus a coherent
  part that lowers the speckle contrast (Rician speckle: partly developed, or compounded). They are uniform
  rather than Gaussian (5x cheaper to draw): the PSF sums several, so the field is near Gaussian.
  """
  n = amplitude.shape[0]
  yn = _coords(n)[0] / n
  sigma_y = max(spk["psf_axial"] * n, 0.35)
  sigma_x = max(spk["psf_lateral"] * n, 0.35)
  pad = int(math.ceil(3 * max(sigma_y, sigma_x * spk["psf_defocus"])))
  length = sp_fft.next_fast_len(n + pad)  # zero padding: no wrap-around of the convolution
  hy = _gaussian_transfer(length, sigma_y)
  hxs = [_gaussian_transfer(length, sigma_x)]
  if spk["psf_defocus"] > 1.02:
    hxs.append(_gaussian_transfer(length, sigma_x * spk["psf_defocus"]))
  spreads = [float(np.mean(hy**2) * np.mean(hx**2)) for hx in hxs]  # sum of the PSF squared (unit-sum PSF)
  # Speckle contrast (std / mean of the power) at the focus; below a pixel, cells average within a pixel.
  contrast = spk["speckle_contrast"] * min(1.0, math.sqrt(spk["psf_axial"] * n / 0.5 * spk["psf_lateral"] * n / 0.5))
  contrast = min(max(contrast, 0.05), 1.0)
  ratio = ((1 - contrast**2) + math.sqrt(1 - contrast**2)) / contrast**2  # Rician K: coherent / diffuse power
  coherent = math.sqrt(ratio * spreads[0])
  density = spk["scatterer_density"]
  z = noise.random((n, n, 2), dtype=np.float32)
  z -= np.float32(0.5)
  field = z.view(np.complex64)[..., 0]  # [n, n] complex, real and imaginary parts uniform on +-0.5
  field *= np.float32(math.sqrt(6.0))  # unit power
  if density < 0.999:
    field *= (noise.random((n, n), dtype=np.float32) < density) * np.float32(1.0 / math.sqrt(density))
  field += np.float32(coherent)
  field *= amplitude
  # fft2 axis by axis, transforming only the rows and columns that are not all padding.
  spectrum = sp_fft.fft(sp_fft.fft(field, n=length, axis=1, workers=1), n=length, axis=0, workers=1,
                        overwrite_x=True)
  spectrum *= hy[:, None]
  rows = sp_fft.ifft(spectrum, axis=0, workers=1, overwrite_x=True)[:n]
  powers = []
  for k, (hx, spread) in enumerate(zip(hxs, spreads)):
    filtered = rows * hx[None, :] if k + 1 < len(hxs) else np.multiply(rows, hx[None, :], out=rows)
    out = sp_fft.ifft(filtered, axis=1, workers=1, overwrite_x=True)[:, :n]
    power = out.real**2
    power += out.imag**2
    power *= np.float32(1.0 / (spread + coherent**2))  # mean power = amplitude^2 (where it is uniform)
    powers.append(power)
  power = powers[0]
  if len(powers) > 1:  # wider laterally away from the focus
    blend = np.clip(np.abs(yn - spk["focus_depth"]) * 2.5, 0, 1)
    power *= 1 - blend
    power += powers[1] * blend
  return power


def _bmode(echo: np.ndarray, mu: np.ndarray, skin: float, gain: dict, spk: dict, comp: dict,
           noise: np.random.Generator) -> np.ndarray:
  """Beam-space acoustics -> display levels in [0, 1] (before the contrast curve). In place where it can."""
  n = echo.shape[0]
  ys, xs = _coords(n)
  yn = ys / n
  sliders = np.interp(yn[:, 0], np.linspace(0, 1, 8), gain["sliders"]).astype(np.float32)[:, None]
  alpha = gain["attenuation"]
  log_gain = (alpha * gain["tgc_compensation"]) * yn + sliders  # TGC [n, 1]
  lateral = 1.0 - gain["lateral_falloff"] * np.abs(2 * xs / n - 1) ** gain["lateral_power"]  # [1, n]
  amplitude = _cumsum_rows(mu)  # the path through attenuating tissue ...
  amplitude *= np.float32(-alpha / n)
  amplitude += log_gain
  np.exp(amplitude, out=amplitude)
  amplitude *= echo
  amplitude *= lateral.astype(np.float32)

  power = _speckle_power(amplitude, spk, noise)
  electronic = noise.standard_exponential((n, n), dtype=np.float32)
  electronic *= gain["noise_level"] ** 2 * np.exp(2 * log_gain)
  power += electronic
  power += np.float32(1e-12)
  db = np.log10(power, out=power)
  db *= np.float32(10.0)
  # The operator's gain: the median tissue (below the skin) is shown at `grey` (after the contrast curve,
  # display ** gamma); then reject and clip.
  reference = float(np.median(db[int(skin) + 1::3, ::3])) if skin < n - 4 else float(np.median(db))
  level = comp["grey"] ** (1.0 / comp["gamma"])
  reject = min(comp["reject"], 0.5 * level)
  scale = 1.0 / (comp["dynamic_range"] * (1 - reject))
  display = db
  display -= np.float32(reference)
  display *= np.float32(scale)
  display += np.float32((level - reject) / (1 - reject))
  return np.clip(display, 0.0, 1.0, out=display)


# ---- Overlays ----


def _glyph_line(rng: np.random.Generator, count: int, scale: int) -> np.ndarray:
  """A row of `count` random 5x3 glyphs (bool), each pixel `scale` wide, one glyph column apart."""
  glyphs = rng.random((count, 5, 3)) < 0.55
  row = np.zeros((5, count * 4), dtype=bool)
  for i, g in enumerate(glyphs):
    row[:, 4 * i:4 * i + 3] = g
  return np.kron(row, np.ones((scale, scale), dtype=bool))


def _overlays(rng: np.random.Generator, p: RandomizationRanges, display: np.ndarray, protect: np.ndarray,
              box: Tuple[float, float, float, float]) -> List[str]:
  """Draws text-like glyphs, a depth scale, a focus marker and a logo near the edges (not over `protect`)."""
  n = display.shape[0]
  level = np.float32(_u(rng, p.overlay_brightness))
  drawn = []

  def put(y: int, x: int, shape: np.ndarray, value=level):
    h, w = shape.shape
    y, x = max(min(y, n - h), 0), max(min(x, n - w), 0)
    region = shape[:n - y, :n - x] & ~protect[y:y + h, x:x + w]
    display[y:y + h, x:x + w][region] = value

  y0, y1, x0, x1 = (int(round(v)) for v in box)
  if rng.random() < p.text_probability:
    scale = max(1, int(round(_u(rng, p.text_height) * n / 5)))
    lines = _int(rng, p.text_lines)
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


# ---- The generator ----


def _streams(seed: phantom.Seed) -> Dict[str, np.random.Generator]:
  """One random stream per group, and one for the noise (scatterers, electronic noise)."""
  entropy = [int(s) for s in np.atleast_1d(np.asarray(seed, dtype=np.int64))] + [_SALT]
  children = np.random.SeedSequence(entropy).spawn(len(GROUPS) + 1)
  return {name: np.random.default_rng(c) for name, c in zip(GROUPS + ("noise",), children)}


def generate_randomized_frame(seed: phantom.Seed, size: int = 256,
                              params: RandomizationRanges = RandomizationRanges()) -> RandomFrame:
  """A randomised frame with its masks and what it was drawn from; see the module docstring."""
  phantom.check_size(size)
  n, p = size, params
  rng = _streams(seed)
  info: Dict[str, dict] = {}
  geometry = _sample_geometry(rng["geometry"], p, n)
  info["geometry"] = dict(kind=geometry.kind, box=geometry.box, half_angle=geometry.half_angle)

  if p.layers:
    tissue, info["layers"] = _random_tissue(rng["layers"], p, n)
  else:
    tissue, info["layers"] = _phantom_tissue(rng["layers"], n), {}
  vessels = (_random_vessels(rng["vessels"], p, n, tissue, geometry) if p.vessels
             else _phantom_vessels(rng["vessels"], n, tissue))
  info["vessels"] = dict(veins=sum(v.is_vein for v in vessels), arteries=sum(not v.is_vein for v in vessels))
  info["distractors"] = dict(drawn=_distractors(rng["distractors"], p, n, tissue, vessels) if p.distractors else [])
  if p.vessels:
    instances, boxes = _draw_random_vessels(vessels, n, tissue.echo, tissue.mu)
  else:
    _, instances = phantom.draw_vessels(vessels, n, tissue.echo, tissue.mu)
    boxes = [_vessel_box(v, n) for v in vessels]
  info["artifacts"] = _artifacts(rng["artifacts"], p, n, tissue, vessels) if p.artifacts else {}

  gain, spk, comp = (_gain_params(rng["gain"], p), _speckle_params(rng["speckle"], p),
                     _compression_params(rng["compression"], p))
  info.update(gain=gain, speckle=spk, compression=comp)
  display = _bmode(tissue.echo, tissue.mu, tissue.skin, gain, spk, comp, rng["noise"])

  # A vessel the frame does not show (lumen hardly darker than its surroundings) is not in the mask.
  contrasts = [_contrast(v, box, n, display, comp["gamma"]) for v, box in zip(vessels, boxes)]
  foreground = [(v.is_vein or p.foreground == "vessel") and c >= p.min_contrast
                for v, c in zip(vessels, contrasts)]
  info["vessels"]["contrast"] = contrasts
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
  lut_ids = np.array([0] + [i + 1 for i, f in enumerate(foreground) if f], dtype=np.int64)
  table = np.zeros(256, dtype=np.uint8)
  table[lut_ids[1:]] = 1
  mask = table[instances]
  info["overlays"] = dict(drawn=_overlays(rng["overlays"], p, display, instances > 0, geometry.box)
                          if p.overlays else [])
  lut = np.round(255.0 * (np.arange(256) / 255.0) ** comp["gamma"]).astype(np.uint8)
  image = lut[np.round(display * 255.0).astype(np.uint8)]
  return RandomFrame(image, mask, instances.astype(np.uint8), valid, list(vessels), foreground, info)


def generate_randomized_example(seed: phantom.Seed, size: int = 256,
                                params: RandomizationRanges = RandomizationRanges()) -> Tuple[np.ndarray, np.ndarray]:
  """One randomised frame and its mask.

  Args:
    seed: int or sequence of non-negative ints (e.g. `phantom.example_seed(split, index)`); the same seed and
      params always give the same frame.
    size: height = width in pixels (>= 32).
    params: the ranges and switches (`RandomizationRanges`); foreground "vessel" or "vein".

  Returns:
    image: uint8 [size, size] B-mode frame. mask: uint8 [size, size], 1 = lumen of a foreground vessel.
  """
  frame = generate_randomized_frame(seed, size, params)
  return frame.image, frame.mask
