"""The reserved "ignore" label of veinjax's class masks (no TensorFlow, no JAX: every layer imports it).

Class masks are uint8 class indices, 0 = background. `IGNORE_LABEL` (255, the PASCAL VOC "void" value that
Labelme's labelme2voc writes for its `__ignore__` label) marks pixels that count in no loss term and in no
metric: their truth is unknown, so neither what the mask says nor what the model predicts there is compared.
Real classes are therefore 0..254 (`MAX_CLASS`), so no class can collide with it; a model has at most 255
labels (background included).

Where an ignore label comes from (the `folder` dataset): a mask value mapped to `ignore` in
config.dataset.mask_values (e.g. "0:0,255:1,128:ignore"), a Labelme label mapped to "ignore" in
config.dataset.labelme_labels, and Labelme's `__ignore__` label (`LABELME_IGNORE`), ignored unless
labelme_labels maps it to a class. Only the sources in `SOURCES_WITH_IGNORE` may hold it: the input pipeline
rejects it elsewhere, and the steps build the plain loss there (`may_have_ignored_pixels`), so runs on the
other sources compute exactly what they computed before ignored pixels existed.
"""

import numbers

IGNORE_LABEL = 255
MAX_CLASS = IGNORE_LABEL - 1  # the largest real class index
MAX_LABELS = IGNORE_LABEL  # classes including background: 0..254
IGNORE_NAME = "ignore"  # how mask_values and labelme_labels name it
LABELME_IGNORE = "__ignore__"  # labelme2voc's label for regions to ignore


def parse_class(value, flag: str, what: str) -> int:
  """A class index 0..MAX_CLASS, or IGNORE_LABEL for "ignore"; a ValueError naming `flag` otherwise.

  `what` says which entry is wrong (e.g. "value 128", "label 'vein'"), for the message.
  """
  cls = None
  if isinstance(value, str):
    if value.strip().lower() == IGNORE_NAME:
      return IGNORE_LABEL
    try:
      cls = int(value.strip())
    except ValueError:
      pass
  elif isinstance(value, numbers.Integral) and not isinstance(value, bool):  # True/False are no classes
    cls = int(value)
  if cls is None or not 0 <= cls <= MAX_CLASS:
    if cls == IGNORE_LABEL:
      why = (f"{IGNORE_LABEL} is reserved for ignored pixels; classes are 0..{MAX_CLASS}, and "
             f"'{IGNORE_NAME}' maps to the ignore label")
    else:
      why = f"classes are integers 0..{MAX_CLASS} (0 = background) or '{IGNORE_NAME}'"
    raise ValueError(f"{flag} maps {what} to {value!r}: {why}.")
  return cls


# The dataset sources (config.dataset.name) whose masks may hold IGNORE_LABEL.
SOURCES_WITH_IGNORE = ("folder",)


def may_have_ignored_pixels(config) -> bool:
  """Whether the run's masks may hold IGNORE_LABEL: its source is one of `SOURCES_WITH_IGNORE`."""
  return config.dataset.name in SOURCES_WITH_IGNORE
