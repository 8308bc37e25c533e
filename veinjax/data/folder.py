"""The folder dataset: users' own ultrasound images with mask PNGs or Labelme JSON, loaded into memory.

Layouts (ROOT = config.dataset.root):

  ROOT/train/images/*, ROOT/test/images/* and optionally ROOT/validation/images/*   (split folders), or
  ROOT/images/*                                  (one folder; `veinjax.data.sources` splits it by seed)

For each image `<dir>/images/<stem>.<ext>` (PNG, JPEG, BMP, TIFF) the label is either the mask
`<dir>/masks/<stem>.png` or the Labelme file `<dir>/images/<stem>.json` beside the image. If both exist the
mask PNG is used (and logged). Mask values are mapped to classes by config.dataset.mask_values ("0:0,255:1");
Labelme labels by config.dataset.labelme_labels ({"vein": 1}). Anything unmapped is an error, never background.

Ignored pixels (`veinjax.labels.IGNORE_LABEL`, 255 in the class masks: no loss, no metric): a mask value
mapped to `ignore` ("0:0,255:1,128:ignore"), a Labelme label mapped to "ignore", and Labelme's `__ignore__`
label unless labelme_labels maps it to a class. Classes are 0..254, so none collides with it.

Bad examples (undecodable file, missing label, image/label size mismatch, unmapped value or label) raise
`BadExampleError` naming the file(s) and the fix, or, with config.dataset.on_bad_example="skip", are skipped:
each one is logged, then their count. `check_files` finds every one of these in a whole split, the images
checked from their headers only, so that training checks every split before its first step (a bad test
file would otherwise surface only in eval.py, after training).

16-bit grayscale images become 8 bits by config.dataset.high_bit_depth (`veinjax.data.decode`).
"""

import dataclasses
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

from absl import logging
import numpy as np

from veinjax import labels as labels_lib
from veinjax.data import decode
from veinjax.data import labelme
from veinjax.data.decode import BadExampleError
from veinjax.labels import IGNORE_LABEL, IGNORE_NAME

PathLike = Union[str, Path]

SPLIT_FOLDERS = ("train", "validation", "test")
SINGLE = "all"  # The key of the one image list of a single-folder layout.
_ROOT_FLAG = "--config.dataset.root"
_MASK_FLAG = "--config.dataset.mask_values"


def parse_mask_values(spec: str) -> Dict[int, int]:
  """Parses config.dataset.mask_values, "value:class,value:class", into {value: class}.

  A class is 0..254 or `ignore` (-> IGNORE_LABEL), e.g. "0:0,255:1,128:ignore".
  """
  mapping = {}
  try:
    for item in str(spec).split(","):
      if not item.strip():
        continue
      value, cls = item.split(":")
      value = int(value)
      if value < 0:
        raise ValueError(f"{item!r} is out of range")
      try:
        cls = labels_lib.parse_class(cls, _MASK_FLAG, f"value {value}")
      except ValueError as e:
        raise ValueError(f"{item!r}: {str(e).split(': ', 1)[-1].rstrip('.')}") from None
      if value in mapping and mapping[value] != cls:
        raise ValueError(f"value {value} is mapped twice")
      mapping[value] = cls
  except ValueError as e:
    raise ValueError(f"{_MASK_FLAG}={spec!r} is not a list of 'value:class' pairs of non-negative integers "
                     f"({e}); e.g. '0:0,255:1' for 0/255 masks, '0:0,1:1,2:2' for index masks, "
                     f"'0:0,255:1,128:{IGNORE_NAME}' to ignore the pixels of value 128.") from None
  if not mapping:
    raise ValueError(f"{_MASK_FLAG} is empty; list every mask value, e.g. '0:0,255:1'.")
  return mapping


def label_map_of(labels) -> Dict[str, int]:
  """config.dataset.labelme_labels (a dict or ConfigDict) as a plain {label: class} dict, validated.

  A class is 0..254 or "ignore" (-> IGNORE_LABEL).
  """
  labels = labels.to_dict() if hasattr(labels, "to_dict") else dict(labels or {})
  return {str(name): labels_lib.parse_class(cls, "--config.dataset.labelme_labels", repr(name))
          for name, cls in labels.items()}


