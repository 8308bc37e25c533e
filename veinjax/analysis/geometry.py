"""Per-vessel geometry from a mask: centroid, area, diameters, orientation and depth, in pixels and mm.

Coordinates: pixel (row r, column c) covers [c, c + 1) x [r, r + 1), so a component's centroid is the mean
of its pixel centres (c + 0.5, r + 0.5); x runs laterally (columns), y in depth (rows, 0 = the top of the
image, where the probe is). Depth is measured from the top of the image: `depth` of the centroid, `top_depth`
of the component's upper edge (the pixels above it).

Axes come from second moments: the ellipse with the component's covariance has full axis lengths
4 * sqrt(eigenvalue) (for a filled ellipse: exactly its axes); `orientation_rad` is its major axis' angle
from the x axis, positive towards depth (clockwise on screen), in (-pi/2, pi/2].
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

Spacing = Union[None, float, Sequence[float]]


@dataclasses.dataclass(frozen=True)
class VesselGeometry:
  """One connected component. The *_mm fields are None unless a pixel spacing was given."""
  label: int  # its label in the labelled mask (1-based; instance id for `measure_instances`)
  area_px: int
  centroid_x_px: float
  centroid_y_px: float
  equivalent_diameter_px: float  # the diameter of a circle of the same area
  major_axis_px: float
  minor_axis_px: float
  orientation_rad: float  # in pixel coordinates
  depth_px: float  # of the centroid (== centroid_y_px)
  top_depth_px: float  # of the upper edge
  bbox: Tuple[int, int, int, int]  # row0, col0, row1, col1 (exclusive ends)
  touches_border: bool  # cut by the image edge: area and axes are of the visible part only
  area_mm2: Optional[float] = None
  equivalent_diameter_mm: Optional[float] = None
  major_axis_mm: Optional[float] = None
  minor_axis_mm: Optional[float] = None
  depth_mm: Optional[float] = None
  top_depth_mm: Optional[float] = None


def check_spacing(pixel_spacing_mm: Spacing) -> Optional[Tuple[float, float]]:
  """(row_mm, col_mm) from None, one number (square pixels) or a (row, col) pair; > 0 and finite, or an error."""
  if pixel_spacing_mm is None:
    return None
  values = np.atleast_1d(np.asarray(pixel_spacing_mm, dtype=np.float64)).ravel()
  if values.size not in (1, 2) or not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise ValueError(f"pixel_spacing_mm must be a positive, finite size of a pixel in mm (one number, or "
                     f"(row, column)); got {pixel_spacing_mm!r}. Leave it None to measure in pixels only.")
  return float(values[0]), float(values[-1])


def foreground_of(mask: np.ndarray, foreground: Optional[int] = None) -> np.ndarray:
  """The pixels to measure: mask > 0, or mask == foreground. Masks are 2-D, boolean or integer."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"a mask is 2-D [H, W]; got shape {mask.shape}.")
  if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
    raise ValueError(f"a mask holds class labels (bool or integer); got dtype {mask.dtype}. Threshold "
                     f"probabilities first, e.g. mask = probability > 0.5.")
  if foreground is None:
    return mask if mask.dtype == bool else mask > 0
  return mask == foreground


def label_components(mask: np.ndarray, foreground: Optional[int] = None,
                     connectivity: int = 8) -> Tuple[np.ndarray, int]:
  """scipy.ndimage.label of the foreground with 4- or 8-connectivity (8: a thin oblique sliver stays one)."""
  labels, count, _ = _label_in_box(mask, foreground, connectivity)
  return labels, count


def _label_in_box(mask: np.ndarray, foreground: Optional[int], connectivity: int):
  """(labels, count, the foreground's bounding box as slices, or None when there is no foreground).

  Only the box is labelled (vessels fill a few percent of a frame); the labels are those of the whole frame,
  since cropping keeps the raster order in which scipy numbers the components."""
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity is 4 or 8, got {connectivity}")
  structure = np.ones((3, 3), dtype=bool) if connectivity == 8 else None
  fg = foreground_of(mask, foreground)
  labels = np.zeros(fg.shape, dtype=np.int32)
  rows = np.flatnonzero(fg.any(axis=1))
  if rows.size == 0:
    return labels, 0, None
  cols = np.flatnonzero(fg.any(axis=0))
  box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
  labels[box], count = ndimage.label(fg[box], structure=structure)
  return labels, count, box


def _mean(values: np.ndarray) -> float:
  """np.mean's value (the same pairwise sum, divided by the count) without its per-call overhead."""
  return float(np.add.reduce(values)) / values.size


def _moments(x: np.ndarray, y: np.ndarray) -> Tuple[float, float, float]:
  """Major and minor full axis lengths and the major axis' angle of points (x, y)."""
  dx, dy = x - _mean(x), y - _mean(y)
  mxx, myy, mxy = _mean(dx * dx), _mean(dy * dy), _mean(dx * dy)
  half_sum, root = 0.5 * (mxx + myy), math.hypot(0.5 * (mxx - myy), mxy)
  angle = 0.5 * math.atan2(2.0 * mxy, mxx - myy)
  return 4.0 * math.sqrt(half_sum + root), 4.0 * math.sqrt(max(half_sum - root, 0.0)), angle


