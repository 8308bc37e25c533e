"""Segmentation metrics: a confusion matrix accumulated over a whole split, reduced once at the end, and HD95.

On device (jit/pmap-able): `predictions` turns logits into class indices and `confusion_matrix` counts
(truth, prediction) pixel pairs of the real examples of a batch. Confusion matrices add up, so they can be
`lax.psum`-ed across devices and summed across batches; the metrics of a split therefore depend neither on
the batch size nor on the device count.

On the host: `summarize` reduces the split's confusion matrix to the paper's metrics, `hd95` measures one
image's boundary error, and `MetricsAccumulator` ties both together over an evaluation loop.

Labels: `num_labels` counts the background, so a one-logit (binary) model has 2 labels: 0 = background,
1 = vein (`num_labels_for_classes`). Per-class lists are indexed by label, background first.

Ignored pixels: a truth label of `IGNORE_LABEL` (255, `veinjax.labels`) marks a pixel whose truth is unknown.
It counts nowhere: `confusion_matrix` skips it (whatever is predicted there) and HD95 removes it from both
the truth and the predicted mask. No real class can be 255: a model has at most 255 labels (0..254).

Conventions for undefined values (0/0): a ratio whose denominator is 0 is NaN ("undefined"), never 0 or 1:
e.g. the IoU and Dice of a class absent from both truth and prediction, or the precision of a class that is
never predicted. Means over classes (mIoU, and the foreground means of a multi-class model) skip NaN entries,
and are NaN only when every entry is. `summarize` never raises on a well-formed matrix, including an empty one
(every metric NaN).
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from veinjax.labels import IGNORE_LABEL, MAX_LABELS


# The scalar metrics of an evaluation (`MetricsAccumulator.result` plus the split's "loss"), each a valid
# --config.best_metric.
SCALAR_METRICS = ("acc", "miou", "iou", "dice", "precision", "recall", "specificity", "hd95", "loss")


def check_metric_name(name: str, flag: str = "--config.best_metric") -> None:
  if name not in SCALAR_METRICS:
    raise ValueError(f"Unknown {flag}={name!r}; choose one of {', '.join(sorted(SCALAR_METRICS))} "
                     "(higher is better).")


def num_labels_for_classes(num_classes: int) -> int:
  """Confusion-matrix size for a model with `num_classes` outputs: one logit means background + foreground."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"--config.num_classes must be an integer >= 1 (1 = one sigmoid 'vein' logit); "
                     f"got {num_classes!r}.")
  if num_classes > MAX_LABELS:
    raise ValueError(f"--config.num_classes={num_classes}: at most {MAX_LABELS} classes (labels "
                     f"0..{MAX_LABELS - 1}; {IGNORE_LABEL} is reserved for ignored pixels).")
  return max(int(num_classes), 2)


