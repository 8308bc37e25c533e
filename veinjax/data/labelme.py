"""Rasterising Labelme JSON annotations into class-index masks, exactly as Labelme's own export does.

A Labelme file (https://github.com/wkentaro/labelme) lists `shapes`, each with a `label`, a `shape_type` and
`points` in image pixel coordinates (x right, y down). Supported shape types, drawn as Labelme's
`shapes_to_label` (the rasteriser of its labelme2voc export) draws them, with PIL and the outline included:

- `polygon` (3 or more points; also a shape without `shape_type`, as in old Labelme files),
- `rectangle` (two opposite corners; four corners are treated as a polygon),
- `oriented_rectangle` (its four corners, a polygon),
- `circle` (the centre, then a point on the circle),
- `line` (its two ends) and `linestrip` (2 or more points): `LINE_WIDTH` (10) pixels wide, a line strip's
  joints rounded,
- `point` (one point): a disk of radius `POINT_RADIUS` (5).

Labelme's `mask` shapes (its AI masks) and `points` shapes are rejected: convert them to polygons in Labelme,
or provide a mask PNG instead. Shapes are drawn in file order, so a later shape overwrites an earlier one
where they overlap (as in Labelme's own export); the rest of the image is class 0 (background).
tests/labelme_test.py holds this pixel for pixel against masks made by Labelme itself
(tests/fixtures/make_labelme_fixture.py).

Every label must be mapped to a class by the caller's `label_map` (config.dataset.labelme_labels, e.g.
{"vein": 1}); an unmapped label is an error naming the file, the label and that flag, never background. The
one exception is labelme2voc's `__ignore__` label: unless `label_map` maps it, its shapes are drawn with
`IGNORE_LABEL` (255, the value labelme2voc's uint8 class PNGs hold for it), the pixels that count in no loss
and no metric (`veinjax.labels`). Like any shape, an `__ignore__` shape overwrites earlier shapes and is
overwritten by later ones.
"""

import json
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from PIL import ImageDraw

from veinjax.data.decode import BadExampleError
from veinjax import labels
from veinjax.labels import IGNORE_LABEL, LABELME_IGNORE

PathLike = Union[str, Path]

_LABELS_FLAG = "--config.dataset.labelme_labels"
# Labelme's shape_to_mask defaults: the width of lines and line strips, the radius of points, in pixels.
LINE_WIDTH = 10
POINT_RADIUS = 5
SHAPE_TYPES = ("polygon", "rectangle", "oriented_rectangle", "circle", "line", "linestrip", "point")


def _points(shape: dict, index: int, source: str) -> list:
  try:
    points = [(float(x), float(y)) for x, y in shape["points"]]
  except (KeyError, TypeError, ValueError):
    raise BadExampleError(f"{source}: shape {index} (label {shape.get('label')!r}) has no valid 'points' "
                          f"list of [x, y] pairs; fix or delete the shape in Labelme.") from None
  return points


