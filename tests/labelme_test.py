"""Labelme rasterisation against known areas, label mapping, rejected shapes and bad files."""

import json
import math

import numpy as np
import pytest

from veinjax import labels
from veinjax.data import labelme
from veinjax.data.decode import BadExampleError

LABELS = {"vein": 1, "artery": 2}


def _shape(label, points, shape_type):
  return {"label": label, "points": points, "shape_type": shape_type, "group_id": None, "flags": {}}


def _write(path, shapes, height=64, width=80):
  path.write_text(json.dumps({"version": "5.5.0", "shapes": shapes, "imageHeight": height,
                              "imageWidth": width, "imagePath": "x.png", "imageData": None}))
  return path


def _assert_area(mask, area, perimeter):
  # Rasterisation may be off by up to one pixel along the outline (PIL draws the outline too).
  count = int((mask > 0).sum())
  assert abs(count - area) <= perimeter, (count, area, perimeter)


def test_rectangle_area():
  mask = labelme.rasterize([_shape("vein", [[40, 30], [10, 10]], "rectangle")], 64, 80, LABELS)
  assert set(np.unique(mask)) == {0, 1}
  _assert_area(mask, 30 * 20, 2 * (30 + 20))
  ys, xs = np.nonzero(mask)
  assert abs(ys.min() - 10) <= 1 and abs(ys.max() - 30) <= 1 and abs(xs.min() - 10) <= 1


def test_polygon_area():
  triangle = [[5, 5], [55, 5], [5, 45]]
  mask = labelme.rasterize([_shape("vein", triangle, "polygon")], 64, 80, LABELS)
  _assert_area(mask, 0.5 * 50 * 40, 50 + 40 + math.hypot(50, 40))
  # A shape without shape_type (old Labelme files) is a polygon.
  untyped = [{"label": "vein", "points": triangle}]
  np.testing.assert_array_equal(labelme.rasterize(untyped, 64, 80, LABELS), mask)


def test_circle_area():
  mask = labelme.rasterize([_shape("artery", [[40, 32], [40, 47]], "circle")], 64, 80, LABELS)
  assert set(np.unique(mask)) == {0, 2}
  _assert_area(mask, math.pi * 15**2, 2 * math.pi * 15)
  assert mask[32, 40] == 2 and mask[32, 60] == 0


def test_later_shapes_overwrite_earlier_ones():
  shapes = [_shape("vein", [[0, 0], [40, 40]], "rectangle"), _shape("artery", [[20, 20], [60, 60]], "rectangle")]
  mask = labelme.rasterize(shapes, 64, 80, LABELS)
  assert mask[10, 10] == 1 and mask[30, 30] == 2 and mask[50, 50] == 2 and mask[10, 70] == 0


def test_unmapped_label_names_file_label_and_flag(tmp_path):
  path = _write(tmp_path / "frame.json", [_shape("nerve", [[1, 1], [5, 5]], "rectangle")])
  with pytest.raises(BadExampleError) as info:
    labelme.read_labelme(path, LABELS)
  message = str(info.value)
  assert "frame.json" in message and "'nerve'" in message and "--config.dataset.labelme_labels" in message


@pytest.mark.parametrize("shape_type,points", [("linestrip", [[1, 1], [5, 5], [9, 1]]), ("point", [[3, 3]]),
                                               ("line", [[1, 1], [5, 5]])])
def test_shapes_without_area_are_rejected(tmp_path, shape_type, points):
  path = _write(tmp_path / "f.json", [_shape("vein", points, shape_type)])
  with pytest.raises(BadExampleError, match=rf"f\.json.*{shape_type}.*no area"):
    labelme.read_labelme(path, LABELS)


def test_degenerate_polygon_is_rejected():
  with pytest.raises(BadExampleError, match="at least 3"):
    labelme.rasterize([_shape("vein", [[1, 1], [5, 5]], "polygon")], 8, 8, LABELS)


