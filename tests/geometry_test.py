"""Vessel geometry from masks: drawn ellipses with known axes, mm conversion, components, bad input."""

import math

import numpy as np
import pytest
from scipy import ndimage

from veinjax.analysis import geometry


def ellipse(size, cx, cy, a, b, angle=0.0, value=1):
  """A filled ellipse (semi-axes a, b, major axis at `angle` from x towards depth), pixel-centre rule."""
  y, x = np.mgrid[0:size, 0:size] + 0.5
  u = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
  v = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
  return (((u / a) ** 2 + (v / b) ** 2) <= 1).astype(np.uint8) * value


@pytest.mark.parametrize("a,b,angle", [(40, 20, 0.3), (50, 10, -1.0), (25, 8, 1.2), (60, 40, 0.8), (12, 5, 0.0)])
def test_ellipse_axes_centroid_orientation_and_depth(a, b, angle):
  cx, cy = 120.3, 130.7
  (g,) = geometry.measure(ellipse(256, cx, cy, a, b, angle))
  assert abs(g.major_axis_px - 2 * a) < 0.5 and abs(g.minor_axis_px - 2 * b) < 0.5
  assert abs(g.centroid_x_px - cx) < 0.5 and abs(g.centroid_y_px - cy) < 0.5
  assert abs(g.orientation_rad - angle) < 0.02
  assert abs(g.area_px - math.pi * a * b) < 0.01 * math.pi * a * b
  assert g.equivalent_diameter_px == pytest.approx(math.sqrt(4 * g.area_px / math.pi))
  assert g.depth_px == g.centroid_y_px
  # The top edge of an ellipse lies sqrt(a^2 sin^2 + b^2 cos^2) above its centre.
  top = cy - math.sqrt((a * math.sin(angle)) ** 2 + (b * math.cos(angle)) ** 2)
  assert abs(g.top_depth_px - top) < 1.0
  assert not g.touches_border and g.area_mm2 is None and g.depth_mm is None


def test_millimetres_square_and_anisotropic_pixels():
  mask = ellipse(128, 60, 70, 20, 20)
  (px,) = geometry.measure(mask)
  (mm,) = geometry.measure(mask, 0.1)
  assert mm.area_mm2 == pytest.approx(px.area_px * 0.01)
  assert mm.major_axis_mm == pytest.approx(px.major_axis_px * 0.1)
  assert mm.equivalent_diameter_mm == pytest.approx(px.equivalent_diameter_px * 0.1)
  assert mm.depth_mm == pytest.approx(px.depth_px * 0.1) and mm.top_depth_mm == pytest.approx(px.top_depth_px * 0.1)
  # Rows 0.2 mm, columns 0.1 mm: a 40 px circle is 8 mm deep and 4 mm wide.
  (aniso,) = geometry.measure(mask, (0.2, 0.1))
  assert abs(aniso.major_axis_mm - 8.0) < 0.1 and abs(aniso.minor_axis_mm - 4.0) < 0.1
  assert aniso.depth_mm == pytest.approx(px.depth_px * 0.2)


@pytest.mark.parametrize("spacing", [0, -0.1, float("nan"), float("inf"), (0.1, 0.0), (0.1, 0.1, 0.1)])
def test_bad_pixel_spacing_is_a_clear_error(spacing):
  with pytest.raises(ValueError, match="pixel_spacing_mm"):
    geometry.measure(ellipse(64, 30, 30, 10, 5), spacing)
  with pytest.raises(ValueError, match="pixel_spacing_mm"):
    geometry.measure(np.zeros((8, 8), np.uint8), spacing)  # even when there is nothing to measure


def test_components_labels_foreground_and_min_area():
  mask = ellipse(96, 25, 30, 10, 6) + ellipse(96, 70, 60, 12, 8, value=2)
  mask[90, 90] = 1  # a one-pixel speck
  found = geometry.measure(mask)
  assert [g.label for g in found] == [1, 2, 3] and found[2].area_px == 1
  assert [round(g.centroid_x_px) for g in geometry.measure(mask, min_area_px=2)] == [25, 70]
  (only_class_2,) = geometry.measure(mask, foreground=2)
  assert round(only_class_2.centroid_x_px) == 70
  assert geometry.measure(np.zeros((32, 32), bool)) == []


