"""The single entry point to veinjax's datasets: raw (unaugmented, unresized) examples of one split.

  load_raw_split(config, split) -> tf.data.Dataset of {'image': uint8 [H, W, config.in_channels],
                                                       'mask': uint8 [H, W] class indices, 'id': tf.string}
  num_examples(config, split) -> int
  has_own_validation(config) -> bool   (a validation split not carved from train: a folder's validation/)
  check_files(config) -> None   (every split's examples, cheaply, before training: `folder` only)
  num_classes(config) -> int   (including background: 2 for a binary vein mask)
  foreground_name(config) -> str   ("Vein", "Vessel", ...: what the foreground IoU and Dice measure)

Datasets (config.dataset.name): `vein_phantom` (TFDS, generated locally), `usgra_seg` (TFDS, from a clone
given by config.dataset.root), `folder` (the user's own folder, loaded into memory; no TFDS),
`vein_phantom_random` (TFDS, the domain-randomised phantom, generated locally; the phantom_* fields as for
`vein_phantom`, config.dataset.phantom_foreground "vessel" (default) or "vein", and for ablations
config.dataset.phantom_random_off, randomisation groups switched off, e.g. "gain,speckle", and
config.dataset.phantom_random_settings, ranges changed, e.g. "lumen_echo=0:0.5"). 16-bit grayscale
files of a `folder` dataset become 8 bits by config.dataset.high_bit_depth (`veinjax.data.decode`).

Splits: "train", "validation", "test". A dataset without a validation split gets one carved from train,
deterministically by config.seed, of config.dataset.validation_fraction of the train examples (train then
excludes them); validation_fraction=0 means there is none. A single-folder `folder` dataset is first split
into train/test by config.dataset.test_fraction the same way. Order is deterministic (the file / generation
order); images may differ in size between examples, the input pipeline resizes them.

Splits by subject (`folder` only): config.dataset.group_pattern, a regular expression searched in each file
name (e.g. r"^(patient\d+)_"), names the file's group (its first capture group, or the whole match when it
has none); test_fraction and validation_fraction then hold out whole groups (`holdout_groups`), so no group
(patient, clip) is in two carved splits. A file name it does not match is an error naming the file and the
flag. The run logs how many groups and examples each split has. Empty (the default, or absent from the
config): examples are held out one by one, exactly as without the field.

Channels: config.in_channels=1 gives 8-bit grayscale (colour converted with the ITU-R 601 luma weights,
0.299 R + 0.587 G + 0.114 B, rounded, as the paper's grayscale input), 3 gives RGB (grayscale replicated).
"""

import dataclasses
import functools
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from veinjax.data import SPLITS
from veinjax.data.splits import GROUP_FLAG as _GROUP_FLAG
from veinjax.data.splits import group_of, group_pattern as _group_pattern, group_pattern_text as _group_pattern_text
from veinjax.data.splits import holdout, holdout_groups, holdout_items as _holdout

# Salts of the seeded hold-outs, so the test and validation draws are independent of each other.
_TEST_SALT, _VALIDATION_SALT = 1, 2
# (root, group_pattern, seed, fractions, split sizes) of the splits whose group counts were logged already.
_LOGGED_GROUPS = set()


def _check_config(config, split: str) -> None:
  name = get_source(config).name
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits: {', '.join(SPLITS)}.")
  if config.in_channels not in (1, 3):
    raise ValueError(f"--config.in_channels={config.in_channels}; valid: 1 (grayscale) or 3 (RGB).")
  if config.dataset.on_bad_example not in ("error", "skip"):
    raise ValueError(f"--config.dataset.on_bad_example={config.dataset.on_bad_example!r}; valid: error, skip.")
  if _group_pattern_text(config) and name != "folder":
    raise ValueError(f"{_GROUP_FLAG}={_group_pattern_text(config)!r} splits the folder dataset by subject; "
                     f"dataset {name!r} has its own splits. Set it to '' (or use --config.dataset.name=folder).")
  _high_bit_depth(config)