def predictions(logits: jax.Array, num_classes: int) -> jax.Array:
  """Class indices int32 [N, H, W]: `logit > 0` (probability > 0.5) for one logit, argmax otherwise."""
  if logits.shape[-1] != num_classes:
    raise ValueError(
        f"logits have {logits.shape[-1]} channels but num_classes={num_classes} (--config.num_classes).")
  if num_classes == 1:
    return (logits[..., 0] > 0).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def confusion_matrix(pred: jax.Array, labels: jax.Array, num_labels: int,
                     weights: Optional[jax.Array] = None) -> jax.Array:
  """Pixel confusion matrix float32 [num_labels, num_labels]: rows = truth, columns = prediction.

  Args:
    pred: integer [N, ...] predicted class indices (from `predictions`).
    labels: integer [N, ...] true class indices, same shape.
    num_labels: number of labels including the background (2 for a binary model).
    weights: optional [N]; examples with weight <= 0 (padding) are not counted. The weight is a mask, not a
      multiplier: every counted pixel counts once.

  Pixels whose label is `IGNORE_LABEL` are not counted, whatever their prediction; nor are pixels whose
  label or prediction is outside [0, num_labels) (the input pipeline rejects such labels). Counting is done
  in int32 (exact); the float32 result is exact up to 2**24 pixels per cell, i.e. per call, which is 64
  images of 512 x 512 all in one cell.
  """
  if pred.shape != labels.shape:
    raise ValueError(f"pred {pred.shape} and labels {labels.shape} must have the same shape.")
  if num_labels > IGNORE_LABEL:  # then the range test below would count ignored pixels
    raise ValueError(f"num_labels={num_labels}: at most {IGNORE_LABEL} (labels 0..{IGNORE_LABEL - 1}; "
                     f"{IGNORE_LABEL} marks ignored pixels).")
  labels = labels.astype(jnp.int32)
  pred = pred.astype(jnp.int32)
  # The range test drops IGNORE_LABEL (>= num_labels, checked above) with every other out-of-range label.
  valid = (labels >= 0) & (labels < num_labels) & (pred >= 0) & (pred < num_labels)
  if weights is not None:
    if weights.shape != labels.shape[:1]:
      raise ValueError(f"weights must be [N] = {labels.shape[:1]}; got {weights.shape}.")
    valid &= (weights > 0).reshape((-1,) + (1,) * (labels.ndim - 1))
  cell = labels * num_labels + pred
  # One-hot over the num_labels**2 cells and a sum: exact, vectorised, and fast on every backend (no scatter).
  one_hot = (cell[..., None] == jnp.arange(num_labels * num_labels)) & valid[..., None]
  counts = jnp.sum(one_hot.reshape(-1, num_labels * num_labels), axis=0, dtype=jnp.int32)
  return counts.reshape(num_labels, num_labels).astype(jnp.float32)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator elementwise, NaN where the denominator is 0."""
  out = np.full(np.shape(numerator), np.nan)
  np.divide(numerator, denominator, out=out, where=denominator > 0)
  return out


def _nanmean(values: np.ndarray) -> float:
  """Mean of the non-NaN entries; NaN (without a warning) when there are none."""
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else float("nan")


def summarize(confusion: np.ndarray) -> dict:
  """The paper's metrics from a confusion matrix (rows = truth, columns = prediction).

  Keys: `acc` (eq. 5: correctly classified pixels / all pixels), `iou_per_class` (background first), `miou`
  (eq. 6: mean IoU over the background and every foreground class), `iou`, `dice`, `precision`, `recall`
  (sensitivity) and `specificity` of the foreground (binary: the vein class; multi-class: the mean over the
  foreground classes), and `dice_per_class` (background first). Per-class IoU = TP / (TP + FP + FN),
  Dice = 2TP / (2TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN),
  specificity = TN / (TN + FP), each class against all others. See the module docstring for 0/0.
  """
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] < 2:
    raise ValueError(f"confusion must be a square [num_labels, num_labels] matrix with num_labels >= 2 "
                     f"(background included); got shape {confusion.shape}.")
  if not np.all(np.isfinite(confusion)) or np.any(confusion < 0):
    raise ValueError("confusion must hold finite, non-negative pixel counts.")
  total = confusion.sum()
  tp = np.diag(confusion)
  fp = confusion.sum(axis=0) - tp  # predicted as the class, truly another
  fn = confusion.sum(axis=1) - tp  # truly the class, predicted as another
  tn = total - tp - fp - fn
  iou = _ratio(tp, tp + fp + fn)
  dice = _ratio(2 * tp, 2 * tp + fp + fn)
  precision = _ratio(tp, tp + fp)
  recall = _ratio(tp, tp + fn)
  specificity = _ratio(tn, tn + fp)
  fg = slice(1, None)
  return {
      "acc": float(_ratio(tp.sum(), total)),
      "miou": _nanmean(iou),
      "iou": _nanmean(iou[fg]),
      "iou_per_class": [float(v) for v in iou],
      "dice": _nanmean(dice[fg]),
      "dice_per_class": [float(v) for v in dice],
      "precision": _nanmean(precision[fg]),
      "recall": _nanmean(recall[fg]),
      "specificity": _nanmean(specificity[fg]),
  }


# 4-connectivity: a boundary pixel is a mask pixel with at least one of its 4 neighbours outside the mask.
_BOUNDARY_STRUCTURE = ndimage.generate_binary_structure(2, 1)


def _boundary(mask: np.ndarray) -> np.ndarray:
  # border_value=0: a structure touching the image edge has its boundary there.
  return mask & ~ndimage.binary_erosion(mask, structure=_BOUNDARY_STRUCTURE, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0),
         ignore: Optional[np.ndarray] = None) -> float:
  """95th-percentile symmetric Hausdorff distance between the boundaries of two [H, W] masks.

  The distances from each boundary pixel of one mask to the nearest boundary pixel of the other (Euclidean,
  in `spacing` units: (row, column) pixel size) give two directed 95th percentiles; HD95 is the larger of
  the two (as MONAI computes it, the robust analogue of HD = max of the directed Hausdorff distances).

  Empty masks: both empty -> NaN (nothing to measure; the accumulator never counts it). Exactly one empty
  -> the image diagonal in `spacing` units, the largest distance possible in the image, so a missed (or
  hallucinated) structure is penalised as the worst case rather than dropped.

  `ignore` ([H, W] bool, optional): pixels removed from both masks before anything is measured (ignored
  pixels: neither their truth nor their prediction counts).
  """
  pred = np.asarray(pred).astype(bool)
  truth = np.asarray(truth).astype(bool)
  if pred.ndim != 2 or pred.shape != truth.shape:
    raise ValueError(f"hd95 needs two [H, W] masks of the same shape; got {pred.shape} and {truth.shape}.")
  if ignore is not None:
    ignore = np.asarray(ignore).astype(bool)
    if ignore.shape != pred.shape:
      raise ValueError(f"ignore must be [H, W] = {pred.shape} like the masks; got {ignore.shape}.")
    pred, truth = pred & ~ignore, truth & ~ignore
  spacing = tuple(float(s) for s in spacing)
  if len(spacing) != 2 or not all(np.isfinite(s) and s > 0 for s in spacing):
    raise ValueError(f"spacing must be two positive pixel sizes (row, column); got {spacing}.")
  has_pred, has_truth = pred.any(), truth.any()
  if not has_pred and not has_truth:
    return float("nan")
  if not has_pred or not has_truth:
    return float(np.hypot(pred.shape[0] * spacing[0], pred.shape[1] * spacing[1]))
  pred_boundary, truth_boundary = _boundary(pred), _boundary(truth)
  # distance_transform_edt gives each nonzero pixel its distance to the nearest zero: here, to the boundary.
  to_truth = ndimage.distance_transform_edt(~truth_boundary, sampling=spacing)
  to_pred = ndimage.distance_transform_edt(~pred_boundary, sampling=spacing)
  return float(max(np.percentile(to_truth[pred_boundary], 95), np.percentile(to_pred[truth_boundary], 95)))


class MetricsAccumulator:
  """Host-side accumulation of a split's metrics.

  Per batch: `add(confusion)` with the batch's (device-summed or per-device stacked) confusion matrix, and
  `add_hd95(pred, labels, weights)` with its predictions. `result()` gives `summarize` of the summed matrix
  plus `hd95` (pixels), `hd95_mm` (only when `pixel_spacing_mm` > 0) and `num_examples`.

  HD95 is computed per real image and foreground class where the truth has that class (a missed structure
  scores the image diagonal, see `hd95`), averaged over those images per class, then over the foreground
  classes that occur in the split; NaN when none does. Pixels labelled `IGNORE_LABEL` are removed from both
  the truth and the predicted mask first (see `hd95`).
  """

  def __init__(self, num_classes: int, pixel_spacing_mm: float = 0.0):
    """`num_classes` is the model's (`config.num_classes`; 1 = binary) or, equivalently, `num_labels`."""
    if pixel_spacing_mm < 0:
      raise ValueError(f"--config.pixel_spacing_mm must be >= 0 (0 = pixels only); got {pixel_spacing_mm}.")
    self.num_labels = num_labels_for_classes(num_classes)
    self.pixel_spacing_mm = float(pixel_spacing_mm)
    self.confusion = np.zeros((self.num_labels, self.num_labels), np.float64)
    self._hd95 = [[] for _ in range(self.num_labels - 1)]  # per foreground class
    self.num_examples = 0

  def add(self, confusion) -> None:
    """Adds a [num_labels, num_labels] confusion matrix, or a stack of them (e.g. one per device)."""
    confusion = np.asarray(confusion, np.float64)
    if confusion.shape[-2:] != self.confusion.shape:
      raise ValueError(f"confusion must end in {self.confusion.shape}; got {confusion.shape}.")
    self.confusion += confusion.reshape((-1,) + self.confusion.shape).sum(axis=0)

  def add_hd95(self, pred_batch, label_batch, weights=None) -> None:
    """Adds the HD95 of every real example of a batch; leading (device, batch) axes are flattened."""
    pred = np.asarray(pred_batch)
    labels = np.asarray(label_batch)
    if pred.shape != labels.shape or pred.ndim < 3:
      raise ValueError(f"pred and labels must be [..., H, W] of the same shape; got {pred.shape} "
                       f"and {labels.shape}.")
    pred = pred.reshape((-1,) + pred.shape[-2:])
    labels = labels.reshape((-1,) + labels.shape[-2:])
    if weights is None:
      weights = np.ones(len(pred))
    weights = np.asarray(weights).reshape(-1)
    if weights.shape != (len(pred),):
      raise ValueError(f"weights must hold one value per example ({len(pred)}); got {weights.size}.")
    for image_pred, image_label in zip(pred[weights > 0], labels[weights > 0]):
      self.num_examples += 1
      ignore = image_label == IGNORE_LABEL
      ignore = ignore if ignore.any() else None  # no ignored pixel: exactly the computation without one
      for c in range(1, self.num_labels):
        truth = image_label == c
        if truth.any():
          self._hd95[c - 1].append(hd95(image_pred == c, truth, ignore=ignore))

  def result(self) -> dict:
    """The split's metrics (see the class docstring)."""
    out = summarize(self.confusion)
    out["hd95"] = _nanmean([np.mean(v) if v else np.nan for v in self._hd95])
    if self.pixel_spacing_mm > 0:
      out["hd95_mm"] = out["hd95"] * self.pixel_spacing_mm
    out["num_examples"] = self.num_examples
    return out