def test_connectivity_and_border():
  diagonal = np.eye(20, dtype=np.uint8)
  assert len(geometry.measure(diagonal)) == 1  # 8-connected: one thin oblique sliver
  assert len(geometry.measure(diagonal, connectivity=4)) == 20
  (line,) = geometry.measure(diagonal)
  assert line.touches_border and line.minor_axis_px == pytest.approx(0.0, abs=1e-6)
  assert line.orientation_rad == pytest.approx(math.pi / 4)  # down and to the right: towards depth
  with pytest.raises(ValueError, match="connectivity"):
    geometry.measure(diagonal, connectivity=6)


def test_instances_keep_their_ids_and_are_measured_whole():
  instances = ellipse(96, 25, 30, 10, 6, value=7) + ellipse(96, 70, 60, 12, 8, value=3)
  instances[60, 30:40] = 3  # a detached piece of instance 3
  found = geometry.measure_instances(instances)
  assert sorted(found) == [3, 7]
  assert found[3].area_px == int((instances == 3).sum())
  assert round(found[7].centroid_x_px) == 25


@pytest.mark.parametrize("bad,match", [(np.zeros((4, 8, 8), np.uint8), "2-D"), (np.zeros((8, 8)) + 0.7, "dtype")])
def test_bad_masks_are_clear_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    geometry.measure(bad)


def test_as_row_is_flat():
  (g,) = geometry.measure(ellipse(64, 30, 30, 12, 5, 0.5), 0.2)
  row = geometry.as_row(g)
  assert row["orientation_deg"] == pytest.approx(math.degrees(g.orientation_rad))
  assert isinstance(row["bbox"], str) and row["area_mm2"] == pytest.approx(g.area_px * 0.04)


def _reference_measure(labels):
  """Each region measured alone, as the first measure_labels did: scipy's find_objects, np.nonzero, np.mean."""
  regions = []
  for index, box in enumerate(ndimage.find_objects(labels)):
    if box is None:
      continue
    rows, cols = np.nonzero(labels[box] == index + 1)
    y, x = rows + box[0].start + 0.5, cols + box[1].start + 0.5
    dx, dy = x - x.mean(), y - y.mean()
    regions.append((index + 1, rows.size, x.mean(), y.mean(), np.mean(dx * dx), np.mean(dy * dy), np.mean(dx * dy),
                    (box[0].start, box[1].start, box[0].stop, box[1].stop)))
  return regions


@pytest.mark.parametrize("seed", range(4))
def test_labelling_within_the_foreground_box_and_measuring_in_one_pass_equal_scipy(seed):
  """The tracker's per-frame path (label only the foreground's box, group pixels by one sort) gives exactly
  scipy's labels of the whole frame and the moments of each region scanned alone, to the last bit."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((96, 128), np.uint8)
  for _ in range(rng.integers(1, 7)):  # discs and specks, some cut by the edge, some touching each other
    cy, cx, r = rng.uniform(-5, 100), rng.uniform(-5, 133), rng.uniform(1, 14)
    yy, xx = np.mgrid[:96, :128]
    mask[(yy - cy)**2 + (xx - cx)**2 <= r * r] = 1
  mask[rng.random(mask.shape) < 0.002] = 1
  want_labels, want_count = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
  labels, count = geometry.label_components(mask)
  np.testing.assert_array_equal(labels, want_labels)
  assert count == want_count
  labels, regions = geometry.label_and_measure(mask)
  np.testing.assert_array_equal(labels, want_labels)
  assert [g.label for g in regions] == list(range(1, want_count + 1))
  for g, (label, area, cx, cy, mxx, myy, mxy, bbox) in zip(regions, _reference_measure(want_labels)):
    assert (g.label, g.area_px, g.centroid_x_px, g.centroid_y_px, g.bbox) == (label, area, cx, cy, bbox)
    half_sum, root = 0.5 * (mxx + myy), math.hypot(0.5 * (mxx - myy), mxy)
    assert g.major_axis_px == 4.0 * math.sqrt(half_sum + root)
    assert g.minor_axis_px == 4.0 * math.sqrt(max(half_sum - root, 0.0))
  assert geometry.measure_labels(want_labels) == regions
  assert geometry.measure(mask) == regions
