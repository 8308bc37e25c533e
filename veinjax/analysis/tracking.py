"""Vessels followed across the frames of a clip, from per-frame masks, and their compressibility.

`track(masks)` tracks the connected components of each frame's mask (mask > 0, or == `foreground`): it
follows whatever the masks contain. A model's vein class mask gives vein tracks; for veins and arteries,
pass a vessel mask (e.g. `instances > 0` of a phantom clip, or a multi-class mask with foreground=None).

Per frame: each live track predicts its centroid with a constant-velocity Kalman filter (state x, y, vx, vy;
filterpy's KalmanFilter equations, written out per axis for speed and tested equal to filterpy's). Detections
that are pieces of one confirmed track's vessel (a lumen flattened under compression breaks a mask) are
joined into one. Detections are then assigned to tracks by the Hungarian algorithm
(scipy.optimize.linear_sum_assignment) on a cost mixing centroid distance (to the nearer of the prediction
and the last observed centroid) and the overlap (IoU) of the track's last shape, moved to the prediction,
with the detection, in turns (DeepSORT's matching cascade):
confirmed tracks seen in the previous frame first, then those missed for longer, then tentative tracks. A
pair is allowed when the shapes overlap or the centroid lies within the gate (max(max_distance_px, the
track's largest equivalent diameter)).
A track is born once detected in `min_hits` consecutive frames (and reported from its first frame); a missed
confirmed track coasts on its prediction (points flagged `predicted`) and keeps its id through up to
`max_missed` missed frames; one more miss ends it (trailing predictions are dropped). Ids are 1, 2, ... in
order of birth.

`track_nearest` is the comparison baseline with the same interface: no filter, no overlap, no joined pieces,
no cascade; a track stays where it was last seen and takes the nearest detection within the gate.

`compressibility(track)`: over a compression sweep a patent vein flattens, an artery (or a thrombosed vein)
keeps its shape, so min / max of the area (or minor axis) separates them.
"""

import csv
import dataclasses
import math
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

from veinjax.analysis import geometry

Masks = Union[np.ndarray, Sequence[np.ndarray]]
_FORBIDDEN = 1e6  # cost of a pair outside the gate


@dataclasses.dataclass
class TrackPoint:
  """A track in one frame: the detection's centroid and geometry, or (predicted) the motion model's guess."""
  frame: int
  centroid_x_px: float
  centroid_y_px: float
  predicted: bool  # True: nothing was assigned in this frame
  geometry: Optional[geometry.VesselGeometry]  # None when predicted


@dataclasses.dataclass
class Track:
  id: int
  points: List[TrackPoint]  # consecutive frames, first and last observed
  image_shape: Tuple[int, int]
  pixel_spacing_mm: Optional[Tuple[float, float]] = None  # (row, col), as given to the tracker

  @property
  def frames(self) -> List[int]:
    return [p.frame for p in self.points]

  def point_at(self, frame: int) -> Optional[TrackPoint]:
    index = frame - self.points[0].frame
    return self.points[index] if 0 <= index < len(self.points) else None