def find_layout(root: PathLike) -> Dict[str, Path]:
  """The images folders under ROOT: {split: folder} for split folders, {"all": ROOT/images} for one folder."""
  if not str(root):
    raise ValueError(f"the folder dataset needs its root: set {_ROOT_FLAG}=/path/to/data (holding "
                     f"train/images and test/images, or a single images/ folder).")
  root = Path(root).expanduser()
  if not root.is_dir():
    raise ValueError(f"{_ROOT_FLAG}={root} is not a folder; point it at your dataset (holding train/images and "
                     f"test/images, or a single images/ folder).")
  splits = {s: root / s / "images" for s in SPLIT_FOLDERS if (root / s / "images").is_dir()}
  single = root / "images"
  if splits and single.is_dir():
    raise ValueError(f"{root} has both {single} and split folders ({', '.join(sorted(splits))}); keep one "
                     f"layout: either ROOT/images or ROOT/<split>/images.")
  if single.is_dir():
    return {SINGLE: single}
  if not splits:
    raise ValueError(f"no images folder under {_ROOT_FLAG}={root}: expected {root}/train/images and "
                     f"{root}/test/images (optionally {root}/validation/images), or {root}/images.")
  if "train" not in splits:
    raise ValueError(f"{root} has split folders ({', '.join(sorted(splits))}) but no train/images.")
  return splits


def list_images(images_dir: Path) -> List[Path]:
  """The image files of a folder, sorted by name. Empty folders and clashing stems are errors."""
  files = sorted(p for p in images_dir.iterdir()
                 if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in decode.IMAGE_EXTENSIONS)
  if not files:
    raise ValueError(f"no images in {images_dir} (looked for {', '.join(decode.IMAGE_EXTENSIONS)} files); "
                     f"add images or fix {_ROOT_FLAG}.")
  stems = {}
  for p in files:
    if p.stem in stems:
      raise ValueError(f"{stems[p.stem]} and {p} have the same name stem, so their masks/labels would clash; "
                       f"rename one of them.")
    stems[p.stem] = p
  return files


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """How labels become classes: mask PNG values and Labelme label names."""
  mask_values: Mapping[int, int]
  labelme_labels: Mapping[str, int]


def label_spec(dataset_config) -> LabelSpec:
  return LabelSpec(parse_mask_values(dataset_config.mask_values), label_map_of(dataset_config.labelme_labels))


def _map_mask(values: np.ndarray, mapping: Mapping[int, int], path: Path) -> np.ndarray:
  """Maps stored mask values to classes with a lookup table; any value not in `mapping` is an error."""
  size = max(int(values.max()), max(mapping)) + 1
  lut = np.full(size, -1, dtype=np.int16)
  for value, cls in mapping.items():
    lut[value] = cls
  mapped = lut[values]
  if (mapped < 0).any():
    bad = np.unique(values[mapped < 0])
    shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
    raise BadExampleError(
        f"mask {path} contains value(s) {shown} that {_MASK_FLAG}={format_mask_values(mapping)!r} does not "
        f"map to a class; add them, e.g. {_MASK_FLAG}='{format_mask_values(mapping)},{bad[0]}:1' (or "
        f"'{bad[0]}:{IGNORE_NAME}' to ignore those pixels, or fix the mask). Masks are read as stored: palette "
        f"PNGs give their indices, not colours.")
  return mapped.astype(np.uint8)


def format_mask_values(mapping: Mapping[int, int]) -> str:
  return ",".join(f"{v}:{IGNORE_NAME if c == IGNORE_LABEL else c}" for v, c in sorted(mapping.items()))


def label_paths(image_path: Path) -> Tuple[Path, Path]:
  """Where an image's label may be: (<dir>/masks/<stem>.png, <dir>/images/<stem>.json)."""
  return image_path.parent.parent / "masks" / f"{image_path.stem}.png", image_path.with_suffix(".json")


