"""A synthetic B-mode phantom of shallow veins in transverse section (numpy only, deterministic by seed).

`generate_example(seed, size)` returns one frame and its vein mask. The frame imitates a linear-probe
transverse scan of the forearm or leg:

- anatomy, as an echogenicity (reflectivity) map: a near-field band, the skin line, subcutaneous fat with
  hypoechoic lobules between echogenic septa, one or two fascia lines, muscle with oblique striation, and
  sometimes a bone surface deep down;
- 1 to 3 veins (the foreground, mask value 1), most in the subcutaneous fat: oval and often flattened by
  probe pressure, slightly irregular, anechoic lumen (about a third with faint "smoke" from slow flow), a thin
  echogenic wall that is brightest where the beam meets it at right angles (top and bottom);
- 0 to 2 arteries (background distractors): round, thick bright wall, equally dark lumen, at or below the
  deep fascia;
- acoustics along each beam (image column): cumulative attenuation with partial time-gain compensation,
  so fluid (little attenuation) brightens the tissue below a vessel (posterior enhancement) while bone and the
  lateral edges of vessels (refraction) cast shadows; multiplicative Rayleigh speckle; electronic noise that
  the gain amplifies with depth; log compression with a random dynamic range, gain and contrast.

Everything is drawn relative to the image size and generated at the requested size directly, so a 128x128
frame is the same scene as its 512x512 counterpart (same seed), with speckle as coarse as a downsized frame.
Intensity alone does not separate veins from arteries, dark fat lobules and shadows; shape, wall and position do.

The mask labels the vein lumen: pixels whose centre lies inside the inner wall boundary.

Sampling is separate from rendering: `veinjax.data.phantom_scene.sample_scene` draws every scene parameter
(tissue layers, vessels and their looks, acoustics), and `render_tissue`, `draw_vessels`, `to_bmode` here
turn a scene into a frame. A frame is the same bytes however it is assembled, which
`veinjax.data.phantom_clips` relies on to re-render one scene with a moving probe, pulsating arteries and
compressed veins. The scene's names (`Seed`, `Vessel`, `Anatomy`, `Scene`, `scene_rngs`, `sample_scene`)
are importable from here too.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

# The scene, sampled by phantom_scene; re-exported so that `phantom` stays the phantom's one import.
from veinjax.data.phantom_scene import (  # pylint: disable=unused-import
    Anatomy, Scene, Seed, Vessel, sample_scene, scene_rngs)

# The generator's geometry and speckle grain are specified for this reference size and scaled from it.
_REFERENCE_SIZE = 512


def _field_values(grid: np.ndarray, height: int, width: int, rows: slice = slice(None)) -> np.ndarray:
  """A smooth Gaussian random field with unit std over `height` x `width` pixels from its grid; about
  `grid.shape - 4` correlation lengths across. `rows` computes only those rows of the same field.

  Low-rank: Gaussian-kernel interpolation matrices applied to a coarse white-noise grid, two small matmuls.
  """
  gy, gx = grid.shape

  def kernel(n: int, g: int) -> np.ndarray:
    # Grid nodes extend 2 cells beyond the image on each side, so the edges are as random as the middle.
    nodes = (np.arange(g, dtype=np.float32) - 2.0) / (g - 4)
    pos = (np.arange(n, dtype=np.float32) + 0.5) / n
    k = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) * (g - 4)) ** 2)
    return k / np.sqrt((k**2).sum(axis=1, keepdims=True))

  # Kernel rows have unit L2 norm, so the field has unit variance without measuring it.
  return kernel(height, gy)[rows] @ grid @ kernel(width, gx).T


def _blur_1d(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
  """Separable Gaussian blur along the last or second-to-last axis with a short kernel (edges replicated)."""
  if sigma < 0.3:
    return x
  radius = int(np.ceil(2.0 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
  taps /= taps.sum()
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  xp = np.pad(x, pad, mode="edge")
  n = x.shape[axis]
  index = [slice(None)] * x.ndim
  out = np.zeros_like(x)
  for i, w in enumerate(taps):
    index[axis] = slice(i, i + n)  # a view: no copy per tap
    out += w * xp[tuple(index)]
  return out


def speckle_from_gaussian(z: np.ndarray, size: int) -> np.ndarray:
  """Speckle intensity (unit mean) from two unit Gaussian fields z [2, H, W] (real, imaginary part)."""
  scale = size / _REFERENCE_SIZE
  z = _blur_1d(_blur_1d(z, 1.1 * scale, axis=2), 0.6 * scale, axis=1)
  intensity = z[0] ** 2 + z[1] ** 2
  return intensity / intensity.mean()


def speckle_gamma_shape(size: int) -> Optional[float]:
  """Below 3/4 of the reference size, Gamma(k) per pixel (this k); None: correlated complex speckle."""
  scale = size / _REFERENCE_SIZE
  return None if scale >= 0.75 else max(1.0, 0.25 / scale**2)


def _speckle_intensity(rng: np.random.Generator, size: int) -> np.ndarray:
  """Multiplicative speckle intensity with unit mean (its square root is the Rayleigh-distributed amplitude).

  At the reference size and above: the squared magnitude of a spatially correlated complex Gaussian field
  (grain wider laterally than axially, as for a linear probe). Below it a pixel covers several resolution
  cells, so its intensity is the mean of k exponential intensities (Gamma(k)): the speckle of a downsized
  frame, without generating the large one.
  """
  k = speckle_gamma_shape(size)
  if k is None:
    return speckle_from_gaussian(rng.standard_normal((2, size, size), dtype=np.float32), size)
  return rng.gamma(k, 1.0 / k, size=(size, size)).astype(np.float32)


def _dots(rng: np.random.Generator, size: int, density: float) -> np.ndarray:
  """Sparse small bright blobs (about `density` of the reference-size pixels): the "starry" muscle texture."""
  scale = size / _REFERENCE_SIZE
  count = int(round(density * _REFERENCE_SIZE**2))
  field = np.zeros(size * size, dtype=np.float32)
  # Blobs of a fixed physical size: at small sizes each covers less than a pixel, so it is dimmer.
  field[rng.integers(0, size * size, count)] = rng.uniform(0.5, 1.5, count).astype(np.float32) * min(scale, 1.0)**2 * 15
  field = field.reshape(size, size)
  sigma = max(1.4 * scale, 0.5)
  return np.clip(_blur_1d(_blur_1d(field, sigma, axis=1), 0.6 * sigma, axis=0), 0, 2)


def _grid_coords(n: int) -> Tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates: a column of depths ys [n, 1] and a row of lateral positions xs [1, n]."""
  return (np.arange(n, dtype=np.float32) + 0.5)[:, None], (np.arange(n, dtype=np.float32) + 0.5)[None, :]