class _KalmanMotion:
  """Constant-velocity Kalman filter on the centroid; white-noise acceleration.

  The model of filterpy's KalmanFilter with state (x, y, vx, vy), F = [[I, I], [0, I]], H = [I, 0],
  R = measurement_std^2 I, Q = G G^T acceleration_std^2 with G = [0.5 I, I], and its Joseph-form update. With
  these F, H, R, Q and a diagonal initial P, the two axes never mix: each is a 2-state filter (position,
  velocity) with covariance [[a, b], [b, c]], written out below. The same numbers as filterpy's filter
  (tests/tracking_test.py holds it to filterpy's to 1e-12 relative) at a few microseconds per call instead of
  60-80 (its generic matrix code and 4x4 inverse were a quarter of the tracker's time per frame).
  """

  def __init__(self, x: float, y: float, measurement_std: float, acceleration_std: float,
               initial_speed_std: float):
    self.r, self.q = measurement_std**2, acceleration_std**2
    self.position, self.velocity = [x, y], [0.0, 0.0]
    self.a, self.b, self.c = self.r, 0.0, initial_speed_std**2  # the same for both axes

  def predict(self) -> Tuple[float, float]:
    a, b, c, q = self.a, self.b, self.c, self.q
    self.a, self.b, self.c = a + 2.0 * b + c + 0.25 * q, b + c + 0.5 * q, c + q
    self.position = [p + v for p, v in zip(self.position, self.velocity)]
    return self.position[0], self.position[1]

  def update(self, x: float, y: float) -> None:
    a, b, c, r = self.a, self.b, self.c, self.r
    k1, k2 = a / (a + r), b / (a + r)  # the Kalman gain of (position, velocity)
    for axis, z in enumerate((x, y)):
      residual = z - self.position[axis]
      self.position[axis] += k1 * residual
      self.velocity[axis] += k2 * residual
    # Joseph form: P = (I - K H) P (I - K H)^T + K R K^T
    self.a = (1.0 - k1)**2 * a + k1**2 * r
    self.b = (1.0 - k1) * (b - k2 * a) + k1 * k2 * r
    self.c = k2**2 * a - 2.0 * k2 * b + c + k2**2 * r


class _LastPosition:
  """The baseline's motion model: a vessel stays where it was last seen."""

  def __init__(self, x: float, y: float):
    self.position = (x, y)

  def predict(self) -> Tuple[float, float]:
    return self.position

  def update(self, x: float, y: float) -> None:
    self.position = (x, y)


@dataclasses.dataclass
class _Live:
  motion: object
  points: List[TrackPoint]
  shape: np.ndarray  # the last detection's pixels within its bbox
  bbox: Tuple[int, int, int, int]
  centroid: Tuple[float, float]
  area: int  # of `shape`
  max_diameter: float
  hits: int = 1
  missed: int = 0
  id: Optional[int] = None  # set at birth


def as_frames(masks: Masks) -> List[np.ndarray]:
  """A clip of masks as a list of 2-D arrays of one shape; [] for an empty clip; a clear error otherwise."""
  if isinstance(masks, np.ndarray):
    if masks.ndim == 2:
      raise ValueError(f"masks of a clip are [T, H, W]; got one [H, W] mask {masks.shape} (pass mask[None]).")
    if masks.ndim != 3:
      raise ValueError(f"masks of a clip are [T, H, W]; got shape {masks.shape}.")
  frames = [np.asarray(m) for m in masks]
  for t, frame in enumerate(frames):
    if frame.ndim != 2:
      raise ValueError(f"mask {t} of the clip has shape {frame.shape}; every mask is 2-D [H, W].")
    if frame.shape != frames[0].shape:
      raise ValueError(f"mask {t} of the clip is {frame.shape[0]}x{frame.shape[1]} but mask 0 is "
                       f"{frames[0].shape[0]}x{frames[0].shape[1]} (HxW): every mask of a clip must have one "
                       f"size; resize them to the frame size first.")
  return frames


def _overlap(trk: _Live, offset: Tuple[int, int], det: geometry.VesselGeometry, shape: np.ndarray) -> int:
  """Pixels shared by the track's last shape, moved by `offset` (dx, dy in whole pixels), and a detection."""
  dx, dy = offset
  r0, c0, r1, c1 = trk.bbox[0] + dy, trk.bbox[1] + dx, trk.bbox[2] + dy, trk.bbox[3] + dx
  top, left = max(r0, det.bbox[0]), max(c0, det.bbox[1])
  bottom, right = min(r1, det.bbox[2]), min(c1, det.bbox[3])
  if top >= bottom or left >= right:
    return 0
  mine = trk.shape[top - r0:bottom - r0, left - c0:right - c0]
  theirs = shape[top - det.bbox[0]:bottom - det.bbox[0], left - det.bbox[1]:right - det.bbox[1]]
  return int(np.count_nonzero(mine & theirs))


def _moved(trk: _Live, prediction: Tuple[float, float]) -> Tuple[int, int]:
  """The whole-pixel offset that moves the track's last shape to its predicted centroid."""
  return round(prediction[0] - trk.centroid[0]), round(prediction[1] - trk.centroid[1])


