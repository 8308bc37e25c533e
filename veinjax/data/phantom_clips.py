"""Phantom clips: one `veinjax.data.phantom` scene seen over time, with per-frame vein and instance masks.

`generate_clip(seed, size, num_frames, ...)` samples a scene with the phantom's own helpers and re-renders it
each frame with moving parameters:

- the probe drifts laterally (a smooth random velocity of ~0.8% of the width per frame, ~2 px at 256,
  with occasional faster moves of 1.5-3% per frame for 3-6 frames) and rocks in plane (a slow tilt: deep
  structures shift more than shallow ones), so vessels near the sides leave the field of view and come back;
- arteries pulsate (diameter ±5-10% at a heart rate of 60-96 /min); veins swell and shrink with breathing
  (±3-8% at 12-18 /min) and, in a compression sweep, flatten to a sliver (at 256 px: 3 px thick, 5-15% of the
  resting area) while arteries keep their shape; the tissue above is squeezed by up to 4%;
- speckle decorrelates partly between frames: a share `speckle_correlation` of it moves with the tissue, the
  rest is drawn anew each frame; electronic noise is new each frame.

The tissue is rendered once and warped per frame (lateral extent beyond the scene: its mirror image); vessels,
acoustics and speckle are rendered per frame in the frame's coordinates, so posterior enhancement and edge
shadows follow the vessels. Masks come from a separate random stream, so they do not depend on
`render_frames`. Vessels are placed further apart than in single frames, so that pulsating, breathing and
compressed vessels never touch and every instance is one component of the vessel mask.

`export_clips` writes clips in the `folder` dataset's layout (see `veinjax.data.folder`), frame names
carrying the clip id, so a model can be trained on phantom frames and run on phantom clips.
"""

import dataclasses
import json
from pathlib import Path
import re
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from veinjax.data import phantom

VESSEL_SPACING = 0.07  # least gap between vessel walls, times the size (single frames: 0.02)


def min_half_axis(size: int) -> float:
  """The least half thickness (px) of a compressed lumen (at 256 px: 1.5, a 3 px sliver), so that its tapering
  ends do not break into separate specks on the pixel grid: each vessel stays one component."""
  return max(1.0, 0.006 * size)


@dataclasses.dataclass
class Clip:
  """A phantom clip. Vessel ids are 1-based and stable over the clip; `vessels[i]["id"] == i + 1`."""
  frames: Optional[np.ndarray]  # uint8 [T, H, W] B-mode frames; None when generated with render_frames=False
  masks: np.ndarray  # uint8 [T, H, W]: 1 = vein lumen (the class mask of `phantom.generate_example`)
  instances: np.ndarray  # uint8 [T, H, W]: the vessel id over its lumen, veins and arteries alike; 0 elsewhere
  vessels: List[Dict[str, object]]  # per vessel: id, kind ("vein" | "artery"), compressible (bool)
  compression: np.ndarray  # float32 [T]: 0 = resting probe, 1 = the deepest point of a compression sweep
  centers: np.ndarray  # float32 [T, K, 2]: (x, y) pixel position of each vessel's centre, in view or not
  fps: float


def _probe_path(rng: np.random.Generator, num_frames: int, n: int, motion: float) -> Tuple[np.ndarray, np.ndarray]:
  """Lateral probe offset [T] (pixels) and in-plane tilt [T] (lateral shift per pixel of depth)."""
  sigma, limit = 0.008 * n * motion, 0.45 * n
  shift, velocity, burst_left, burst_velocity = 0.0, 0.0, 0, 0.0
  shifts = np.zeros(num_frames, dtype=np.float32)
  for t in range(num_frames):
    velocity = 0.9 * velocity + 0.44 * rng.normal(0.0, sigma)
    if burst_left == 0 and rng.random() < 0.02:  # an occasional fast move
      burst_left = int(rng.integers(3, 7))
      burst_velocity = rng.choice([-1.0, 1.0]) * rng.uniform(0.015, 0.03) * n * motion
    step = velocity + (burst_velocity if burst_left else 0.0)
    burst_left = max(burst_left - 1, 0)
    if abs(shift + step) > limit:  # the probe turns back at the end of the scanned region
      velocity, burst_velocity, step = -velocity, -burst_velocity, -step
    shift += step
    shifts[t] = shift
  t = np.arange(num_frames, dtype=np.float32)
  amplitude, period, phase = rng.uniform(0.02, 0.06) * motion, rng.uniform(60, 160), rng.uniform(0, 2 * np.pi)
  return shifts, (amplitude * np.sin(2 * np.pi * t / period + phase)).astype(np.float32)


