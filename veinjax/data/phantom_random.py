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
3. distractors (`distractors`): tendons (fibrillar), nerves (honeycomb of dark fascicles in a bright
   sheath), a bone surface with its shadow, bright specks, and (`hypoechoic_probability`) a grey
   hypoechoic blob (node, muscle belly), darker than its tissue but not a vessel;
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
`speckle`, `gain`, `compression` off: fixed mid-range values, see `FIXED`). Each group draws from its
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

This module composes the frame; each stage lives in its own module: `phantom_random_ranges` (the ranges,
`GROUPS`, `FIXED`), `phantom_random_tissue` (1 and 3), `phantom_random_vessels` (2, and whether a frame
shows a vessel), `phantom_random_acoustics` (4-7), `phantom_random_geometry` (8), `phantom_random_overlays`
(9), on the primitives of `phantom_random_fields` (smooth random fields, draws from ranges).
"""

import dataclasses
from typing import Dict, List, Tuple

import numpy as np

from veinjax.data import phantom
from veinjax.data.phantom_random_acoustics import artifacts, bmode, compression_params, gain_params, speckle_params
from veinjax.data.phantom_random_geometry import sample_geometry, scan_convert
from veinjax.data.phantom_random_overlays import draw_overlays
# FIXED, FOREGROUNDS, IntRange, Range and RandomVessel are re-exported: `phantom_random` is the one import.
from veinjax.data.phantom_random_ranges import (  # pylint: disable=unused-import
    FIXED, FOREGROUNDS, GROUPS, IntRange, Range, RandomizationRanges)
from veinjax.data.phantom_random_tissue import distractors, phantom_tissue, random_tissue
from veinjax.data.phantom_random_vessels import (  # pylint: disable=unused-import
    RandomVessel, draw_random_vessels, lumen_contrast, phantom_vessels, random_vessels, vessel_box)

_SALT = 19  # Keeps these streams apart from `phantom.generate_example`'s for the same seed.


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
  geometry = sample_geometry(rng["geometry"], p, n)
  info["geometry"] = dict(kind=geometry.kind, box=geometry.box, half_angle=geometry.half_angle)

  if p.layers:
    tissue, info["layers"] = random_tissue(rng["layers"], p, n)
  else:
    tissue, info["layers"] = phantom_tissue(rng["layers"], n), {}
  vessels = (random_vessels(rng["vessels"], p, n, tissue, geometry) if p.vessels
             else phantom_vessels(rng["vessels"], n, tissue))
  info["vessels"] = dict(veins=sum(v.is_vein for v in vessels), arteries=sum(not v.is_vein for v in vessels))
  info["distractors"] = dict(drawn=distractors(rng["distractors"], p, n, tissue, vessels) if p.distractors else [])
  if p.vessels:
    instances, boxes = draw_random_vessels(vessels, n, tissue.echo, tissue.mu)
  else:
    _, instances = phantom.draw_vessels(vessels, n, tissue.echo, tissue.mu)
    boxes = [vessel_box(v, n) for v in vessels]
  info["artifacts"] = artifacts(rng["artifacts"], p, n, tissue, vessels) if p.artifacts else {}

  gain, spk, comp = (gain_params(rng["gain"], p), speckle_params(rng["speckle"], p),
                     compression_params(rng["compression"], p))
  info.update(gain=gain, speckle=spk, compression=comp)
  display = bmode(tissue.echo, tissue.mu, tissue.skin, gain, spk, comp, rng["noise"])

  # A vessel the frame does not show (lumen hardly darker than its surroundings) is not in the mask.
  contrasts = [lumen_contrast(v, box, n, display, comp["gamma"]) for v, box in zip(vessels, boxes)]
  foreground = [(v.is_vein or p.foreground == "vessel") and c >= p.min_contrast
                for v, c in zip(vessels, contrasts)]
  info["vessels"]["contrast"] = contrasts
  display, instances, valid = scan_convert(geometry, display, instances)
  lut_ids = np.array([0] + [i + 1 for i, f in enumerate(foreground) if f], dtype=np.int64)
  table = np.zeros(256, dtype=np.uint8)
  table[lut_ids[1:]] = 1
  mask = table[instances]
  info["overlays"] = dict(drawn=draw_overlays(rng["overlays"], p, display, instances > 0, geometry.box)
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