def _overlaps(live: List[_Live], predictions, detections, shapes) -> np.ndarray:
  """[track, detection]: the pixels shared by each track's last shape, moved to its prediction, and each
  detection (computed once per frame: joining pieces and every turn of the assignment read it)."""
  shared = np.zeros((len(live), len(detections)), dtype=np.int64)
  for i, (trk, prediction) in enumerate(zip(live, predictions)):
    offset = _moved(trk, prediction)
    for j, det in enumerate(detections):
      shared[i, j] = _overlap(trk, offset, det, shapes[j])
  return shared


def _assign(live: List[_Live], predictions, detections, overlaps: Optional[np.ndarray], overlap_weight: float,
            max_distance_px: float) -> List[Tuple[int, int]]:
  """Hungarian assignment of detections to tracks; pairs outside the gate and without overlap never match.

  overlaps: `_overlaps` of these tracks and detections (None when overlap_weight is 0). The distance is to
  the nearer of the prediction and the last observed centroid (one point for a track seen in the previous
  frame): after misses, a velocity thrown off by a partial or broken detection must not carry the track
  away from a vessel that stayed where it was."""
  if not live or not detections:
    return []
  cost = np.full((len(live), len(detections)), _FORBIDDEN)
  for i, (trk, (px, py)) in enumerate(zip(live, predictions)):
    gate = max(max_distance_px, trk.max_diameter)
    lx, ly = trk.centroid
    for j, det in enumerate(detections):
      distance = min(math.hypot(det.centroid_x_px - px, det.centroid_y_px - py),
                     math.hypot(det.centroid_x_px - lx, det.centroid_y_px - ly))
      iou = 0.0
      if overlap_weight > 0:  # of the track's last shape, moved by its predicted displacement, with the detection
        shared = int(overlaps[i, j])
        iou = shared / (trk.area + det.area_px - shared)
      if iou > 0 or distance <= gate:
        cost[i, j] = overlap_weight * (1.0 - iou) + (1.0 - overlap_weight) * min(distance / gate, 1.0)
  rows, cols = linear_sum_assignment(cost)
  return [(i, j) for i, j in zip(rows, cols) if cost[i, j] < _FORBIDDEN]


def _assign_in_cascade(live: List[_Live], predictions, detections, overlaps: np.ndarray, overlap_weight: float,
                       max_distance_px: float) -> Dict[int, int]:
  """{track index: detection index}, chosen in turns (DeepSORT's matching cascade): first the confirmed tracks
  seen in the previous frame, then those missed for 1, 2, ... frames, then the tentative ones, each turn
  among the detections left. A vessel's own track is never outbid by a track that lost it long ago, nor by a
  new tentative track on one of its fragments."""
  def turn_of(trk):
    return trk.missed if trk.id is not None else math.inf  # a tentative track is never missed: it ends

  matched = {}
  for turn in sorted({turn_of(trk) for trk in live}):
    rows = [i for i, trk in enumerate(live) if turn_of(trk) == turn]
    cols = [j for j in range(len(detections)) if j not in matched.values()]
    pairs = _assign([live[i] for i in rows], [predictions[i] for i in rows], [detections[j] for j in cols],
                    overlaps[rows][:, cols], overlap_weight, max_distance_px)
    matched.update({rows[i]: cols[j] for i, j in pairs})
  return matched