def _high_bit_depth(config) -> str:
  """config.dataset.high_bit_depth, validated; "auto" where a config (an older config.json) has none."""
  from veinjax.data import decode  # pylint: disable=g-import-not-at-top
  return decode.check_high_bit_depth(config.dataset.get("high_bit_depth", "auto"))


class _NoSplitError(ValueError):
  """The dataset has no such split."""


def _no_split_error(config, split: str, why: str) -> ValueError:
  fix = ("set --config.dataset.validation_fraction (e.g. 0.1) to carve one from train"
         if split == "validation" else "set --config.dataset.test_fraction (e.g. 0.2) or add a test/ folder")
  return _NoSplitError(f"dataset {config.dataset.name!r} has no {split!r} split ({why}); {fix}, or evaluate on "
                    f"another split (--config.eval_split).")


# ---- Which examples: (base split of the underlying dataset, boolean selection over it or None = all) ----


def _carve(config, split: str, base_splits: Dict[str, int],
           groups: Optional[Dict[str, Sequence[str]]] = None) -> Tuple[str, Optional[np.ndarray]]:
  """Maps a split to (underlying split, selection). base_splits: underlying split -> example count.

  groups: underlying split -> each example's group (`group_of`); validation is then carved by whole groups.
  """
  if split == "test":
    if "test" not in base_splits:
      raise _no_split_error(config, split, "it has none")
    return "test", None
  if "validation" in base_splits:  # The dataset's own validation split: nothing to carve.
    return split, None
  val = _holdout(base_splits["train"], config.dataset.validation_fraction, config.seed, _VALIDATION_SALT,
                 "--config.dataset.validation_fraction", None if groups is None else groups["train"])
  if split == "validation":
    if not val.any():
      raise _no_split_error(config, split, "none is provided and --config.dataset.validation_fraction=0")
    return "train", val
  return "train", (~val if val.any() else None)


# ---- TFDS datasets ----


def _phantom_builder(config):
  # TFDS is imported only when a TFDS dataset is used.
  from veinjax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  ds = config.dataset
  builder = tfds_builders.phantom_builder(ds.data_dir, ds.phantom_size, ds.phantom_num_train, ds.phantom_num_test)
  tfds_builders.prepare(builder)
  return builder


def _usgra_builder(config):
  from veinjax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  builder = tfds_builders.usgra_builder(config.dataset.data_dir, config.dataset.usgra_config)
  tfds_builders.prepare(builder, manual_dir=config.dataset.root)
  return builder


def _random_phantom_foreground(config) -> str:
  """config.dataset.phantom_foreground, "vessel" where the config has no such field."""
  return config.dataset.get("phantom_foreground", "vessel")


def _random_phantom_groups_off(config) -> List[str]:
  """config.dataset.phantom_random_off ("gain,speckle": randomisation groups switched off), [] if absent."""
  return [g.strip() for g in config.dataset.get("phantom_random_off", "").split(",") if g.strip()]


def _random_phantom_builder(config):
  from veinjax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  ds = config.dataset
  builder = tfds_builders.random_phantom_builder(ds.data_dir, ds.phantom_size, ds.phantom_num_train,
                                                 ds.phantom_num_test, _random_phantom_foreground(config),
                                                 _random_phantom_groups_off(config),
                                                 config.dataset.get("phantom_random_settings", ""))
  tfds_builders.prepare(builder)
  return builder


def _tfds_split(make_builder, config, split: str):
  from veinjax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  builder = make_builder(config)
  counts = {name: info.num_examples for name, info in builder.info.splits.items()}
  base, selection = _carve(config, split, counts)
  ds = tfds_builders.read_split(builder, base)
  if selection is not None:
    keep = tf.constant(selection)

    # Traced as written (these and `finish` below branch on no tensor), without AutoGraph's source conversion:
    # it costs about a second of CPU at every fresh start (as pipeline._no_autograph says).
    @tf.autograph.experimental.do_not_convert
    def selected(index, example):
      del example
      return tf.gather(keep, index)

    @tf.autograph.experimental.do_not_convert
    def drop_index(index, example):
      del index
      return example

    ds = ds.enumerate().filter(selected).map(drop_index)
  count = int(selection.sum()) if selection is not None else counts[base]
  return ds, count