def test_file_size_must_match_image(tmp_path):
  path = _write(tmp_path / "f.json", [_shape("vein", [[1, 1], [5, 5]], "rectangle")], height=64, width=80)
  assert labelme.read_labelme(path, LABELS, image_size=(64, 80)).shape == (64, 80)
  assert labelme.read_labelme(path, LABELS).shape == (64, 80)  # size from the file
  with pytest.raises(BadExampleError, match=r"size mismatch.*f\.json.*80x64.*img\.png.*40x32"):
    labelme.read_labelme(path, LABELS, image_size=(32, 40), image_path="img.png")


def test_corrupt_json_names_the_file(tmp_path):
  (tmp_path / "bad.json").write_text('{"shapes": [')
  with pytest.raises(BadExampleError, match=r"bad\.json"):
    labelme.read_labelme(tmp_path / "bad.json", LABELS)
  (tmp_path / "other.json").write_text('{"foo": 1}')
  with pytest.raises(BadExampleError, match=r"other\.json.*not a Labelme"):
    labelme.read_labelme(tmp_path / "other.json", LABELS)


# ---- Labelme's __ignore__ (labelme2voc's convention) and labels mapped to "ignore" ----

IGNORE = labels.IGNORE_LABEL


def test_ignore_label_is_ignored_by_default_and_drawn_in_order(tmp_path):
  # Labelme's example convention: shapes drawn in file order, a later shape over an earlier one; __ignore__
  # regions become IGNORE_LABEL (255, VOC's "void"), not a class and not an error.
  shapes = [_shape("vein", [[0, 0], [40, 40]], "rectangle"),
            _shape("__ignore__", [[20, 20], [60, 60]], "rectangle"),  # over part of the vein
            _shape("artery", [[50, 50], [70, 62]], "rectangle")]  # over part of the ignored region
  mask = labelme.read_labelme(_write(tmp_path / "frame.json", shapes), LABELS)
  assert mask.dtype == np.uint8 and IGNORE == 255
  assert mask[10, 10] == 1 and mask[30, 30] == IGNORE and mask[45, 45] == IGNORE
  assert mask[55, 55] == 2 and mask[5, 70] == 0
  assert set(np.unique(mask)) == {0, 1, 2, IGNORE}
  # The same shapes with __ignore__ first: the vein drawn later wins where they overlap.
  reordered = labelme.rasterize([shapes[1], shapes[0], shapes[2]], 64, 80, LABELS)
  assert reordered[30, 30] == 1 and reordered[45, 45] == IGNORE and reordered[55, 55] == 2


def test_ignore_label_mapped_to_a_class_is_that_class():
  shapes = [_shape("__ignore__", [[1, 1], [9, 9]], "rectangle")]
  assert labelme.rasterize(shapes, 16, 16, dict(LABELS, __ignore__=0)).max() == 0
  assert labelme.rasterize(shapes, 16, 16, dict(LABELS, __ignore__=2))[5, 5] == 2


def test_any_label_can_be_mapped_to_ignore():
  shapes = [_shape("vein", [[0, 0], [9, 9]], "rectangle"), _shape("unsure", [[5, 5], [12, 12]], "rectangle")]
  for value in ("ignore", IGNORE):  # the config's word, or the label itself (folder.label_map_of gives it)
    mask = labelme.rasterize(shapes, 16, 16, dict(LABELS, unsure=value))
    assert mask[2, 2] == 1 and mask[7, 7] == IGNORE and mask[14, 14] == 0


def test_a_class_colliding_with_the_ignore_label_is_rejected():
  shapes = [_shape("vein", [[0, 0], [9, 9]], "rectangle")]
  with pytest.raises(ValueError, match=r"labelme_labels.*'vein'.*'255'.*reserved"):
    labelme.rasterize(shapes, 16, 16, {"vein": "255"})
  with pytest.raises(ValueError, match=r"labelme_labels.*'vein'.*300.*0\.\.254"):
    labelme.rasterize(shapes, 16, 16, {"vein": 300})