def _merge_fragments(live: List[_Live], overlaps: np.ndarray, labels: np.ndarray, detections, shapes, spacing,
                     min_area_px: int):
  """Detections that are pieces of one confirmed track's vessel, joined into one detection.

  A lumen flattened under compression (or a faint wall) can break a vessel's mask into pieces; tracked as
  they are, the track follows one piece and another starts a new track that may take the vessel over. A
  detection is a piece of a track when at least half its pixels lie in the track's last shape (moved to
  its prediction) and in no other confirmed track's; two or more pieces of one track become one detection
  (their union: geometry measured on it). overlaps: `_overlaps` of the tracks and detections. Returns
  (detections, shapes, whether any joined); unchanged when nothing joins.
  """
  owners = {}
  for i, trk in enumerate(live):
    if trk.id is None:
      continue
    for j, det in enumerate(detections):
      if 2 * overlaps[i, j] >= det.area_px:
        owners.setdefault(j, []).append(i)
  pieces = {}
  for j, tracks_of_j in owners.items():
    if len(tracks_of_j) == 1:
      pieces.setdefault(tracks_of_j[0], []).append(j)
  groups = [js for js in pieces.values() if len(js) > 1]
  if not groups:
    return detections, shapes, False
  labels = labels.copy()
  for js in groups:
    for j in js[1:]:
      labels[labels == detections[j].label] = detections[js[0]].label
  detections = geometry.measure_labels(labels, spacing, min_area_px)
  return detections, _shapes(labels, detections), True


def _shapes(labels: np.ndarray, detections) -> List[np.ndarray]:
  """Each detection's pixels within its bbox."""
  return [labels[d.bbox[0]:d.bbox[2], d.bbox[1]:d.bbox[3]] == d.label for d in detections]


def _observe(trk: _Live, frame: int, det: geometry.VesselGeometry, shape: np.ndarray) -> None:
  trk.motion.update(det.centroid_x_px, det.centroid_y_px)
  trk.points.append(TrackPoint(frame, det.centroid_x_px, det.centroid_y_px, False, det))
  trk.shape, trk.bbox, trk.area = shape, det.bbox, det.area_px
  trk.centroid = (det.centroid_x_px, det.centroid_y_px)
  trk.max_diameter = max(trk.max_diameter, det.equivalent_diameter_px)
  trk.hits, trk.missed = trk.hits + 1, 0


def _run(masks: Masks, new_motion: Callable[[float, float], object], overlap_weight: float,
         pixel_spacing_mm, foreground, min_hits: int, max_missed: int, max_distance_px: float,
         min_area_px: int, join_and_cascade: bool) -> List[Track]:
  """The tracking loop shared by `track` and `track_nearest` (they differ in motion model and cost;
  `join_and_cascade`: pieces joined and the matching cascade, `track` only)."""
  if min_hits < 1 or max_missed < 0 or not max_distance_px > 0:
    raise ValueError(f"need min_hits >= 1, max_missed >= 0, max_distance_px > 0; got {min_hits}, "
                     f"{max_missed}, {max_distance_px}.")
  spacing = geometry.check_spacing(pixel_spacing_mm)
  frames = as_frames(masks)
  live, ended, next_id = [], [], 1
  for t, mask in enumerate(frames):
    labels, detections = geometry.label_and_measure(mask, spacing, foreground=foreground, min_area_px=min_area_px)
    shapes = _shapes(labels, detections)
    predictions = [trk.motion.predict() for trk in live]
    overlaps = _overlaps(live, predictions, detections, shapes) if overlap_weight > 0 or join_and_cascade else None
    if join_and_cascade:
      detections, shapes, joined = _merge_fragments(live, overlaps, labels, detections, shapes, spacing,
                                                    min_area_px)
      if joined:
        overlaps = _overlaps(live, predictions, detections, shapes)
      matched = _assign_in_cascade(live, predictions, detections, overlaps, overlap_weight, max_distance_px)
    else:
      matched = dict(_assign(live, predictions, detections, overlaps, overlap_weight, max_distance_px))
    kept = []
    for i, trk in enumerate(live):
      if i in matched:
        j = matched[i]
        _observe(trk, t, detections[j], shapes[j])
      elif trk.id is None:
        continue  # a tentative track must be seen in consecutive frames
      else:
        trk.missed += 1
        if trk.missed > max_missed:
          ended.append(trk)
          continue
        trk.points.append(TrackPoint(t, *predictions[i], True, None))
      kept.append(trk)
    taken = set(matched.values())
    for j, det in enumerate(detections):
      if j not in taken:
        kept.append(_Live(new_motion(det.centroid_x_px, det.centroid_y_px),
                          [TrackPoint(t, det.centroid_x_px, det.centroid_y_px, False, det)], shapes[j], det.bbox,
                          (det.centroid_x_px, det.centroid_y_px), det.area_px, det.equivalent_diameter_px))
    for trk in kept:
      if trk.id is None and trk.hits >= min_hits:
        trk.id, next_id = next_id, next_id + 1
    live = kept
  shape = frames[0].shape if frames else (0, 0)
  confirmed = sorted((trk for trk in ended + live if trk.id is not None), key=lambda trk: trk.id)
  return [Track(trk.id, _without_trailing_predictions(trk.points), shape, spacing) for trk in confirmed]