# ---- Folder dataset ----


def _folder_split_files(config, split: str) -> List[Path]:
  from veinjax.data import folder  # pylint: disable=g-import-not-at-top
  layout = folder.find_layout(config.dataset.root)
  pattern = _group_pattern(config)
  if folder.SINGLE in layout:
    files = folder.list_images(layout[folder.SINGLE])
    test = _holdout(len(files), config.dataset.test_fraction, config.seed, _TEST_SALT,
                    "--config.dataset.test_fraction",
                    None if pattern is None else [group_of(f, pattern) for f in files])
    lists = {"train": [f for f, t in zip(files, test) if not t]}
    if test.any():
      lists["test"] = [f for f, t in zip(files, test) if t]
  else:
    lists = {name: folder.list_images(path) for name, path in layout.items()}
  groups = None if pattern is None else {k: [group_of(f, pattern) for f in v] for k, v in lists.items()}
  if groups is not None:
    _log_groups(config, layout, lists, groups)
  if split == "test" and "test" not in lists:
    why = ("--config.dataset.test_fraction=0" if folder.SINGLE in layout
           else f"no {Path(config.dataset.root) / 'test' / 'images'}")
    raise _no_split_error(config, split, why)
  base, selection = _carve(config, split, {k: len(v) for k, v in lists.items()}, groups)
  files = lists[base]
  return files if selection is None else [f for f, s in zip(files, selection) if s]


def _log_groups(config, layout: Dict[str, Path], lists: Dict[str, List[Path]],
                groups: Dict[str, List[str]]) -> None:
  """Logs, once per split layout, how many groups and examples each split has, and warns when split
  folders the user made share a group (only the carved splits are kept apart by construction)."""
  from veinjax.data import folder  # pylint: disable=g-import-not-at-top
  counts = {k: len(v) for k, v in lists.items()}
  ds = config.dataset
  key = (str(ds.root), _group_pattern_text(config), int(config.seed), float(ds.test_fraction),
         float(ds.validation_fraction), tuple(sorted(counts.items())))
  if key in _LOGGED_GROUPS:
    return
  split_groups = {}
  for split in SPLITS:
    if split not in lists and not (split == "validation" and ds.validation_fraction > 0):
      continue  # no such split (its absence is an error only when it is asked for)
    base, selection = _carve(config, split, counts, groups)
    names = groups[base] if selection is None else [g for g, s in zip(groups[base], selection) if s]
    split_groups[split] = names
  _LOGGED_GROUPS.add(key)
  logging.info("Folder dataset split by subject (%s=%r): %s.", _GROUP_FLAG, _group_pattern_text(config),
               ", ".join(f"{split} {len(set(names))} group(s) / {len(names)} example(s)"
                         for split, names in split_groups.items()))
  if folder.SINGLE not in layout:
    folders = [split for split in SPLITS if split in lists]
    for i, a in enumerate(folders):
      for b in folders[i + 1:]:
        shared = sorted(set(groups[a]) & set(groups[b]))
        if shared:
          logging.warning("The %s/ and %s/ folders share %d group(s) under %s (%s%s): the split folders are "
                          "used as given, so these subjects are in both splits.", a, b, len(shared),
                          _GROUP_FLAG, ", ".join(shared[:5]), ", ..." if len(shared) > 5 else "")


def _stat_key(files: List[Path]) -> tuple:
  """Identifies the files' current contents cheaply (path, size, mtime), so edits invalidate the cache."""
  from veinjax.data import folder  # pylint: disable=g-import-not-at-top
  key = []
  for f in files:
    for p in (f,) + folder.label_paths(f):
      try:
        st = os.stat(p)
        key.append((str(p), st.st_size, st.st_mtime_ns))
      except OSError:
        key.append((str(p), None))
  return tuple(key)