def _compression_profile(rng: np.random.Generator, num_frames: int, sweeps: int) -> np.ndarray:
  """Compression level [T] in [0, 1]: `sweeps` press-hold-release sweeps of 24-40 frames, one per segment."""
  level = np.zeros(num_frames, dtype=np.float32)
  segment = num_frames // max(sweeps, 1)
  for k in range(sweeps if segment >= 8 else 0):
    duration = min(int(rng.integers(24, 41)), segment)
    start = k * segment + int(rng.integers(0, segment - duration + 1))
    ramp = max(int(0.4 * duration), 1)
    for i in range(duration):
      edge = min(i, duration - 1 - i)  # frames from the nearer end of the sweep
      level[start + i] = 0.5 - 0.5 * np.cos(np.pi * min(edge / ramp, 1.0))
  return level


def _vessel_scales(rng: np.random.Generator, vessels, num_frames: int, fps: float, compression: np.ndarray,
                   thrombosed_fraction: float) -> Tuple[np.ndarray, np.ndarray, List[bool]]:
  """Per frame and vessel, the factors on the semi-axes a and b [T, K], and which veins are compressible."""
  t = np.arange(num_frames, dtype=np.float32) / fps
  breath = np.sin(2 * np.pi * rng.uniform(0.2, 0.3) * t + rng.uniform(0, 2 * np.pi))
  heart_rate = rng.uniform(1.0, 1.6)  # Hz
  scale_a = np.ones((num_frames, len(vessels)), dtype=np.float32)
  scale_b = np.ones_like(scale_a)
  compressible = []
  for k, vessel in enumerate(vessels):
    if vessel.is_vein:
      swell = 1.0 + rng.uniform(0.03, 0.08) * breath
      patent = bool(rng.random() >= thrombosed_fraction)
      squeeze = compression * patent
      scale_a[:, k] = swell * (1.0 + 0.15 * squeeze)  # a flattened vein widens a little
      scale_b[:, k] = swell * (1.0 - (1.0 - rng.uniform(0.02, 0.08)) * squeeze)
    else:
      pulse = 1.0 + rng.uniform(0.05, 0.1) * np.sin(2 * np.pi * heart_rate * t + rng.uniform(0, 2 * np.pi))
      scale_a[:, k] = scale_b[:, k] = pulse
      patent = False
    compressible.append(patent)
  return scale_a, scale_b, compressible