def _without_trailing_predictions(points: List[TrackPoint]) -> List[TrackPoint]:
  end = len(points)
  while points[end - 1].predicted:
    end -= 1
  return points[:end]


def track(masks: Masks, *, pixel_spacing_mm: geometry.Spacing = None, foreground: Optional[int] = None,
          min_hits: int = 3, max_missed: int = 10, max_distance_px: float = 15.0, min_area_px: int = 1,
          overlap_weight: float = 0.5, measurement_std_px: float = 1.0,
          acceleration_std_px: float = 2.0) -> List[Track]:
  """Tracks the vessels of a clip of masks ([T, H, W] array or a sequence of [H, W]) -> tracks by id.

  See the module docstring. An empty clip, or one where nothing is detected for min_hits frames in a row,
  gives []. Masks of different sizes, float masks and a non-positive pixel spacing are ValueErrors.
  overlap_weight: the share of (1 - IoU) in the assignment cost, the rest being distance / gate.
  """
  def kalman(x, y):
    return _KalmanMotion(x, y, measurement_std_px, acceleration_std_px, initial_speed_std=0.5 * max_distance_px)

  return _run(masks, kalman, overlap_weight, pixel_spacing_mm, foreground, min_hits, max_missed,
              max_distance_px, min_area_px, join_and_cascade=True)


def track_nearest(masks: Masks, *, pixel_spacing_mm: geometry.Spacing = None, foreground: Optional[int] = None,
                  min_hits: int = 3, max_missed: int = 10, max_distance_px: float = 15.0,
                  min_area_px: int = 1) -> List[Track]:
  """The baseline: like `track`, but no filter and no overlap (nearest last-seen centroid within the gate)."""
  return _run(masks, _LastPosition, 0.0, pixel_spacing_mm, foreground, min_hits, max_missed, max_distance_px,
              min_area_px, join_and_cascade=False)


# ---- Compressibility ----

COMPRESSIBLE, NON_COMPRESSIBLE, UNDETERMINED = "compressible", "non-compressible", "undetermined"


@dataclasses.dataclass(frozen=True)
class Compressibility:
  track_id: int
  label: str  # COMPRESSIBLE, NON_COMPRESSIBLE or UNDETERMINED (fewer than min_frames usable frames)
  area_ratio: float  # min / max area over the frames used (nan if undetermined)
  minor_axis_ratio: float  # min / max minor axis
  frames: Tuple[int, ...]  # the frames used


def _inside(point: TrackPoint, trk: Track, radius: float) -> bool:
  height, width = trk.image_shape
  return radius <= point.centroid_x_px <= width - radius and radius <= point.centroid_y_px <= height - radius


def _collapsed_frames(trk: Track, collapse_fraction: float) -> set:
  """Missed frames that count as a closed lumen: predicted inside the image (by the vessel's largest radius),
  in a gap whose observations on both sides are flattened (area < collapse_fraction of the largest)."""
  whole = [p.geometry for p in trk.points if not p.predicted and not p.geometry.touches_border]
  if not whole:
    return set()
  largest = max(g.area_px for g in whole)
  radius = 0.5 * max(g.equivalent_diameter_px for g in whole)

  def flattened(p):
    return not p.geometry.touches_border and p.geometry.area_px < collapse_fraction * largest

  collapsed, gap, before = set(), [], None
  for p in trk.points:  # a track starts and ends observed, so every gap has two sides
    if p.predicted:
      gap.append(p)
      continue
    if gap and flattened(before) and flattened(p):
      collapsed.update(q.frame for q in gap if _inside(q, trk, radius))
    gap, before = [], p
  return collapsed