@functools.lru_cache(maxsize=8)
def _load_folder_cached(key: tuple, files: tuple, mask_values: str, labelme_labels: tuple, on_bad: str,
                        what: str, high_bit_depth: str = "auto"):
  del key  # Only part of the cache key.
  from veinjax.data import folder  # pylint: disable=g-import-not-at-top
  spec = folder.LabelSpec(folder.parse_mask_values(mask_values), dict(labelme_labels))
  return folder.load_examples(list(files), spec, on_bad, what=what, high_bit_depth=high_bit_depth)


def _folder_examples(config, split: str) -> list:
  from veinjax.data import folder  # pylint: disable=g-import-not-at-top
  files = _folder_split_files(config, split)
  labels = tuple(sorted(folder.label_map_of(config.dataset.labelme_labels).items()))
  folder.parse_mask_values(config.dataset.mask_values)  # Fails early on a bad flag.
  return _load_folder_cached(_stat_key(files), tuple(files), str(config.dataset.mask_values), labels,
                             config.dataset.on_bad_example, f"folder dataset's {split!r} split",
                             _high_bit_depth(config))


def _check_folder_files(config) -> None:
  """Every split's examples are good (`folder.check_files`: images from their headers, labels read);
  nothing to check when bad examples are skipped anyway (on_bad_example=skip)."""
  from veinjax.data import folder  # pylint: disable=g-import-not-at-top
  if config.dataset.on_bad_example == "skip":
    return
  spec = folder.label_spec(config.dataset)
  for split in SPLITS:
    try:
      files = _folder_split_files(config, split)
    except _NoSplitError:
      continue
    folder.check_files(files, spec, split)


def _folder_dataset(examples: list) -> tf.data.Dataset:
  def gen():
    for ex in examples:
      yield {"image": ex["image"], "mask": ex["mask"], "id": ex["id"]}

  return tf.data.Dataset.from_generator(gen, output_signature={
      "image": tf.TensorSpec([None, None, None], tf.uint8),
      "mask": tf.TensorSpec([None, None], tf.uint8),
      "id": tf.TensorSpec([], tf.string),
  })


# ---- Public API ----


def to_channels(image: tf.Tensor, in_channels: int) -> tf.Tensor:
  """uint8 [H, W, 1 or 3] -> uint8 [H, W, in_channels]; RGB -> gray with the ITU-R 601 luma weights."""
  def gray():
    rgb = tf.cast(image, tf.int32)
    # Integer weights summing to 1000: exact for gray pixels stored as RGB, rounded to nearest.
    y = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000
    return tf.cast(y, tf.uint8)[..., None]

  channels = image.shape[-1]
  if in_channels == 1:
    if channels == 1:
      return image
    if channels == 3:
      return gray()
    return tf.cond(tf.shape(image)[-1] == 3, gray, lambda: image[..., :1])
  if channels == 3:
    return image
  if channels == 1:
    return tf.tile(image, [1, 1, 3])
  return tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])


