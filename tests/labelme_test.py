"""Labelme rasterisation against known areas and against Labelme's own export, label mapping, rejected shapes
and bad files."""

import base64
import json
import math
import pathlib
import shutil

import numpy as np
from PIL import Image
import pytest

from veinjax import labels
from veinjax.data import folder
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


def test_lines_and_points_are_drawn_as_labelme_draws_them():
  # Labelme's export draws lines and line strips 10 px wide and points as disks of radius 5 (the fixture test
  # below holds them pixel for pixel); here only their size.
  line = labelme.rasterize([_shape("vein", [[10, 20], [50, 20]], "line")], 64, 80, LABELS)
  assert labelme.LINE_WIDTH == 10 and labelme.POINT_RADIUS == 5
  assert set(np.unique(line)) == {0, 1} and int(line[:, 30].sum()) in (10, 11)
  strip = labelme.rasterize([_shape("artery", [[10, 10], [40, 10], [40, 50]], "linestrip")], 64, 80, LABELS)
  assert strip[10, 25] == 2 and strip[30, 40] == 2 and strip[30, 20] == 0
  point = labelme.rasterize([_shape("vein", [[40, 32]], "point")], 64, 80, LABELS)
  _assert_area(point, math.pi * 5**2, 2 * math.pi * 5)
  assert point[32, 40] == 1 and point[32, 47] == 0


@pytest.mark.parametrize("shape_type,points", [("mask", [[1, 1], [5, 5]]), ("points", [[1, 1], [5, 5]]),
                                               ("ellipse", [[1, 1], [5, 5]])])
def test_unsupported_shape_types_are_rejected(tmp_path, shape_type, points):
  path = _write(tmp_path / "f.json", [_shape("vein", points, shape_type)])
  with pytest.raises(BadExampleError, match=rf"f\.json.*{shape_type}.*does not rasterise.*supported: polygon"):
    labelme.read_labelme(path, LABELS)


@pytest.mark.parametrize("shape_type,points,expected", [
    ("line", [[1, 1], [5, 5], [9, 1]], "expected its 2 ends"), ("linestrip", [[1, 1]], "at least 2"),
    ("point", [[1, 1], [5, 5]], "expected 1"), ("oriented_rectangle", [[1, 1], [5, 5], [9, 1]], "4 corners"),
    ("circle", [[1, 1]], "centre and a point"), ("rectangle", [[1, 1], [5, 5], [9, 1]], "2 opposite corners")])
def test_wrong_point_counts_are_rejected(tmp_path, shape_type, points, expected):
  path = _write(tmp_path / "f.json", [_shape("vein", points, shape_type)])
  with pytest.raises(BadExampleError, match=rf"f\.json: {shape_type} 0 \(label 'vein'\).*{expected}"):
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


# ---- Agreement with Labelme's own export (tests/fixtures/make_labelme_fixture.py) ----
# Each fixture is a Labelme file written by Labelme and the class mask Labelme's labelme2voc conventions make
# of it (labels.txt: __ignore__ -1 -> 255, _background_ 0, then the classes), made by the labelme version in
# fixture.json. veinjax must give the same mask, pixel for pixel, through its folder dataset and its reader.

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "labelme"
FIXTURE_META = json.loads((FIXTURES / "fixture.json").read_text())


def _labelme2voc_labels():
  """labels.txt as the folder dataset's labelme_labels: every class but __ignore__, which is its default."""
  names = (FIXTURES / "labels.txt").read_text().split()
  assert names[:2] == ["__ignore__", "_background_"]
  return folder.label_map_of({name: i - 1 for i, name in enumerate(names) if i > 0})


def _expected(case):
  with Image.open(FIXTURES / f"{case}.expected.png") as image:
    assert image.mode == "P"  # labelme2voc's lblsave: palette indices are the classes
    return np.asarray(image).copy()


@pytest.mark.parametrize("case", sorted(FIXTURE_META["cases"]))
def test_agrees_with_labelmes_own_export(tmp_path, case):
  data = json.loads((FIXTURES / f"{case}.json").read_text())
  assert data["version"] == FIXTURE_META["labelme"]  # written by the labelme that made the expected mask
  expected = _expected(case)
  meta = FIXTURE_META["cases"][case]
  assert expected.shape == (meta["height"], meta["width"]) == (data["imageHeight"], data["imageWidth"])
  values, counts = np.unique(expected, return_counts=True)
  assert {str(v): int(c) for v, c in zip(values, counts)} == meta["pixels_per_class"]
  label_map = _labelme2voc_labels()

  # Through the folder dataset, as training reads it: images/<stem>.<ext> with <stem>.json beside it.
  images = tmp_path / "images"
  images.mkdir()
  if data["imageData"] is None:
    image_path = images / data["imagePath"]
    shutil.copy(FIXTURES / data["imagePath"], image_path)
  else:  # the image is embedded; give the folder dataset the same picture beside the file
    image_path = images / f"{case}.png"
    image_path.write_bytes(base64.b64decode(data["imageData"]))
  shutil.copy(FIXTURES / f"{case}.json", image_path.with_suffix(".json"))
  spec = folder.LabelSpec(folder.parse_mask_values("0:0,255:1"), label_map)
  example = folder.load_example(image_path, spec)
  assert example["image"].shape[:2] == expected.shape
  assert example["mask"].dtype == np.uint8
  np.testing.assert_array_equal(example["mask"], expected)

  # The reader on its own, the size from the file.
  np.testing.assert_array_equal(labelme.read_labelme(FIXTURES / f"{case}.json", label_map), expected)


def test_labelme_fixtures_cover_what_they_claim():
  shape_types, labels_used, group_ids = set(), set(), set()
  for case in FIXTURE_META["cases"]:
    shapes = json.loads((FIXTURES / f"{case}.json").read_text())["shapes"]
    shape_types |= {s["shape_type"] for s in shapes}
    labels_used |= {s["label"] for s in shapes}
    group_ids |= {s["group_id"] for s in shapes}
  assert shape_types == set(labelme.SHAPE_TYPES)
  assert len(group_ids - {None}) >= 2
  assert labels_used == set((FIXTURES / "labels.txt").read_text().split())
  sizes = {(m["height"], m["width"]) for m in FIXTURE_META["cases"].values()}
  assert (40, 56) in sizes and (48, 48) in sizes
  assert any(str(IGNORE) in m["pixels_per_class"] for m in FIXTURE_META["cases"].values())
  # Both ways Labelme stores the image: embedded as imageData, and beside the file.
  embedded = {json.loads((FIXTURES / f"{case}.json").read_text())["imageData"] is None
              for case in FIXTURE_META["cases"]}
  assert embedded == {True, False}