def compressibility(trk: Track, threshold: float = 0.5, *, frames: Optional[Iterable[int]] = None,
                    by: str = "area", missed_as_collapsed: bool = True, collapse_fraction: float = 0.5,
                    min_frames: int = 2) -> Compressibility:
  """Is a tracked vessel compressible? min / max of its area (by="area") or minor axis (by="minor_axis").

  Use it over a compression sweep (`frames`: e.g. the sweep's frames with rest frames around them; default
  every frame of the track). A patent vein flattens to a sliver (ratio near 0); an artery pulsating by
  ±10% keeps an area ratio >= (0.9 / 1.1)^2 ~ 0.67, so threshold 0.5 sits between. Frames where the vessel
  touches the image edge are left out (only part of it is seen). With missed_as_collapsed, missed frames
  count as area 0 where the lumen closed so far that the mask lost it: the vessel was flattened (area below
  collapse_fraction of its largest) on both sides of the gap and predicted inside the image. A vessel that
  the masks merely miss now and then at full size stays as it is.
  """
  if by not in ("area", "minor_axis"):
    raise ValueError(f"by is 'area' or 'minor_axis', got {by!r}")
  wanted = None if frames is None else set(frames)
  collapsed = _collapsed_frames(trk, collapse_fraction) if missed_as_collapsed else set()
  used, areas, minors = [], [], []
  for point in trk.points:
    if wanted is not None and point.frame not in wanted:
      continue
    if not point.predicted and not point.geometry.touches_border:
      areas.append(point.geometry.area_px)
      minors.append(point.geometry.minor_axis_px)
    elif point.frame in collapsed:
      areas.append(0.0)
      minors.append(0.0)
    else:
      continue
    used.append(point.frame)
  if len(used) < min_frames or max(areas) <= 0:
    return Compressibility(trk.id, UNDETERMINED, math.nan, math.nan, tuple(used))
  area_ratio, minor_ratio = min(areas) / max(areas), min(minors) / max(max(minors), 1e-9)
  ratio = area_ratio if by == "area" else minor_ratio
  label = COMPRESSIBLE if ratio < threshold else NON_COMPRESSIBLE
  return Compressibility(trk.id, label, area_ratio, minor_ratio, tuple(used))


# ---- Rows and CSV ----

COLUMNS = ("track_id", "frame", "predicted", "centroid_x_px", "centroid_y_px", "area_px",
           "equivalent_diameter_px", "major_axis_px", "minor_axis_px", "orientation_deg", "depth_px",
           "top_depth_px", "touches_border", "area_mm2", "equivalent_diameter_mm", "major_axis_mm",
           "minor_axis_mm", "depth_mm", "top_depth_mm")


def tracks_to_rows(tracks: Sequence[Track]) -> List[Dict[str, object]]:
  """One dict per track and frame, keys `COLUMNS`; None where a value does not exist (a predicted frame has
  only its centroid and depth; the *_mm values need a pixel spacing). No tracks: no rows."""
  rows = []
  for trk in tracks:
    row_mm = trk.pixel_spacing_mm[0] if trk.pixel_spacing_mm else None
    for p in trk.points:
      row = dict.fromkeys(COLUMNS)
      if p.geometry is not None:
        row.update({k: v for k, v in geometry.as_row(p.geometry).items() if k in row})
      row.update(track_id=trk.id, frame=p.frame, predicted=p.predicted, centroid_x_px=p.centroid_x_px,
                 centroid_y_px=p.centroid_y_px, depth_px=p.centroid_y_px,
                 depth_mm=None if row_mm is None else p.centroid_y_px * row_mm)
      rows.append(row)
  return rows


def write_tracks_csv(tracks: Sequence[Track], path: Union[str, Path]) -> int:
  """Writes `tracks_to_rows` as CSV (header `COLUMNS`, empty cells for None) and returns the row count.

  A file with the header only means no vessel was tracked in the clip: nothing was detected in `min_hits`
  consecutive frames (or the clip had no frames).
  """
  rows = tracks_to_rows(tracks)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
  return len(rows)
