"""Which vessels a model finds and which it misses: per connected component of the ground truth.

  rows = detection.truth_components(image, truth, prediction)        # one TruthComponent per true vessel
  extra = detection.false_components(truth, prediction)              # predicted components touching no vessel
  table = detection.group_by(rows, "equivalent_diameter", (0, 0.1, 0.2, 1))

A split-level Dice says how much is missed, not what: these say whether the misses are the small vessels,
the low-contrast ones, the deep ones or those cut by the edge of the picture (`benchmarks.missed_vessels`
prints the tables for a trained run on any dataset). Sizes and depths are fractions of the frame's height,
so frames of different sizes pool. Grey levels are 0-1 (uint8 / 255).

Contrast is Weber's, of mean grey levels as shown: (ring - lumen) / max(ring, 0.05), the ring being the
pixels within `ring_fraction` of the frame's height outside the component (other vessels excluded); 1 is a
black lumen, 0 a lumen as bright as its surroundings, negative a brighter one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from veinjax.analysis import geometry

# Pixels darker than this (of 255) count as the black margin around the scanned picture.
_MARGIN_LEVEL = 8


@dataclasses.dataclass(frozen=True)
class TruthComponent:
  """One ground-truth vessel (connected component) and how much of it the prediction covers."""
  area: float  # share of the frame's pixels
  equivalent_diameter: float  # of a circle of the same area, x frame height
  depth: float  # of its centroid, x frame height (0: the top)
  lumen_grey: float  # mean grey level inside, 0-1
  ring_grey: float  # mean grey level of the ring around it, 0-1
  contrast: float  # Weber contrast (module docstring)
  touches_picture_edge: bool  # cut by the edge of the scanned picture (the frame's or its black margin's)
  cut_edges: tuple[str, ...]  # which edges cut it, of "top", "bottom", "left", "right" (empty: none)
  detected_share: float  # share of its pixels predicted foreground

  @property
  def found(self) -> bool:
    """Most of it predicted (the usual object-level criterion)."""
    return self.detected_share > 0.5


def _check_pair(name: str, a: np.ndarray, b: np.ndarray) -> None:
  if a.shape[:2] != b.shape[:2]:
    raise ValueError(f"{name}: shapes {a.shape} and {b.shape} differ; give the image, truth and prediction "
                     f"at one size (e.g. Predictor.frame_probabilities maps predictions onto the frame).")


def _gray(image: np.ndarray) -> np.ndarray:
  """[H, W] grey levels 0-255 of a [H, W] or [H, W, C] image (channels averaged)."""
  return image if image.ndim == 2 else image.mean(axis=-1)


def picture_box(image: np.ndarray) -> tuple[int, int, int, int]:
  """(row0, col0, row1, col1), exclusive ends: the rows and columns that are mostly not black margin."""
  return _picture_box_of(_gray(np.asarray(image)))


def _picture_box_of(gray: np.ndarray) -> tuple[int, int, int, int]:
  lit = gray > _MARGIN_LEVEL
  rows = np.flatnonzero(lit.mean(axis=1) > 0.3)
  cols = np.flatnonzero(lit.mean(axis=0) > 0.3)
  if rows.size == 0 or cols.size == 0:  # an all-black frame: the frame itself
    return 0, 0, gray.shape[0], gray.shape[1]
  return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def truth_components(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, *,
                     foreground: int | None = None, ring_fraction: float = 0.02,
                     edge_px: int = 2) -> list[TruthComponent]:
  """Each connected component of the truth (mask > 0, or == foreground) and its share predicted.

  `image`: uint8 [H, W] or [H, W, C]; `truth`, `prediction`: [H, W] class masks (prediction > 0 is
  foreground, or == foreground when given). A component within `edge_px` of the picture's edge counts as cut.
  """
  image, truth, prediction = np.asarray(image), np.asarray(truth), np.asarray(prediction)
  _check_pair("image and truth", image, truth)
  _check_pair("truth and prediction", truth, prediction)
  if not 0 < ring_fraction < 0.5:
    raise ValueError(f"ring_fraction is a share of the frame's height in (0, 0.5); got {ring_fraction}.")
  gray255 = _gray(image)
  gray = gray255.astype(np.float64) / 255.0
  truth_fg = geometry.foreground_of(truth, foreground)
  predicted = geometry.foreground_of(prediction, foreground)
  # Area, diameter, centroid depth and box of each component: geometry's measurement, made relative here.
  labels, vessels = geometry.label_and_measure(truth_fg)
  height, width = truth_fg.shape
  ring_px = max(1, round(ring_fraction * height))
  r0, c0, r1, c1 = _picture_box_of(gray255)
  rows = []
  for vessel in vessels:
    component = labels == vessel.label
    ring = ndimage.binary_dilation(component, iterations=ring_px) & ~truth_fg
    lumen = float(gray[component].mean())
    ring_grey = float(gray[ring].mean()) if ring.any() else lumen
    top, left, bottom, right = vessel.bbox
    cut = tuple(edge for edge, touches in (("top", top <= r0 + edge_px), ("bottom", bottom >= r1 - edge_px),
                                           ("left", left <= c0 + edge_px), ("right", right >= c1 - edge_px))
                if touches)
    rows.append(TruthComponent(
        area=vessel.area_px / (height * width),
        equivalent_diameter=vessel.equivalent_diameter_px / height,
        depth=vessel.depth_px / height,
        lumen_grey=lumen, ring_grey=ring_grey,
        contrast=(ring_grey - lumen) / max(ring_grey, 0.05),
        touches_picture_edge=bool(cut), cut_edges=cut,
        detected_share=float(predicted[component].mean())))
  return rows


def false_components(truth: np.ndarray, prediction: np.ndarray, *, foreground: int | None = None) -> list[float]:
  """Areas (share of the frame's pixels) of the predicted components that touch no true vessel."""
  truth, prediction = np.asarray(truth), np.asarray(prediction)
  _check_pair("truth and prediction", truth, prediction)
  truth_fg = geometry.foreground_of(truth, foreground)
  labels, _ = geometry.label_components(prediction, foreground)
  areas = []
  for label, box in enumerate(ndimage.find_objects(labels), start=1):
    if box is None:
      continue
    component = labels[box] == label
    if not truth_fg[box][component].any():
      areas.append(float(component.sum()) / truth_fg.size)
  return areas


@dataclasses.dataclass(frozen=True)
class Group:
  """The components whose value of a field lies in (low, high]."""
  low: float
  high: float
  count: int
  found_share: float  # share of the components found (most of each predicted)
  pixel_recall: float  # share of their pixels predicted
  pixel_share: float  # their pixels' share of all true vessel pixels


def _group(rows: Sequence[TruthComponent], low: float, high: float, total_area: float) -> Group:
  areas = np.array([r.area for r in rows])
  detected = np.array([r.detected_share for r in rows])
  return Group(low=float(low), high=float(high), count=len(rows), found_share=float((detected > 0.5).mean()),
               pixel_recall=float((detected * areas).sum() / areas.sum()) if areas.sum() > 0 else 0.0,
               pixel_share=float(areas.sum()) / total_area if total_area > 0 else 0.0)


def group_by_cut_edge(rows: Sequence[TruthComponent]) -> dict[str, Group]:
  """Rows grouped by the picture edge that cuts them: "none", "top", "bottom", "left", "right", or "several"
  (cut by more than one). Empty groups are left out; a group's low / high are NaN (not a numeric bin)."""
  total = float(sum(r.area for r in rows))
  names = ("none", "top", "bottom", "left", "right", "several")
  def name_of(row):
    return "none" if not row.cut_edges else row.cut_edges[0] if len(row.cut_edges) == 1 else "several"
  groups = {name: [r for r in rows if name_of(r) == name] for name in names}
  return {name: _group(members, np.nan, np.nan, total) for name, members in groups.items() if members}


def group_by(rows: Sequence[TruthComponent], field: str, edges: Sequence[float]) -> list[Group]:
  """Rows binned by `field` (a TruthComponent field; booleans are 0 / 1) at (edges[i], edges[i+1]].

  Empty bins are left out; values outside every bin are not counted.
  """
  names = {f.name for f in dataclasses.fields(TruthComponent)}
  if field not in names:
    raise ValueError(f"group_by: {field!r} is not a TruthComponent field; fields: {', '.join(sorted(names))}.")
  if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
    raise ValueError(f"group_by: edges must rise, at least two of them; got {list(edges)}.")
  if field == "cut_edges":
    raise ValueError("group_by: cut_edges are names, not numbers; group them with group_by_cut_edge.")
  values = [float(getattr(r, field)) for r in rows]
  total = float(sum(r.area for r in rows))
  groups = []
  for low, high in zip(edges[:-1], edges[1:]):
    inside = [r for r, v in zip(rows, values) if low < v <= high]
    if inside:
      groups.append(_group(inside, low, high, total))
  return groups