# ---- The registry: one entry per source ----


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset source. Adding a source is adding one `Source` to `_SOURCES`.

  load: (config, split) -> (tf.data.Dataset of {'image' uint8 [H, W, C], 'mask' [H, W] or [H, W, 1],
    'id'}, its example count); the split's selection (carving) is the source's job.
  num_classes: config -> classes including background.
  foreground_name: config -> what the foreground IoU / Dice measure ("Vein", "Vessel", ...).
  check_files: config -> None, raising on a bad file of any split, cheaply (before training); None where
    a source has no files of the user's to check (generated or prepared datasets).
  """
  name: str
  load: Callable[..., Tuple[tf.data.Dataset, int]]
  num_classes: Callable[..., int]
  foreground_name: Callable[..., str]
  check_files: Optional[Callable[..., None]] = None


def _load_folder(config, split: str):
  examples = _folder_examples(config, split)
  return _folder_dataset(examples), len(examples)


def _folder_classes(config) -> int:
  from veinjax.data import folder  # pylint: disable=g-import-not-at-top
  return folder.num_classes(folder.label_spec(config.dataset))


def _folder_foreground(config) -> str:
  labels = [label for label, cls in dict(config.dataset.labelme_labels).items() if cls == 1]
  if _folder_classes(config) == 2 and len(labels) == 1:  # one named structure, e.g. {"vein": 1}
    return labels[0].capitalize()
  return "Foreground"


# usgra-seg configs: (classes including background, foreground name). A multi-class dataset reports the mean
# over its foreground classes, so it is called "Foreground".
_USGRA_CONFIGS = {"vessel": (2, "Vessel"), "nerve_vessel": (3, "Foreground")}


def _usgra_classes(config) -> Tuple[int, str]:
  if config.dataset.usgra_config not in _USGRA_CONFIGS:
    raise ValueError(f"--config.dataset.usgra_config={config.dataset.usgra_config!r}; valid: "
                     f"{', '.join(_USGRA_CONFIGS)}.")
  return _USGRA_CONFIGS[config.dataset.usgra_config]


_SOURCES = {source.name: source for source in (
    Source("vein_phantom", functools.partial(_tfds_split, _phantom_builder), lambda config: 2,
           lambda config: "Vein"),
    Source("folder", _load_folder, _folder_classes, _folder_foreground, _check_folder_files),
    Source("usgra_seg", functools.partial(_tfds_split, _usgra_builder), lambda config: _usgra_classes(config)[0],
           lambda config: _usgra_classes(config)[1]),
    Source("vein_phantom_random", functools.partial(_tfds_split, _random_phantom_builder), lambda config: 2,
           lambda config: _random_phantom_foreground(config).capitalize()),
)}
DATASETS = tuple(_SOURCES)


def get_source(config) -> Source:
  """The registry entry of `config.dataset.name` (a ValueError naming the flag and the valid names)."""
  if config.dataset.name not in _SOURCES:
    raise ValueError(f"--config.dataset.name={config.dataset.name!r} is not a dataset; valid: "
                     f"{', '.join(DATASETS)}.")
  return _SOURCES[config.dataset.name]


# ---- Public API ----


def load_raw_split(config, split: str) -> tf.data.Dataset:
  """Raw examples of `split`, in a deterministic order (see the module docstring)."""
  _check_config(config, split)
  ds, _ = get_source(config).load(config, split)
  in_channels = config.in_channels

  @tf.autograph.experimental.do_not_convert  # branches on static shapes only (see _tfds_split)
  def finish(ex):
    image = tf.ensure_shape(to_channels(ex["image"], in_channels), [None, None, in_channels])
    mask = ex["mask"]
    if mask.shape.rank == 3:
      mask = mask[:, :, 0]
    return {"image": image, "mask": mask, "id": ex["id"]}

  return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def num_examples(config, split: str) -> int:
  """How many examples load_raw_split(config, split) yields."""
  _check_config(config, split)
  return get_source(config).load(config, split)[1]


def has_own_validation(config) -> bool:
  """Whether the dataset has a validation split of its own (a folder dataset's validation/), rather than one
  carved from train by validation_fraction or none: only a carved one goes back into train when
  validation_fraction is 0 (a final fit, `veinjax.final_fit`)."""
  uncarved = config.copy_and_resolve_references()
  uncarved.dataset.validation_fraction = 0.0
  try:
    num_examples(uncarved, "validation")
  except _NoSplitError:
    return False
  return True


def check_files(config) -> None:
  """Checks every split's files before training, so that a bad file of, e.g., the test split stops the run
  before its first step rather than eval.py after it (`folder` datasets; a no-op for the others)."""
  _check_config(config, "train")
  source = get_source(config)
  if source.check_files is not None:
    source.check_files(config)


def num_classes(config) -> int:
  """Classes including background (2 for binary vein masks; config.num_classes=1 is its one-logit model)."""
  return get_source(config).num_classes(config)


def foreground_name(config) -> str:
  """What the foreground metrics (IoU, Dice, HD95) measure, for table and figure titles: "Vein", "Vessel"...

  A multi-class dataset reports the mean over its foreground classes, so it is called "Foreground".
  """
  return get_source(config).foreground_name(config)