def _fat_and_muscle(anat: Anatomy, n: int, noise_rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """Echogenicity (linear amplitude, tissue ~ 0.2..1) of subcutaneous fat above the deep fascia, muscle below,
  and the depth of the deep fascia per column.

  Each is computed only down (up) to where the smooth transition between them ends.
  """
  ys, xs = _grid_coords(n)
  fascia_y = anat.fascia_depth + _field_values(anat.fascia_wave, 1, n)[0] * 0.015 * n  # [n] depth per column
  fat_rows = slice(0, min(int(np.ceil(fascia_y.max() + 0.04 * n)) + 1, n))
  muscle_rows = slice(max(int(np.floor(fascia_y.min() - 0.04 * n)), 0), n)

  # Fat lobules: flattened cells (stretched along the skin) separated by thin echogenic septa, which are
  # drawn as the zero level lines of a smooth random field.
  lobules = _field_values(anat.lobule_grid, n, n, rows=fat_rows)
  septa = np.exp(-((lobules / anat.septa_width) ** 2))
  fat = anat.fat_level * (1.0 + 0.5 * np.tanh(lobules)) + anat.septa_echo * septa

  # Muscle: perimysium as short, broken, oblique echogenic streaks, and a "starry" fibre-bundle texture.
  period, angle = anat.striation_period, anat.striation_angle
  warp = _field_values(anat.warp_grid, n, n, rows=muscle_rows) * 0.05 * n
  phase = (ys[muscle_rows] * np.cos(angle) + xs * np.sin(angle) + warp) * (2 * np.pi / period)
  # Lines at least ~1.5 px wide, and faded out where the period nears 2 px: no aliasing at small sizes.
  sharpness = max(0.05, (2.2 / period) ** 2)
  visible = np.clip((period - 2.5) / 3.0, 0.0, 1.0)
  streaks = np.clip(_field_values(anat.streak_grid, n, n, rows=muscle_rows), 0, 2) * visible
  stripes = np.exp(-(np.sin(phase) ** 2) / sharpness) * streaks
  bundles = _field_values(anat.bundle_grid, n, n, rows=muscle_rows).clip(-1.5, 1.5)
  muscle = anat.muscle_level * (0.8 + 0.2 * bundles) + 0.45 * stripes
  muscle += 0.5 * _dots(noise_rng, n, density=anat.dot_density)[muscle_rows]

  echo = np.empty((n, n), dtype=np.float32)
  top, bottom = muscle_rows.start, fat_rows.stop  # the transition rows, computed in both
  echo[:top] = fat[:top]
  echo[bottom:] = muscle[bottom - top:]
  blend = 0.5 + 0.5 * np.tanh((ys[top:bottom] - fascia_y[None, :]) / (0.008 * n))
  echo[top:bottom] = fat[top:] * (1 - blend) + muscle[:bottom - top] * blend
  return echo, fascia_y


def render_tissue(anat: Anatomy, n: int, noise_rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """The tissue without vessels: echogenicity and the attenuation coefficients (per unit depth, relative)."""
  ys, xs = _grid_coords(n)
  echo, fascia_y = _fat_and_muscle(anat, n, noise_rng)

  def band(center, half_width):
    return np.exp(-(((ys - center) / max(half_width, 0.6)) ** 2))

  skin, skin_thick = anat.skin, anat.skin_thick
  echo *= ys > skin  # gel above the skin is anechoic
  echo += anat.skin_echo * band(skin + 0.5 * skin_thick, 0.5 * skin_thick)
  echo += 0.35 * band(0.006 * n, 0.004 * n)  # transducer face / near-field reverberation
  fascia_w = anat.fascia_width
  echo += anat.fascia_echo * np.exp(-(((ys - fascia_y[None, :]) / max(fascia_w, 0.6)) ** 2))
  if anat.superficial_fascia is not None:
    depth, wave, brightness = anat.superficial_fascia
    sup_y = skin + depth * (anat.fascia_depth - skin) + _field_values(wave, 1, n)[0] * 0.01 * n
    echo += brightness * np.exp(-(((ys - sup_y[None, :]) / max(0.6 * fascia_w, 0.6)) ** 2))

  # Fluid hardly attenuates, bone blocks the beam.
  mu = np.ones((n, n), dtype=np.float32)
  if anat.bone is not None:  # A bone surface deep down: bright convex arc with a full shadow below.
    xc, half = anat.bone[0] * n, anat.bone[1] * n
    bone_y = anat.bone[2] * n + anat.bone[3] * n * ((xs - xc) / half) ** 2
    extent = np.clip(1.5 - 1.5 * np.abs((xs - xc) / half) ** 2, 0, 1)  # soft lateral ends
    echo += 1.6 * extent * np.exp(-(((ys - bone_y) / max(0.008 * n, 0.6)) ** 2))
    mu += 40.0 * extent * (ys > bone_y)
  return echo, mu


def draw_vessels(vessels: Sequence[Vessel], n: int, echo: Optional[np.ndarray] = None,
                 mu: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Draws the vessels into `echo` and `mu` (in place, where given) -> (vein mask, instance mask).

  Instance mask: vessel i (0-based in `vessels`) has value i + 1 over its lumen, veins and arteries alike.
  A vessel wholly outside the frame is skipped.
  """
  ys, xs = _grid_coords(n)
  mask = np.zeros((n, n), dtype=np.uint8)
  instances = np.zeros((n, n), dtype=np.uint8)
  lumen_all = np.zeros((n, n), dtype=np.float32)
  for index, vessel in enumerate(vessels):
    r = int(np.ceil(vessel.outer_radius)) + 2
    y0, y1 = max(int(vessel.cy) - r, 0), min(int(vessel.cy) + r + 1, n)
    x0, x1 = max(int(vessel.cx) - r, 0), min(int(vessel.cx) + r + 1, n)
    if y1 <= y0 or x1 <= x0:
      continue
    dist, nx, ny = vessel.signed_distance(ys[y0:y1], xs[:, x0:x1])
    instances[y0:y1, x0:x1][dist < 0] = index + 1
    if vessel.is_vein:
      mask[y0:y1, x0:x1] |= (dist < 0).astype(np.uint8)
    if echo is None:
      continue
    lumen = np.clip(0.5 - dist, 0, 1)  # 1-pixel anti-aliased edge centred on the boundary
    outer = np.clip(0.5 - (dist - vessel.wall), 0, 1)
    wall = outer - lumen
    lumen_echo = vessel.lumen_echo
    if vessel.is_vein:
      wall_echo = vessel.wall_gain * (0.3 + 0.7 * ny**2)  # specular: brightest at top and bottom
      if vessel.smoke_grid is not None:
        smoke = _field_values(vessel.smoke_grid, y1 - y0, x1 - x0)
        lumen_echo = vessel.smoke_level * np.clip(1.0 + 0.5 * smoke, 0.2, 2.0)
    else:
      wall_echo = vessel.wall_gain * (0.6 + 0.4 * ny**2)
    sub = echo[y0:y1, x0:x1]
    echo[y0:y1, x0:x1] = sub * (1 - outer) + wall * wall_echo + lumen * lumen_echo
    lumen_all[y0:y1, x0:x1] = np.maximum(lumen_all[y0:y1, x0:x1], lumen)
    # Refraction at the lateral edges: extra loss where the wall runs along the beam -> edge shadows below.
    mu[y0:y1, x0:x1] += vessel.refraction * wall * nx**8
  if mu is not None:
    mu -= 0.9 * lumen_all  # blood attenuates ~10x less than tissue -> posterior enhancement
  return mask, instances


def to_bmode(echo: np.ndarray, mu: np.ndarray, acoustics: Sequence[float], speckle: np.ndarray,
             noise_rng: np.random.Generator) -> np.ndarray:
  """Acoustics along each column: attenuation, TGC, speckle, noise, log compression -> uint8 frame."""
  n = echo.shape[0]
  ys, xs = _grid_coords(n)
  yn = ys / n  # normalised depth, 0 at the probe
  alpha, tgc, noise_level, dynamic_range, tissue_grey, gamma = acoustics
  path = np.cumsum(mu, axis=0) / n
  amplitude = echo * np.exp(-alpha * path + tgc * yn)
  amplitude *= 1.0 - 0.25 * np.abs(xs / n - 0.5) ** 3  # slight lateral fall-off of the aperture
  # Received power: speckled echoes plus electronic noise amplified by the depth gain; log-compressed.
  power = amplitude**2 * speckle
  power += noise_rng.standard_exponential((n, n), dtype=np.float32) * (noise_level**2 * np.exp(2 * tgc * yn))
  db = 10.0 * np.log10(power + 1e-12) - 20.0 * np.log10(0.4)
  display = np.clip(db / dynamic_range + tissue_grey, 0.0, 1.0)
  lut = np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)  # contrast curve
  return lut[np.round(display * 255.0).astype(np.uint8)]


def generate_example(seed: Seed, size: int = 512) -> Tuple[np.ndarray, np.ndarray]:
  """One phantom frame and its vein mask.

  Args:
    seed: int or sequence of ints (e.g. (split_code, index)); the same seed always gives the same example,
      and the same scene at any size.
    size: height = width in pixels (>= 32).

  Returns:
    image: uint8 [size, size] B-mode frame. mask: uint8 [size, size], 1 = vein lumen, 0 = everything else.
  """
  check_size(size)
  geo, noise_rng = scene_rngs(seed)
  scene = sample_scene(geo, size)
  echo, mu = render_tissue(scene.anatomy, size, noise_rng)
  mask, _ = draw_vessels(scene.vessels, size, echo, mu)
  image = to_bmode(echo, mu, scene.acoustics, _speckle_intensity(noise_rng, size), noise_rng)
  return image, mask


def check_size(size: int) -> None:
  """Below 32 px the scene's thinnest layers and walls vanish."""
  if size < 32:
    raise ValueError(f"phantom size must be >= 32 pixels, got {size}")


def example_seed(split: str, index: int) -> Tuple[int, int]:
  """The seed of example `index` of a phantom split (train and test never share a seed)."""
  codes = {"train": 1, "test": 2, "validation": 3}
  if split not in codes:
    raise ValueError(f"unknown phantom split {split!r}; valid: {sorted(codes)}")
  return (codes[split], int(index))
