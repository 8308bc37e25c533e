"""Per-vessel detection (veinjax.analysis.detection) on drawn frames with known answers, and its benchmark table."""

import math

import numpy as np
import pytest

from benchmarks import missed_vessels
from veinjax.analysis import detection


def disc(size, cy, cx, r):
  y, x = np.mgrid[0:size, 0:size] + 0.5
  return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def frame_with_two_vessels():
  """A 100x100 frame, tissue grey 100 with a black margin in columns 0-9; a black vessel (r 10) and a grey
  one (level 60, r 6) in the picture; the second one's left half only is predicted."""
  image = np.full((100, 100), 100, np.uint8)
  image[:, :10] = 0
  big, small = disc(100, 40, 50, 10), disc(100, 75, 30, 6)
  image[big] = 0
  image[small] = 60
  truth = (big | small).astype(np.uint8)
  prediction = big.copy()
  prediction[:, :30] |= small[:, :30]
  return image, truth, prediction.astype(np.uint8), big, small


def test_components_measured_and_detected_share():
  image, truth, prediction, big, small = frame_with_two_vessels()
  rows = sorted(detection.truth_components(image, truth, prediction), key=lambda r: r.area)
  small_row, big_row = rows
  assert big_row.area == pytest.approx(big.sum() / 1e4) and small_row.area == pytest.approx(small.sum() / 1e4)
  assert big_row.equivalent_diameter == pytest.approx(2 * math.sqrt(big.sum() / math.pi) / 100)
  assert big_row.depth == pytest.approx(0.40, abs=0.005) and small_row.depth == pytest.approx(0.75, abs=0.005)
  assert big_row.lumen_grey == 0.0 and big_row.ring_grey == pytest.approx(100 / 255)
  assert big_row.contrast == pytest.approx(1.0)
  assert small_row.lumen_grey == pytest.approx(60 / 255) and small_row.contrast == pytest.approx(0.4)
  assert big_row.detected_share == 1.0 and big_row.found
  assert small_row.detected_share == pytest.approx(small[:, :30].sum() / small.sum())
  assert not small_row.found  # half of it, not most
  assert not big_row.touches_picture_edge and not small_row.touches_picture_edge


def test_picture_edge_is_the_margin_not_only_the_frame():
  image, truth, prediction, _, _ = frame_with_two_vessels()
  assert detection.picture_box(image) == (0, 10, 100, 100)
  cut = disc(100, 50, 10, 8)  # centred on the margin's edge: its visible part is cut by the picture's edge
  rows = detection.truth_components(image, cut, np.zeros_like(cut))
  assert len(rows) == 1 and rows[0].touches_picture_edge and rows[0].detected_share == 0.0
  assert rows[0].cut_edges == ("left",)


def test_cut_edges_name_each_edge_and_group_by_cut_edge_pools_them():
  image, truth, prediction, big, small = frame_with_two_vessels()
  bottom_left = disc(100, 99, 10, 8)  # on the margin's edge and the frame's bottom: cut twice
  bottom = disc(100, 98, 60, 6)
  truth = (big | small | bottom_left | bottom).astype(np.uint8)
  prediction = (big | bottom).astype(np.uint8)
  rows = detection.truth_components(image, truth, prediction)
  assert sorted(r.cut_edges for r in rows) == [(), (), ("bottom",), ("bottom", "left")]
  assert all(r.touches_picture_edge == bool(r.cut_edges) for r in rows)
  groups = detection.group_by_cut_edge(rows)
  assert list(groups) == ["none", "bottom", "several"]  # empty groups left out, in a fixed order
  total = truth.sum()
  assert groups["none"].count == 2 and groups["none"].found_share == 0.5
  assert groups["bottom"].pixel_recall == 1.0 and groups["several"].pixel_recall == 0.0
  assert groups["bottom"].pixel_share == pytest.approx(bottom.sum() / total)
  assert sum(g.pixel_share for g in groups.values()) == pytest.approx(1.0)


def test_false_components_are_those_touching_no_vessel():
  image, truth, prediction, _, _ = frame_with_two_vessels()
  prediction = prediction.copy()
  prediction[5:9, 90:95] = 1  # 20 pixels away from any vessel
  assert detection.false_components(truth, prediction) == [pytest.approx(20 / 1e4)]
  assert detection.false_components(truth, truth) == []


def test_group_by_counts_recall_and_shares():
  image, truth, prediction, big, small = frame_with_two_vessels()
  rows = detection.truth_components(image, truth, prediction)
  groups = detection.group_by(rows, "equivalent_diameter", (0, 0.15, 1.0))
  assert [g.count for g in groups] == [1, 1]
  total = big.sum() + small.sum()
  assert groups[0].pixel_share == pytest.approx(small.sum() / total)
  assert groups[0].pixel_recall == pytest.approx(small[:, :30].sum() / small.sum())
  assert groups[1].found_share == 1.0 and groups[1].pixel_recall == 1.0
  (both,) = detection.group_by(rows, "contrast", (0, 1.0))
  assert both.count == 2 and both.found_share == 0.5
  assert both.pixel_recall == pytest.approx((big.sum() + small[:, :30].sum()) / total)
  assert detection.group_by(rows, "depth", (0.9, 1.0)) == []  # empty bins are left out


def test_bad_input_is_named():
  image, truth, prediction, _, _ = frame_with_two_vessels()
  with pytest.raises(ValueError, match="truth and prediction"):
    detection.truth_components(image, truth, prediction[:50])
  with pytest.raises(ValueError, match="image and truth"):
    detection.truth_components(image[:50], truth, prediction)
  with pytest.raises(ValueError, match="not a TruthComponent field"):
    detection.group_by([], "size", (0, 1))
  with pytest.raises(ValueError, match="group_by_cut_edge"):
    detection.group_by([], "cut_edges", (0, 1))
  with pytest.raises(ValueError, match="edges must rise"):
    detection.group_by([], "depth", (1, 0))
  with pytest.raises(ValueError, match="probabilities"):
    detection.truth_components(image, truth, prediction.astype(np.float32))


class _FixedPredictor:
  """Stands in for inference.Predictor: 'probabilities' are the prepared masks, `mask` returns them."""

  def __init__(self, masks):
    self.masks = list(masks)

  def frame_probabilities(self, frames):
    return [self.masks.pop(0)]

  def mask(self, probabilities):
    return probabilities


def test_benchmark_measures_frames_and_tables_say_what_was_found():
  image, truth, prediction, _, _ = frame_with_two_vessels()
  components, false = missed_vessels.measure(_FixedPredictor([prediction, np.zeros_like(prediction)]),
                                             [image, image], [truth, truth])
  assert len(components) == 4 and false == []
  assert sum(c.found for c in components) == 1  # only the first frame's black vessel
  text = missed_vessels.tables_markdown(components, false)
  assert text.startswith("4 true vessels: 0.250 found")
  assert "| cut by the picture's edge | vessels |" in text and "| no | 4 | 0.250 |" in text
  assert "| which edge cuts it | vessels |" in text and "| none | 4 | 0.250 |" in text