def rasterize(shapes: Sequence[dict], height: int, width: int, label_map: Mapping[str, int],
              source: str = "<labelme>") -> np.ndarray:
  """Draws Labelme shapes into a uint8 [height, width] class mask.

  Args:
    shapes: the `shapes` list of a Labelme file.
    height, width: mask size (the image's).
    label_map: label name -> class index (0..254; 0 is background), or `IGNORE_LABEL` / "ignore".
      `__ignore__` maps to `IGNORE_LABEL` unless listed.
    source: the file name, for error messages.

  Returns:
    uint8 [height, width]; 0 where no shape covers a pixel, `IGNORE_LABEL` where an ignored one does.
  """
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  for index, shape in enumerate(shapes):
    if not isinstance(shape, dict):
      raise BadExampleError(f"{source}: shape {index} is not a JSON object; is this a Labelme file?")
    label = shape.get("label")
    if label == LABELME_IGNORE and label not in label_map:
      value = IGNORE_LABEL
    elif label not in label_map:
      raise BadExampleError(
          f"{source}: Labelme label {label!r} (shape {index}) is not mapped to a class by "
          f"{_LABELS_FLAG} (now {dict(label_map)}). Add it in your config file, e.g. "
          f"config.dataset.labelme_labels = {dict(label_map, **{label: 1})!r} ({_LABELS_FLAG}.<label>=N "
          f"on the command line changes only labels already listed; 'ignore' excludes its pixels from "
          f"training and metrics), or rename the label in Labelme.")
    elif label_map[label] == IGNORE_LABEL:  # as folder.label_map_of gives "ignore"
      value = IGNORE_LABEL
    else:
      value = labels.parse_class(label_map[label], _LABELS_FLAG, f"label {label!r}")
    shape_type = shape.get("shape_type") or "polygon"
    points = _points(shape, index, source)
    if shape_type == "rectangle" and len(points) == 4:
      shape_type = "polygon"
    if shape_type not in SHAPE_TYPES:
      raise BadExampleError(
          f"{source}: shape {index} (label {label!r}) has shape_type {shape_type!r}, which veinjax does not "
          f"rasterise; supported: {', '.join(SHAPE_TYPES)}. Redraw it as a polygon in Labelme, "
          f"or provide a mask PNG instead.")
    # The calls and arithmetic of Labelme's shape_to_mask, so that every pixel agrees.
    if shape_type == "polygon":
      if len(points) < 3:
        raise BadExampleError(f"{source}: polygon {index} (label {label!r}) has {len(points)} points; "
                              f"a polygon needs at least 3.")
      draw.polygon(points, fill=value, outline=value)
    elif shape_type == "oriented_rectangle":
      if len(points) != 4:
        raise BadExampleError(f"{source}: oriented_rectangle {index} (label {label!r}) has {len(points)} "
                              f"points; expected its 4 corners.")
      draw.polygon(points, fill=value, outline=value)
    elif shape_type == "rectangle":
      if len(points) != 2:
        raise BadExampleError(f"{source}: rectangle {index} (label {label!r}) has {len(points)} points; "
                              f"expected 2 opposite corners.")
      (x0, y0), (x1, y1) = points
      draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value, outline=value)
    elif shape_type == "circle":
      if len(points) != 2:
        raise BadExampleError(f"{source}: circle {index} (label {label!r}) has {len(points)} points; "
                              f"expected the centre and a point on the circle.")
      (cx, cy), (px, py) = points
      r = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)  # as Labelme computes it (not math.hypot)
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    elif shape_type == "line":
      if len(points) != 2:
        raise BadExampleError(f"{source}: line {index} (label {label!r}) has {len(points)} points; "
                              f"expected its 2 ends.")
      draw.line(points, fill=value, width=LINE_WIDTH)
    elif shape_type == "linestrip":
      if len(points) < 2:
        raise BadExampleError(f"{source}: linestrip {index} (label {label!r}) has {len(points)} points; "
                              f"a line strip needs at least 2.")
      draw.line(points, fill=value, width=LINE_WIDTH, joint="curve")
    else:  # point
      if len(points) != 1:
        raise BadExampleError(f"{source}: point {index} (label {label!r}) has {len(points)} points; "
                              f"expected 1.")
      (cx, cy), = points
      draw.ellipse([cx - POINT_RADIUS, cy - POINT_RADIUS, cx + POINT_RADIUS, cy + POINT_RADIUS], fill=value,
                   outline=value)
  return np.asarray(canvas, dtype=np.uint8).copy()


def read_labelme(path: PathLike, label_map: Mapping[str, int],
                 image_size: Optional[Tuple[int, int]] = None, image_path: Optional[PathLike] = None
                 ) -> np.ndarray:
  """Reads a Labelme JSON file into a uint8 [H, W] class mask.

  Args:
    path: the JSON file.
    label_map: label name -> class index.
    image_size: (height, width) of the image it annotates; the file's imageHeight/imageWidth must agree.
      Required when the file does not state them.
    image_path: the image file, named in the size-mismatch error.
  """
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise BadExampleError(f"Labelme file not found: {path}") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise BadExampleError(f"cannot read Labelme file {path}: {e}. The file is corrupt or truncated; "
                          f"re-save it from Labelme.") from None
  if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
    raise BadExampleError(f"{path} is not a Labelme annotation file (no 'shapes' list).")
  stated = (data.get("imageHeight"), data.get("imageWidth"))
  if image_size is None:
    if None in stated:
      raise BadExampleError(f"{path}: no imageHeight/imageWidth, so the mask size is unknown.")
    image_size = (int(stated[0]), int(stated[1]))
  elif None not in stated and (int(stated[0]), int(stated[1])) != tuple(image_size):
    raise BadExampleError(
        f"size mismatch: Labelme file {path} was made for a {stated[1]}x{stated[0]} (WxH) image, but image "
        f"{image_path or '(its image)'} is {image_size[1]}x{image_size[0]}. Re-annotate the resized image, or "
        f"use the original one.")
  return rasterize(data["shapes"], image_size[0], image_size[1], label_map, source=str(path))