class _View:
  """Where frame pixels lie in the scene: X = x + shift + tilt * Y, Y = y / squeeze (pixel-centre coordinates).

  Holds the tissue (echogenicity, attenuation) and the tissue-bound share of the speckle, padded beyond
  the scene (mirrored laterally, edge-replicated in depth) so any view within the probe's range samples them.
  """

  def __init__(self, layers: List[np.ndarray], n: int):
    self.n, self.pad_x, self.pad_y = n, int(np.ceil(0.6 * n)), int(np.ceil(0.06 * n))
    self.layers = [np.pad(np.pad(layer, [(0, 0)] * (layer.ndim - 2) + [(0, 0), (self.pad_x, self.pad_x)],
                                 mode="reflect"),
                          [(0, 0)] * (layer.ndim - 2) + [(self.pad_y, self.pad_y), (0, 0)], mode="edge")
                   for layer in layers]

  def coordinates(self, shift: float, tilt: float, squeeze: float) -> Tuple[np.ndarray, np.ndarray]:
    """Padded-array indices (rows [n, 1], columns [n, n]) of every frame pixel."""
    centres = np.arange(self.n, dtype=np.float32) + 0.5
    rows = centres[:, None] / squeeze
    cols = centres[None, :] + shift + tilt * rows
    return rows - 0.5 + self.pad_y, cols - 0.5 + self.pad_x

  def bilinear(self, index: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    layer = self.layers[index]
    r0 = np.clip(np.floor(rows).astype(np.int32), 0, layer.shape[-2] - 2)
    c0 = np.clip(np.floor(cols).astype(np.int32), 0, layer.shape[-1] - 2)
    fr, fc = np.clip(rows - r0, 0, 1), np.clip(cols - c0, 0, 1)
    top = layer[r0, c0] * (1 - fc) + layer[r0, c0 + 1] * fc
    bottom = layer[r0 + 1, c0] * (1 - fc) + layer[r0 + 1, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)

  def nearest(self, index: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    layer = self.layers[index]
    r = np.clip(np.round(rows).astype(np.int32), 0, layer.shape[-2] - 1)
    c = np.clip(np.round(cols).astype(np.int32), 0, layer.shape[-1] - 1)
    return layer[..., r, c]


def _tissue_speckle(rng: np.random.Generator, n: int, correlation: float) -> np.ndarray:
  """The tissue-bound share of the speckle, drawn once per clip (Gaussian pair or Gamma, as `phantom` does)."""
  k = phantom.speckle_gamma_shape(n)
  if k is None:
    return rng.standard_normal((2, n, n), dtype=np.float32)
  return rng.gamma(max(correlation, 1e-6) * k, 1.0 / k, size=(n, n)).astype(np.float32)


def _frame_speckle(rng: np.random.Generator, n: int, correlation: float, tissue: np.ndarray) -> np.ndarray:
  """One frame's speckle intensity (unit mean): the tissue-bound share plus a share drawn anew.

  Gamma sizes add a Gamma((1 - c) k) to the bound Gamma(c k): the sum is the frame's Gamma(k). Larger
  sizes mix the complex Gaussian fields as sqrt(c) * bound + sqrt(1 - c) * new before forming the grain.
  """
  k = phantom.speckle_gamma_shape(n)
  if k is None:
    fresh = rng.standard_normal((2, n, n), dtype=np.float32)
    return phantom.speckle_from_gaussian(np.sqrt(correlation) * tissue + np.sqrt(1 - correlation) * fresh, n)
  if correlation >= 1.0:
    return tissue
  return tissue * (correlation > 0) + rng.gamma((1 - correlation) * k, 1.0 / k, size=(n, n)).astype(np.float32)


def _frame_vessels(scene: phantom.Scene, t: int, shift, tilt, squeeze, scale_a, scale_b, compressible):
  """The scene's vessels as frame t sees them: moved with the probe, pulsating, breathing or compressed."""
  vessels = []
  for k, v in enumerate(scene.vessels):
    looks = {}
    if v.is_vein and not compressible[k]:  # a thrombosed vein: echogenic clot, does not compress
      looks = dict(lumen_echo=0.35 * scene.anatomy.fat_level, smoke_grid=None)
    vessels.append(dataclasses.replace(
        v, cx=v.cx - shift[t] - tilt[t] * v.cy, cy=squeeze[t] * v.cy, a=v.a * scale_a[t, k],
        b=max(v.b * scale_b[t, k], min_half_axis(scene.size)), **looks))
  return vessels


def generate_clip(seed: phantom.Seed, size: int = 256, num_frames: int = 100, *, compression_sweeps: int = 0,
                  fps: float = 20.0, motion: float = 1.0, speckle_correlation: float = 0.5,
                  thrombosed_fraction: float = 0.0, render_frames: bool = True) -> Clip:
  """A phantom clip: `num_frames` frames of one scene (see the module docstring); deterministic by seed.

  compression_sweeps: how many press-hold-release sweeps (0: none); each needs >= 8 frames of the clip.
  motion: scales probe drift, fast moves and tilt (0: a still probe). speckle_correlation: the share of
  speckle that stays from frame to frame, in [0, 1]. thrombosed_fraction: the chance that a vein is
  thrombosed (does not compress). render_frames=False skips the B-mode frames (masks only, much faster).
  """
  phantom.check_size(size)
  if num_frames < 0 or fps <= 0 or not 0.0 <= speckle_correlation <= 1.0 or compression_sweeps < 0:
    raise ValueError(f"generate_clip needs num_frames >= 0, fps > 0, compression_sweeps >= 0 and "
                     f"0 <= speckle_correlation <= 1; got {num_frames}, {fps}, {compression_sweeps}, "
                     f"{speckle_correlation}.")
  root = np.random.default_rng(seed)
  geo, noise_rng, motion_rng = (np.random.default_rng(root.integers(2**63)) for _ in range(3))
  scene = phantom.sample_scene(geo, size, vessel_spacing=VESSEL_SPACING)
  shift, tilt = _probe_path(motion_rng, num_frames, size, motion)
  compression = _compression_profile(motion_rng, num_frames, compression_sweeps)
  squeeze = 1.0 - 0.04 * compression
  scale_a, scale_b, compressible = _vessel_scales(motion_rng, scene.vessels, num_frames, fps, compression,
                                                  thrombosed_fraction)
  masks = np.zeros((num_frames, size, size), dtype=np.uint8)
  instances = np.zeros_like(masks)
  centers = np.zeros((num_frames, len(scene.vessels), 2), dtype=np.float32)
  frames = np.zeros_like(masks) if render_frames else None
  if render_frames:
    view = _View([*phantom.render_tissue(scene.anatomy, size, noise_rng),
                  _tissue_speckle(noise_rng, size, speckle_correlation)], size)
  for t in range(num_frames):
    vessels = _frame_vessels(scene, t, shift, tilt, squeeze, scale_a, scale_b, compressible)
    centers[t] = [(v.cx, v.cy) for v in vessels]
    if not render_frames:
      masks[t], instances[t] = phantom.draw_vessels(vessels, size)
      continue
    rows, cols = view.coordinates(shift[t], tilt[t], squeeze[t])
    echo, mu = view.bilinear(0, rows, cols), view.bilinear(1, rows, cols)
    masks[t], instances[t] = phantom.draw_vessels(vessels, size, echo, mu)
    speckle = _frame_speckle(noise_rng, size, speckle_correlation, view.nearest(2, rows, cols))
    frames[t] = phantom.to_bmode(echo, mu, scene.acoustics, speckle, noise_rng)
  table = [{"id": k + 1, "kind": "vein" if v.is_vein else "artery", "compressible": compressible[k]}
           for k, v in enumerate(scene.vessels)]
  return Clip(frames, masks, instances, table, compression, centers, float(fps))


# ---- Export in the folder dataset's layout ----

_STEM = re.compile(r"^(?P<clip>.+)_f(?P<frame>\d{4,})$")


def clip_seed(split: str, index: int) -> Tuple[int, int]:
  """The seed of clip `index` of a split; never the seed of a single phantom example."""
  code, _ = phantom.example_seed(split, 0)
  return (100 + code, int(index))


def frame_stem(clip_id: str, frame: int) -> str:
  """A frame's file stem, "<clip id>_f<frame, 4+ digits>": sorts by clip, then frame."""
  return f"{clip_id}_f{frame:04d}"


def parse_frame_stem(stem: str) -> Tuple[str, int]:
  """(clip id, frame index) of a `frame_stem`; a ValueError for any other name."""
  match = _STEM.match(stem)
  if not match:
    raise ValueError(f"{stem!r} is not a phantom clip frame name ('<clip id>_f<frame>', e.g. 'clip003_f0042').")
  return match["clip"], int(match["frame"])


def group_frames(paths) -> Dict[str, List[Path]]:
  """Frame files grouped by clip id, each clip's in frame order: to run a model clip by clip."""
  clips: Dict[str, List[Tuple[int, Path]]] = {}
  for path in map(Path, paths):
    clip_id, frame = parse_frame_stem(path.stem)
    clips.setdefault(clip_id, []).append((frame, path))
  return {clip_id: [p for _, p in sorted(frames)] for clip_id, frames in sorted(clips.items())}


def _write_png(path: Path, array: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top  (only the export writes files)
  Image.fromarray(array).save(path)


def export_clips(root: Union[str, Path], num_clips: Mapping[str, int], size: int = 256, num_frames: int = 100,
                 frame_step: int = 1, **clip_options) -> Path:
  """Writes clips as ROOT/<split>/images/<stem>.png + masks/<stem>.png (+ instances/, clips.json).

  The layout of the `folder` dataset: train on it with --config.dataset.name=folder
  --config.dataset.root=ROOT (masks store 0/255, the default --config.dataset.mask_values="0:0,255:1").
  Stems are `frame_stem(clip_id, frame)` with clip ids "<split>_clip000", "<split>_clip001", ... (the split in
  the id: the train and test clips of one index are different scenes, and a group pattern over the names,
  `configs/phantom_clips.py`, must not take them for one subject);
  instances/<stem>.png holds the vessel ids and <split>/clips.json each clip's seed, vessel table and
  per-frame compression. frame_step > 1 keeps every frame_step-th frame (neighbouring frames are near copies).
  clip_options: keyword arguments of `generate_clip` (e.g. compression_sweeps=1).
  """
  root = Path(root)
  if frame_step < 1:
    raise ValueError(f"frame_step must be >= 1, got {frame_step}")
  for split, count in num_clips.items():
    folders = {name: root / split / name for name in ("images", "masks", "instances")}
    for folder in folders.values():
      folder.mkdir(parents=True, exist_ok=True)
    table = {}
    for index in range(count):
      clip_id, seed = f"{split}_clip{index:03d}", clip_seed(split, index)
      clip = generate_clip(seed, size, num_frames, **clip_options)
      for t in range(0, num_frames, frame_step):
        stem = frame_stem(clip_id, t)
        _write_png(folders["images"] / f"{stem}.png", clip.frames[t])
        _write_png(folders["masks"] / f"{stem}.png", clip.masks[t] * np.uint8(255))
        _write_png(folders["instances"] / f"{stem}.png", clip.instances[t])
      table[clip_id] = {"seed": list(seed), "size": size, "num_frames": num_frames, "frame_step": frame_step,
                        "fps": clip.fps, "vessels": clip.vessels,
                        "compression": [round(float(c), 4) for c in clip.compression]}
    (root / split / "clips.json").write_text(json.dumps(table, indent=1))
  return root


# ---- python -m veinjax.data.phantom_clips: export clips for training (configs/phantom_clips.py) ----


def main(argv) -> None:
  """Writes --train_clips and --test_clips clips under --root (see `export_clips`); refuses a non-empty root."""
  from absl import app  # pylint: disable=g-import-not-at-top  (only the command line needs absl)
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  flags = _FLAGS
  root = Path(flags.root)
  if root.exists() and any(root.iterdir()):
    raise app.UsageError(f"--root={root} is not empty: export into a new folder (an export is never mixed "
                         "with another one's frames).")
  counts = {"train": flags.train_clips, "test": flags.test_clips}
  export_clips(root, {split: n for split, n in counts.items() if n > 0}, size=flags.size,
               num_frames=flags.num_frames, frame_step=flags.frame_step,
               compression_sweeps=flags.compression_sweeps)
  frames = {split: len(list((root / split / "images").glob("*.png"))) for split in counts if counts[split] > 0}
  print(f"Wrote {frames} frames of {flags.size}x{flags.size} to {root}. Train on them with "
        f"python train.py --config=configs/phantom_clips.py --config.dataset.root={root} --workdir=DIR")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("root", None, "New folder to write ROOT/{train,test}/{images,masks,instances}/ into.")
  flags.DEFINE_integer("train_clips", 60, "Clips of the train split (seeds clip_seed('train', i)).")
  flags.DEFINE_integer("test_clips", 20, "Clips of the test split (the seeds benchmarks/tracking.py scores).")
  flags.DEFINE_integer("size", 256, "Frame height = width in pixels.")
  flags.DEFINE_integer("num_frames", 100, "Frames per clip.")
  flags.DEFINE_integer("frame_step", 5, "Keep every N-th frame (neighbouring frames are near copies).")
  flags.DEFINE_integer("compression_sweeps", 1, "Press-hold-release sweeps per clip (flattened veins to learn).")
  flags.mark_flag_as_required("root")
  return flags.FLAGS


if __name__ == "__main__":
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  _app.run(main)