def load_example(image_path: Path, spec: LabelSpec, high_bit_depth: str = "auto") -> Dict[str, object]:
  """Reads one image and its label -> {'image': uint8 [H, W, 1|3], 'mask': uint8 [H, W], 'id': stem}."""
  image = decode.read_image(image_path, high_bit_depth)
  height, width = image.shape[:2]
  return {"image": image, "mask": _read_label(image_path, spec, height, width), "id": image_path.stem}


def _read_label(image_path: Path, spec: LabelSpec, height: int, width: int, log: bool = True) -> np.ndarray:
  """The class mask of the image at `image_path` (of size height x width) from its mask PNG or Labelme JSON."""
  mask_path, json_path = label_paths(image_path)
  if mask_path.is_file():
    if json_path.is_file() and log:
      logging.info("%s: both %s and %s exist; using the mask PNG.", image_path, mask_path, json_path)
    mask = _map_mask(decode.read_mask(mask_path), spec.mask_values, mask_path)
    if mask.shape != (height, width):
      raise _size_mismatch(image_path, (width, height), mask_path, (mask.shape[1], mask.shape[0]))
  elif json_path.is_file():
    mask = labelme.read_labelme(json_path, spec.labelme_labels, image_size=(height, width),
                                image_path=image_path)
  else:
    raise _no_label(image_path, mask_path, json_path)
  return mask


def _size_mismatch(image_path: Path, image_size, mask_path: Path, mask_size) -> BadExampleError:
  return BadExampleError(
      f"size mismatch: image {image_path} is {image_size[0]}x{image_size[1]} (WxH) but its mask {mask_path} is "
      f"{mask_size[0]}x{mask_size[1]}; a mask must have its image's size (re-export one of them).")


def _no_label(image_path: Path, mask_path: Path, json_path: Path) -> BadExampleError:
  return BadExampleError(
      f"image {image_path} has no label: looked for the mask {mask_path} and the Labelme file {json_path}. "
      f"Annotate it, or remove it (or set --config.dataset.on_bad_example=skip).")


def check_files(image_paths: Sequence[Path], spec: LabelSpec, split: str) -> None:
  """Checks a split before training without decoding its images: every image decodes (from its headers:
  `decode.check_file`), every label is read as `load_example` reads it (mask PNG: decoded, its values
  mapped, its size that of the image; Labelme JSON: parsed, its labels mapped). The first bad example
  raises `BadExampleError` naming the file and the split."""
  for image_path in image_paths:
    try:
      width, height = decode.check_file(image_path, "image")
      _read_label(image_path, spec, height, width, log=False)
    except BadExampleError as e:
      raise BadExampleError(f"the {split!r} split of the folder dataset has a bad example (checked before "
                            f"training): {e}") from None


def load_examples(image_paths: Sequence[Path], spec: LabelSpec, on_bad_example: str = "error",
                  what: str = "folder dataset", high_bit_depth: str = "auto") -> List[Dict[str, object]]:
  """Loads examples in order. on_bad_example: "error" raises on the first bad one; "skip" logs and skips.
  high_bit_depth: how 16-bit grayscale images become 8 bits (`veinjax.data.decode.HIGH_BIT_DEPTHS`)."""
  if on_bad_example not in ("error", "skip"):
    raise ValueError(f"--config.dataset.on_bad_example={on_bad_example!r}; valid: 'error', 'skip'.")
  decode.check_high_bit_depth(high_bit_depth)
  examples, skipped = [], []
  for path in image_paths:
    try:
      examples.append(load_example(path, spec, high_bit_depth))
    except BadExampleError as e:
      if on_bad_example == "error":
        raise
      logging.warning("Skipping bad example %s: %s", path, e)
      skipped.append(path)
  if skipped:
    logging.warning("Skipped %d of %d examples of the %s (on_bad_example=skip).", len(skipped),
                    len(image_paths), what)
  if not examples:
    raise ValueError(f"every example of the {what} is bad ({len(skipped)} skipped); see the log.")
  return examples


def num_classes(spec: LabelSpec) -> int:
  """Classes including background: one more than the largest class any mask value or label maps to (the
  ignore label is no class)."""
  classes = [c for c in list(spec.mask_values.values()) + list(spec.labelme_labels.values())
             if c != IGNORE_LABEL]
  return 1 + max(classes, default=0)
