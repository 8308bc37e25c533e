"""veinjax.metrics: hand-computed cases, an independent numpy reference, batch/padding invariance, HD95."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from veinjax import metrics

jax.config.update("jax_disable_most_optimizations", True)


# ---- independent numpy reference: pixel loops and np.bincount, nothing shared with veinjax.metrics ----

def _np_confusion(pred, labels, num_labels, weights=None):
  if weights is None:
    weights = np.ones(len(labels))
  keep = weights > 0
  cell = labels[keep].astype(np.int64).ravel() * num_labels + pred[keep].astype(np.int64).ravel()
  return np.bincount(cell, minlength=num_labels**2).reshape(num_labels, num_labels)


def _np_metrics(pred, labels, num_labels, weights=None):
  """Paper metrics by counting pixels one class at a time (boolean masks, no confusion-matrix algebra)."""
  if weights is not None:
    pred, labels = pred[weights > 0], labels[weights > 0]
  pred, labels = pred.ravel(), labels.ravel()
  per = {"iou": [], "dice": [], "precision": [], "recall": [], "specificity": []}
  for c in range(num_labels):
    tp = np.sum((pred == c) & (labels == c))
    fp = np.sum((pred == c) & (labels != c))
    fn = np.sum((pred != c) & (labels == c))
    tn = np.sum((pred != c) & (labels != c))
    div = lambda a, b: a / b if b else math.nan
    per["iou"].append(div(tp, tp + fp + fn))
    per["dice"].append(div(2 * tp, 2 * tp + fp + fn))
    per["precision"].append(div(tp, tp + fp))
    per["recall"].append(div(tp, tp + fn))
    per["specificity"].append(div(tn, tn + fp))
  fg_mean = lambda v: float(np.mean(v[1:]))
  return {
      "acc": np.mean(pred == labels),
      "miou": float(np.mean(per["iou"])),
      "iou_per_class": per["iou"],
      "dice_per_class": per["dice"],
      **{k: fg_mean(v) for k, v in per.items()},
  }


def _assert_metrics_close(got, want):
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


def _random_masks(num_labels, n, size=16, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_labels, size=(n, size, size)).astype(np.int32)
  # Predictions that agree with the labels most of the time, so every metric is away from 0 and 1.
  pred = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, num_labels, size=labels.shape))
  return pred.astype(np.int32), labels


# ---- hand-computed cases ----

# 4x4, binary. Truth (vein = 1) and prediction with TP = 3, FP = 2, FN = 1, TN = 10.
_TRUTH = np.array([[0, 0, 0, 0],
                   [0, 1, 1, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, 0]])
_PRED = np.array([[0, 0, 0, 1],
                  [0, 1, 1, 0],
                  [0, 1, 0, 0],
                  [1, 0, 0, 0]])


def test_binary_hand_computed_case():
  cm = metrics.confusion_matrix(jnp.asarray(_PRED[None]), jnp.asarray(_TRUTH[None]), 2)
  np.testing.assert_array_equal(cm, [[10, 2], [1, 3]])
  assert cm.dtype == jnp.float32
  m = metrics.summarize(np.asarray(cm))
  assert m["acc"] == pytest.approx(13 / 16)  # eq. 5: (TP + TN) / all pixels
  assert m["iou_per_class"] == pytest.approx([10 / 13, 3 / 6])
  assert m["miou"] == pytest.approx((10 / 13 + 3 / 6) / 2)  # eq. 6: background and vein
  assert m["iou"] == pytest.approx(0.5)
  assert m["dice"] == pytest.approx(6 / 9)
  assert m["dice_per_class"] == pytest.approx([20 / 23, 6 / 9])
  assert m["precision"] == pytest.approx(3 / 5)
  assert m["recall"] == pytest.approx(3 / 4)
  assert m["specificity"] == pytest.approx(10 / 12)
  assert all(isinstance(v, float) for k, v in m.items() if not k.endswith("per_class"))


def test_three_class_hand_computed_case():
  truth = np.array([[0, 0, 1, 1],
                    [0, 0, 1, 1],
                    [2, 2, 0, 0],
                    [2, 2, 0, 0]])
  pred = np.array([[0, 1, 1, 1],
                   [0, 0, 1, 2],
                   [2, 2, 0, 0],
                   [0, 2, 0, 0]])
  cm = np.asarray(metrics.confusion_matrix(jnp.asarray(pred[None]), jnp.asarray(truth[None]), 3))
  # Rows = truth, columns = prediction.
  np.testing.assert_array_equal(cm, [[7, 1, 0], [0, 3, 1], [1, 0, 3]])
  m = metrics.summarize(cm)
  iou = [7 / 9, 3 / 5, 3 / 5]  # class 0: 7 / (7 + 1 + 1); class 1: 3 / (3 + 1 + 1); class 2: 3 / (3 + 1 + 1)
  assert m["acc"] == pytest.approx(13 / 16)
  assert m["iou_per_class"] == pytest.approx(iou)
  assert m["miou"] == pytest.approx(np.mean(iou))
  assert m["iou"] == pytest.approx(3 / 5)  # mean over the two foreground classes
  assert m["dice"] == pytest.approx(np.mean([6 / 8, 6 / 8]))
  assert m["precision"] == pytest.approx(np.mean([3 / 4, 3 / 4]))
  assert m["recall"] == pytest.approx(np.mean([3 / 4, 3 / 4]))
  assert m["specificity"] == pytest.approx(np.mean([11 / 12, 11 / 12]))


def test_predictions():
  logits = np.array([-1.0, 0.0, 1e-3, 5.0], np.float32).reshape(1, 1, 4, 1)
  np.testing.assert_array_equal(metrics.predictions(jnp.asarray(logits), 1), [[[0, 0, 1, 1]]])
  multi = jnp.asarray([[[[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.5]]]])
  pred = metrics.predictions(multi, 3)
  assert pred.dtype == jnp.int32
  np.testing.assert_array_equal(pred, [[[1, 0, 2]]])
  with pytest.raises(ValueError, match="num_classes"):
    metrics.predictions(multi, 1)


# ---- numpy reference on random data ----

@pytest.mark.parametrize("num_labels", [2, 3])
def test_matches_numpy_reference(num_labels):
  pred, labels = _random_masks(num_labels, n=5, seed=num_labels)
  weights = np.array([1, 1, 0, 1, 0], np.float32)
  cm = jax.jit(metrics.confusion_matrix, static_argnums=2)(pred, labels, num_labels, weights)
  np.testing.assert_array_equal(cm, _np_confusion(pred, labels, num_labels, weights))
  _assert_metrics_close(metrics.summarize(np.asarray(cm)), _np_metrics(pred, labels, num_labels, weights))


# ---- invariance: batch size, padding, devices ----

@pytest.mark.parametrize("num_labels", [2, 3])
def test_metrics_do_not_depend_on_batch_size_or_padding(num_labels):
  pred, labels = _random_masks(num_labels, n=21, seed=10 + num_labels)
  cm_fn = jax.jit(metrics.confusion_matrix, static_argnums=2)
  results = []
  for batch_size in (1, 3, 7, 8):  # 8 does not divide 21: the last batch is padded with garbage
    acc = metrics.MetricsAccumulator(num_labels)
    for start in range(0, 21, batch_size):
      p, t = pred[start:start + batch_size], labels[start:start + batch_size]
      w = np.ones(len(p), np.float32)
      pad = batch_size - len(p)
      if pad:
        rng = np.random.default_rng(start)
        p = np.concatenate([p, rng.integers(0, num_labels, (pad,) + p.shape[1:])]).astype(np.int32)
        t = np.concatenate([t, rng.integers(0, num_labels, (pad,) + t.shape[1:])]).astype(np.int32)
        w = np.concatenate([w, np.zeros(pad, np.float32)])
      acc.add(cm_fn(p, t, num_labels, w))
      acc.add_hd95(p, t, w)
    results.append(acc.result())
  for r in results[1:]:
    assert r["num_examples"] == 21
    for key, value in results[0].items():
      np.testing.assert_allclose(r[key], value, rtol=1e-12, err_msg=key)
  _assert_metrics_close(results[0], _np_metrics(pred, labels, num_labels))


def test_confusion_matrix_sums_across_devices_with_psum():
  pred, labels = _random_masks(3, n=8, seed=7)
  weights = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
  # 4 "devices" of 2 examples each; vmap with an axis name runs the same psum as pmap would.
  per_device = lambda p, t, w: jax.lax.psum(metrics.confusion_matrix(p, t, 3, w), "batch")
  summed = jax.vmap(per_device, axis_name="batch")(pred.reshape(4, 2, 16, 16), labels.reshape(4, 2, 16, 16),
                                                   weights.reshape(4, 2))
  for device in range(4):
    np.testing.assert_array_equal(summed[device], _np_confusion(pred, labels, 3, weights))
  # The accumulator also takes the unreduced per-device stack.
  stacked = jax.vmap(lambda p, t, w: metrics.confusion_matrix(p, t, 3, w))(
      pred.reshape(4, 2, 16, 16), labels.reshape(4, 2, 16, 16), weights.reshape(4, 2))
  acc = metrics.MetricsAccumulator(3)
  acc.add(stacked)
  np.testing.assert_array_equal(acc.confusion, _np_confusion(pred, labels, 3, weights))


# ---- 0/0 conventions and bad input ----

def test_absent_class_is_nan_and_skipped_by_the_means():
  cm = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]], np.float64)  # class 2 absent from truth and prediction
  m = metrics.summarize(cm)
  assert math.isnan(m["iou_per_class"][2]) and math.isnan(m["dice_per_class"][2])
  assert m["miou"] == pytest.approx(np.mean([5 / 8, 4 / 7]))
  assert m["iou"] == pytest.approx(4 / 7)
  assert m["specificity"] == pytest.approx(np.mean([5 / 6, 1.0]))  # class 2: TN = 12, FP = 0


def test_never_predicted_vein_gives_zero_iou_and_undefined_precision():
  m = metrics.summarize(np.array([[10, 0], [6, 0]]))
  assert m["iou"] == 0.0 and m["dice"] == 0.0 and m["recall"] == 0.0
  assert math.isnan(m["precision"])


def test_empty_confusion_does_not_crash():
  m = metrics.summarize(np.zeros((2, 2)))
  assert all(math.isnan(v) for k, v in m.items() if not k.endswith("per_class"))


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((1, 1)), np.array([[1, -1], [0, 0]]),
                                 np.array([[np.nan, 0], [0, 0]])])
def test_summarize_rejects_malformed_matrices(bad):
  with pytest.raises(ValueError, match="confusion"):
    metrics.summarize(bad)


def test_num_labels_for_classes():
  assert metrics.num_labels_for_classes(1) == 2
  assert metrics.num_labels_for_classes(2) == 2
  assert metrics.num_labels_for_classes(3) == 3


# ---- HD95 ----

def _square(size, top, left, side):
  mask = np.zeros((size, size), bool)
  mask[top:top + side, left:left + side] = True
  return mask


def _brute_force_hd95(a, b, spacing=(1.0, 1.0)):
  """Boundary by explicit 4-neighbour checks (outside the image counts as background), all-pairs distances."""
  def boundary_points(mask):
    padded = np.pad(mask, 1)
    points = []
    for r, c in zip(*np.nonzero(mask)):
      neighbours = [padded[r, c + 1], padded[r + 2, c + 1], padded[r + 1, c], padded[r + 1, c + 2]]
      if not all(neighbours):
        points.append((r * spacing[0], c * spacing[1]))
    return np.array(points)
  pa, pb = boundary_points(a), boundary_points(b)
  d = np.sqrt(((pa[:, None, :] - pb[None, :, :])**2).sum(-1))
  return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_hd95_of_a_shifted_square_is_the_shift(k):
  a, b = _square(48, 10, 10, 20), _square(48, 10, 10 + k, 20)
  assert metrics.hd95(b, a) == pytest.approx(k)
  assert metrics.hd95(a, b) == pytest.approx(k)
  assert metrics.hd95(b, a, spacing=(0.5, 0.5)) == pytest.approx(0.5 * k)
  # The shift is along the columns, so only the column spacing matters.
  assert metrics.hd95(b, a, spacing=(3.0, 0.25)) == pytest.approx(0.25 * k)


def test_hd95_matches_brute_force_on_random_blobs():
  rng = np.random.default_rng(0)
  for _ in range(3):
    a = np.zeros((32, 32), bool)
    b = np.zeros((32, 32), bool)
    for mask in (a, b):
      for _ in range(3):
        mask |= _square(32, *rng.integers(0, 24, 2), rng.integers(3, 10))
    assert metrics.hd95(a, b) == pytest.approx(_brute_force_hd95(a, b))
    assert metrics.hd95(a, b, (0.7, 1.3)) == pytest.approx(_brute_force_hd95(a, b, (0.7, 1.3)))


def test_hd95_identical_and_empty_masks():
  a = _square(32, 4, 4, 10)
  assert metrics.hd95(a, a) == 0.0
  empty = np.zeros_like(a)
  assert math.isnan(metrics.hd95(empty, empty))
  assert metrics.hd95(empty, a) == pytest.approx(math.hypot(32, 32))  # a miss scores the image diagonal
  assert metrics.hd95(a, empty, spacing=(0.5, 2.0)) == pytest.approx(math.hypot(16, 64))
  with pytest.raises(ValueError, match="shape"):
    metrics.hd95(a, a[:8])
  with pytest.raises(ValueError, match="spacing"):
    metrics.hd95(a, a, spacing=(0.0, 1.0))


def test_accumulator_hd95_counts_only_images_with_the_structure():
  size = 32
  labels = np.stack([_square(size, 5, 5, 10), _square(size, 5, 5, 10), np.zeros((size, size), bool),
                     _square(size, 5, 5, 10)]).astype(np.int32)
  pred = np.stack([_square(size, 5, 7, 10),  # shift 2
                   np.zeros((size, size), bool),  # missed: the diagonal
                   _square(size, 0, 0, 4),  # no structure in truth: not counted
                   _square(size, 5, 5, 10)]).astype(np.int32)  # padding: not counted
  acc = metrics.MetricsAccumulator(1, pixel_spacing_mm=0.2)
  acc.add_hd95(pred, labels, np.array([1, 1, 1, 0], np.float32))
  result = acc.result()
  assert result["num_examples"] == 3
  assert result["hd95"] == pytest.approx((2 + math.hypot(size, size)) / 2)
  assert result["hd95_mm"] == pytest.approx(0.2 * result["hd95"])
  assert "hd95_mm" not in metrics.MetricsAccumulator(1).result()


def test_accumulator_hd95_multiclass_averages_classes():
  size = 32
  labels = np.zeros((2, size, size), np.int32)
  labels[0][_square(size, 2, 2, 8)] = 1
  labels[0][_square(size, 16, 16, 8)] = 2
  labels[1][_square(size, 16, 16, 8)] = 2
  pred = np.zeros_like(labels)
  pred[0][_square(size, 2, 3, 8)] = 1  # class 1 shifted by 1
  pred[0][_square(size, 16, 16, 8)] = 2  # class 2 exact
  pred[1][_square(size, 16, 20, 8)] = 2  # class 2 shifted by 4
  acc = metrics.MetricsAccumulator(3)
  acc.add_hd95(pred, labels)
  # Class 1: one image, 1. Class 2: two images, mean(0, 4) = 2. Mean over classes: 1.5.
  assert acc.result()["hd95"] == pytest.approx(1.5)


def test_accumulator_result_has_every_key_eval_writes():
  acc = metrics.MetricsAccumulator(1)
  pred, labels = _random_masks(2, n=2, seed=3)
  acc.add(metrics.confusion_matrix(pred, labels, 2))
  acc.add_hd95(pred, labels)
  result = acc.result()
  for key in ("acc", "miou", "iou_per_class", "dice", "precision", "recall", "specificity", "hd95",
              "num_examples"):
    assert key in result
  with pytest.raises(ValueError, match="confusion"):
    acc.add(np.zeros((3, 3)))


# ---- ignored pixels (IGNORE_LABEL): neither their truth nor their prediction counts ----

_IGNORE = metrics.IGNORE_LABEL


@pytest.mark.parametrize("num_labels", [2, 3])
def test_confusion_matrix_skips_ignored_pixels_whatever_is_predicted(num_labels):
  pred, labels = _random_masks(num_labels, n=5, seed=20 + num_labels)
  rng = np.random.default_rng(30)
  ignored = rng.random(labels.shape) < 0.3
  weights = np.array([1, 1, 0, 1, 1], np.float32)
  with_ignore = np.where(ignored, _IGNORE, labels).astype(np.int32)
  cm = np.asarray(jax.jit(metrics.confusion_matrix, static_argnums=2)(pred, with_ignore, num_labels, weights))
  # The reference drops the ignored pixels first: exactly the pixels that are neither ignored nor padding.
  keep = ~ignored & (weights > 0)[:, None, None]
  want = np.bincount(labels[keep] * num_labels + pred[keep], minlength=num_labels**2)
  np.testing.assert_array_equal(cm, want.reshape(num_labels, num_labels))
  assert cm.sum() == keep.sum()
  # Any prediction on the ignored pixels gives the same matrix.
  other = np.where(ignored, (pred + 1) % num_labels, pred).astype(np.int32)
  np.testing.assert_array_equal(metrics.confusion_matrix(other, with_ignore, num_labels, weights), cm)


def test_no_class_can_collide_with_the_ignore_label():
  assert metrics.num_labels_for_classes(255) == 255  # labels 0..254
  with pytest.raises(ValueError, match=r"num_classes=256.*255 is reserved"):
    metrics.num_labels_for_classes(256)
  with pytest.raises(ValueError, match=r"num_labels=256"):
    metrics.confusion_matrix(jnp.zeros((1, 2, 2), jnp.int32), jnp.zeros((1, 2, 2), jnp.int32), 256)


def test_hd95_drops_ignored_pixels_from_truth_and_prediction():
  size = 32
  truth = _square(size, 5, 5, 10)
  pred = _square(size, 5, 7, 10) | _square(size, 24, 24, 6)  # shift 2, plus a blob in the ignored region
  ignore = _square(size, 22, 22, 10)
  assert metrics.hd95(pred, truth) > 10  # the blob counts without the ignore mask
  assert metrics.hd95(pred, truth, ignore=ignore) == pytest.approx(2)
  assert metrics.hd95(pred & ~ignore, truth) == metrics.hd95(pred, truth, ignore=ignore)
  # A structure whose pixels are all ignored on one side is a miss (the diagonal), as any other miss.
  assert metrics.hd95(_square(size, 24, 24, 6), truth, ignore=ignore) == pytest.approx(math.hypot(size, size))
  with pytest.raises(ValueError, match="ignore"):
    metrics.hd95(pred, truth, ignore=ignore[:8])


def test_accumulator_ignores_ignored_pixels_in_hd95():
  size = 32
  labels = np.zeros((2, size, size), np.int32)
  labels[:, 5:15, 5:15] = 1
  labels[:, 20:30, 20:30] = _IGNORE
  pred = np.zeros((2, size, size), np.int32)
  pred[:, 5:15, 7:17] = 1  # shift 2
  pred[0, 22:28, 22:28] = 1  # a prediction inside the ignored region: not a false structure
  acc = metrics.MetricsAccumulator(1)
  acc.add_hd95(pred, labels)
  acc.add(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(labels), 2))
  result = acc.result()
  assert result["hd95"] == pytest.approx(2) and result["num_examples"] == 2
  assert acc.confusion.sum() == 2 * (size * size - 100)
  assert acc.confusion[0, 1] == 2 * 20  # the shift's false positives only


def _old_confusion_matrix(pred, labels, num_labels, weights=None):
  """A verbatim copy of confusion_matrix before ignored pixels existed (f88844d), less its shape checks."""
  labels = labels.astype(jnp.int32)
  pred = pred.astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_labels) & (pred >= 0) & (pred < num_labels)
  if weights is not None:
    valid &= (weights > 0).reshape((-1,) + (1,) * (labels.ndim - 1))
  cell = labels * num_labels + pred
  one_hot = (cell[..., None] == jnp.arange(num_labels * num_labels)) & valid[..., None]
  counts = jnp.sum(one_hot.reshape(-1, num_labels * num_labels), axis=0, dtype=jnp.int32)
  return counts.reshape(num_labels, num_labels).astype(jnp.float32)


@pytest.mark.parametrize("num_labels", [2, 3])
def test_confusion_matrix_is_the_old_computation_op_for_op(num_labels):
  # Ignored pixels fall out of the range test, so the train and eval steps trace to what they traced before.
  pred, labels = _random_masks(num_labels, n=3, seed=40)
  weights = np.array([1, 0, 1], np.float32)
  new = functools.partial(metrics.confusion_matrix, num_labels=num_labels)
  old = functools.partial(_old_confusion_matrix, num_labels=num_labels)
  assert str(jax.make_jaxpr(new)(pred, labels, weights=weights)) == str(
      jax.make_jaxpr(old)(pred, labels, weights=weights))