def _measure_region(label: int, rows: np.ndarray, cols: np.ndarray, bbox, shape,
                    spacing: Optional[Tuple[float, float]]) -> VesselGeometry:
  """The geometry of one component from its pixels' row and column indices (in raster order)."""
  x, y = cols + 0.5, rows + 0.5
  area = int(rows.size)
  major, minor, angle = _moments(x, y)
  cx, cy = _mean(x), _mean(y)
  row0, col0, row1, col1 = bbox
  mm = {}
  if spacing is not None:
    row_mm, col_mm = spacing
    area_mm2 = area * row_mm * col_mm
    major_mm, minor_mm, _ = _moments(x * col_mm, y * row_mm)
    mm = dict(area_mm2=area_mm2, equivalent_diameter_mm=math.sqrt(4.0 * area_mm2 / math.pi),
              major_axis_mm=major_mm, minor_axis_mm=minor_mm, depth_mm=cy * row_mm, top_depth_mm=row0 * row_mm)
  return VesselGeometry(
      label=label, area_px=area, centroid_x_px=cx, centroid_y_px=cy,
      equivalent_diameter_px=math.sqrt(4.0 * area / math.pi), major_axis_px=major, minor_axis_px=minor,
      orientation_rad=angle, depth_px=cy, top_depth_px=float(row0), bbox=(row0, col0, row1, col1),
      touches_border=row0 == 0 or col0 == 0 or row1 == shape[0] or col1 == shape[1], **mm)


def measure_labels(labels: np.ndarray, pixel_spacing_mm: Spacing = None,
                   min_area_px: int = 1) -> List[VesselGeometry]:
  """Geometry of every labelled region (label > 0) of an integer label image, in label order."""
  labels = np.asarray(labels)
  return _measure_window(labels, (0, 0), labels.shape, check_spacing(pixel_spacing_mm), min_area_px)


def _measure_window(window: np.ndarray, origin: Tuple[int, int], shape: Tuple[int, int],
                    spacing: Optional[Tuple[float, float]], min_area_px: int) -> List[VesselGeometry]:
  """`measure_labels` of the regions inside `window`, a part of a label image of `shape` whose top-left pixel
  is at `origin` (row, col) and which holds every labelled pixel."""
  # One pass: the labelled pixels, grouped by label (a stable sort keeps each region's pixels in raster
  # order, so its sums are those of a scan of the region alone).
  labelled = window > 0
  flat, values = np.flatnonzero(labelled), window[labelled]
  order = np.argsort(values, kind="stable")
  values, flat = values[order], flat[order]
  rows, cols = np.divmod(flat, window.shape[1])
  rows, cols = rows + origin[0], cols + origin[1]
  starts = [0] + (np.flatnonzero(values[1:] != values[:-1]) + 1).tolist() if values.size else []
  regions = []
  for start, end in zip(starts, starts[1:] + [values.size]):
    if end - start < max(min_area_px, 1):
      continue
    region_rows, region_cols = rows[start:end], cols[start:end]
    bbox = (int(region_rows[0]), int(region_cols.min()), int(region_rows[-1]) + 1, int(region_cols.max()) + 1)
    regions.append(_measure_region(int(values[start]), region_rows, region_cols, bbox, shape, spacing))
  return regions


def label_and_measure(mask: np.ndarray, pixel_spacing_mm: Spacing = None, *, foreground: Optional[int] = None,
                      connectivity: int = 8, min_area_px: int = 1) -> Tuple[np.ndarray, List[VesselGeometry]]:
  """`label_components` and `measure_labels` of its labels in one: (labels, geometry of each component).

  The measuring reads only the foreground's bounding box (what a tracker calls on every frame)."""
  spacing = check_spacing(pixel_spacing_mm)
  labels, _, box = _label_in_box(mask, foreground, connectivity)
  if box is None:
    return labels, []
  return labels, _measure_window(labels[box], (box[0].start, box[1].start), labels.shape, spacing, min_area_px)


def measure(mask: np.ndarray, pixel_spacing_mm: Spacing = None, *, foreground: Optional[int] = None,
            connectivity: int = 8, min_area_px: int = 1) -> List[VesselGeometry]:
  """Geometry of each connected component of a class mask (mask > 0, or mask == foreground).

  Components smaller than min_area_px are left out. An empty mask gives an empty list.
  """
  return label_and_measure(mask, pixel_spacing_mm, foreground=foreground, connectivity=connectivity,
                           min_area_px=min_area_px)[1]


def measure_instances(instances: np.ndarray, pixel_spacing_mm: Spacing = None) -> Dict[int, VesselGeometry]:
  """{instance id: geometry} of an instance mask (0 = background); an id split in pieces is measured whole."""
  foreground_of(instances)  # checks shape and dtype
  return {g.label: g for g in measure_labels(np.asarray(instances).astype(np.int64), pixel_spacing_mm)}


def as_row(geometry: VesselGeometry) -> Dict[str, object]:
  """A flat dict of one geometry (orientation also in degrees), for tables and CSV files."""
  row = dataclasses.asdict(geometry)
  row["orientation_deg"] = math.degrees(geometry.orientation_rad)
  row["bbox"] = " ".join(str(v) for v in geometry.bbox)
  return row
