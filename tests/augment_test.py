"""Tests for veinjax.data.augment: alignment of image and mask, determinism, eager == tf.data."""


import numpy as np
import pytest
import tensorflow as tf

from veinjax.data import augment

from conftest import augment_config

_SIZE = 64
_GEOMETRIC = {  # one part on at a time, at a strength that visibly moves a 64 px frame
    "rotation": {"rotation_degrees": 30.0},
    "hflip": {"hflip": True},
    "vflip": {"vflip": True},
    "shift": {"shift_fraction": 0.1},
    "scale": {"scale_range": (0.8, 1.2)},
    "projective": {"projective": 0.08},
    "combined": {"rotation_degrees": 30.0, "hflip": True, "vflip": True, "shift_fraction": 0.1,
                 "scale_range": (0.8, 1.2), "projective": 0.08},
}
_INTENSITY = {"brightness": 0.2, "contrast": 0.3, "gamma": 0.3, "speckle": 0.2}


def _aug(**parts):
  """config.augment with every part off, then `parts` switched on."""
  return augment_config(**parts)


def _all_on():
  return _aug(**_GEOMETRIC["combined"], **_INTENSITY)


def _label_mask(size=_SIZE) -> np.ndarray:
  """Labels {0, 1, 2}: an off-centre ellipse (1) and a rectangle (2), all well inside the frame."""
  ys, xs = np.mgrid[0:size, 0:size]
  mask = np.zeros((size, size), np.int32)
  mask[(((ys - 0.4 * size) / (0.12 * size)) ** 2 + ((xs - 0.38 * size) / (0.18 * size)) ** 2) < 1] = 1
  mask[int(0.55 * size):int(0.68 * size), int(0.52 * size):int(0.7 * size)] = 2
  return mask


def _image_of(mask: np.ndarray) -> np.ndarray:
  """One channel per foreground label, 1.0 inside it: thresholding the warped image recovers the labels."""
  return np.stack([(mask == 1), (mask == 2)], axis=-1).astype(np.float32)


def _labels_of(image: np.ndarray) -> np.ndarray:
  labels = np.zeros(image.shape[:2], np.int32)
  labels[image[..., 0] > 0.5] = 1
  labels[image[..., 1] > 0.5] = 2
  return labels


def _label_boundary(mask: np.ndarray) -> np.ndarray:
  """Pixels with a different label among their 3x3 neighbours (frame edges count as background)."""
  padded = np.pad(mask, 1)
  boundary = np.zeros(mask.shape, bool)
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      boundary |= padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]] != mask
  return boundary


def _run(image, mask, seed, cfg):
  out_image, out_mask = augment.augment_example(tf.constant(image), tf.constant(mask),
                                                tf.constant(seed, tf.int32), cfg)
  return out_image.numpy(), out_mask.numpy()


@pytest.mark.parametrize("name", sorted(_GEOMETRIC))
def test_geometric_transform_moves_image_and_mask_together(name):
  mask = _label_mask()
  image = _image_of(mask)
  cfg = _aug(**_GEOMETRIC[name])
  moved = 0
  for i in range(6):
    out_image, out_mask = _run(image, mask, [7, i], cfg)
    assert out_mask.dtype == np.int32 and out_image.dtype == np.float32
    assert set(np.unique(out_mask)) <= {0, 1, 2}
    assert 0.0 <= out_image.min() and out_image.max() <= 1.0
    mismatch = _labels_of(out_image) != out_mask
    # Bilinear-then-threshold and nearest may disagree only on label boundaries, never inside a region.
    assert not np.any(mismatch & ~_label_boundary(out_mask)), f"{name}: image and mask misaligned"
    assert mismatch.mean() < 0.02
    # Every label survives (the shapes sit well inside the frame).
    assert set(np.unique(out_mask)) == {0, 1, 2}
    moved += not np.array_equal(out_mask, mask)
  assert moved >= 2, f"{name} left the mask unchanged for almost every seed"


@pytest.mark.parametrize("axis,part", [(1, "hflip"), (0, "vflip")])
def test_flip_is_an_exact_mirror_or_nothing(axis, part):
  rng = np.random.default_rng(0)
  image = rng.random((_SIZE, _SIZE + 6, 1)).astype(np.float32)
  mask = rng.integers(0, 4, (_SIZE, _SIZE + 6)).astype(np.int32)
  flipped = set()
  for i in range(8):
    out_image, out_mask = _run(image, mask, [0, i], _aug(**{part: True}))
    if np.array_equal(out_mask, np.flip(mask, axis)):
      np.testing.assert_allclose(out_image, np.flip(image, axis), atol=1e-5)
      flipped.add(True)
    else:
      np.testing.assert_array_equal(out_mask, mask)
      np.testing.assert_allclose(out_image, image, atol=1e-5)
      flipped.add(False)
  assert flipped == {True, False}  # a fair coin over 8 seeds shows both sides


def test_scale_and_shift_stay_within_their_ranges():
  mask = _label_mask()
  area = (mask > 0).sum()
  ys, xs = np.nonzero(mask)
  for i in range(6):
    _, scaled = _run(_image_of(mask), mask, [1, i], _aug(scale_range=(0.8, 1.2)))
    ratio = (scaled > 0).sum() / area
    assert 0.8**2 * 0.93 <= ratio <= 1.2**2 * 1.07
    _, shifted = _run(_image_of(mask), mask, [2, i], _aug(shift_fraction=0.1))
    assert abs((shifted > 0).sum() / area - 1.0) < 0.01  # a shift keeps the area
    sy, sx = np.nonzero(shifted)
    assert abs(sy.mean() - ys.mean()) <= 0.1 * _SIZE + 1 and abs(sx.mean() - xs.mean()) <= 0.1 * _SIZE + 1


def test_rotation_keeps_area():
  mask = _label_mask()
  for i in range(4):
    _, rotated = _run(_image_of(mask), mask, [3, i], _aug(rotation_degrees=45.0))
    for label in (1, 2):
      assert abs((rotated == label).sum() / (mask == label).sum() - 1.0) < 0.08


def test_disabled_or_all_parts_off_is_identity():
  rng = np.random.default_rng(1)
  image = rng.random((_SIZE, _SIZE, 1)).astype(np.float32)
  mask = rng.integers(0, 3, (_SIZE, _SIZE)).astype(np.int32)
  off = _all_on()
  off.enabled = False
  for cfg in (off, _aug()):
    out_image, out_mask = _run(image, mask, [5, 5], cfg)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_deterministic_by_seed_and_seeds_differ():
  mask = _label_mask()
  image = _image_of(mask)[..., :1] * 0.5 + 0.25
  cfg = _all_on()
  a = _run(image, mask, [11, 3], cfg)
  b = _run(image, mask, [11, 3], cfg)
  c = _run(image, mask, [11, 4], cfg)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_eager_equals_inside_tf_data():
  rng = np.random.default_rng(2)
  images = rng.random((6, 48, 40, 1)).astype(np.float32)
  masks = rng.integers(0, 3, (6, 48, 40)).astype(np.int32)
  seeds = np.stack([np.full(6, 9), np.arange(6)], axis=1).astype(np.int32)
  cfg = _all_on()
  ds = tf.data.Dataset.from_tensor_slices((images, masks, seeds))
  ds = ds.map(lambda i, m, s: augment.augment_example(i, m, s, cfg), num_parallel_calls=4, deterministic=True)
  for k, (graph_image, graph_mask) in enumerate(ds.as_numpy_iterator()):
    eager_image, eager_mask = _run(images[k], masks[k], seeds[k], cfg)
    np.testing.assert_array_equal(graph_image, eager_image)
    np.testing.assert_array_equal(graph_mask, eager_mask)


@pytest.mark.parametrize("part", sorted(_INTENSITY))
def test_intensity_parts_change_only_the_image_within_unit_range(part):
  rng = np.random.default_rng(3)
  image = rng.uniform(0.05, 0.95, (32, 32, 1)).astype(np.float32)
  image[:4] = 0.0
  mask = rng.integers(0, 2, (32, 32)).astype(np.int32)
  out_image, out_mask = _run(image, mask, [4, 1], _aug(**{part: _INTENSITY[part]}))
  np.testing.assert_array_equal(out_mask, mask)
  assert 0.0 <= out_image.min() and out_image.max() <= 1.0
  assert not np.allclose(out_image, image, atol=1e-3)
  if part in ("gamma", "speckle"):  # multiplicative parts keep black black
    np.testing.assert_array_equal(out_image[:4], 0.0)


def test_speckle_has_the_configured_std():
  image = np.full((128, 128, 1), 0.5, np.float32)
  out, _ = _run(image, np.zeros((128, 128), np.int32), [6, 0], _aug(speckle=0.1))
  relative = out / 0.5 - 1.0
  assert abs(relative.mean()) < 0.005 and abs(relative.std() - 0.1) < 0.005


def test_switching_one_part_does_not_change_the_others():
  mask = _label_mask()
  image = _image_of(mask)[..., :1]
  geometric_only = _aug(**_GEOMETRIC["combined"])
  _, mask_a = _run(image, mask, [8, 2], geometric_only)
  _, mask_b = _run(image, mask, [8, 2], _all_on())
  np.testing.assert_array_equal(mask_a, mask_b)


@pytest.mark.parametrize("field,value", [("rotation_degrees", -1.0), ("contrast", 1.5), ("gamma", 1.0),
                                         ("scale_range", (1.2, 0.8)), ("scale_range", (0.0, 1.0)),
                                         ("projective", 0.3), ("speckle", -0.1)])
def test_bad_settings_name_their_config_field(field, value):
  with pytest.raises(ValueError, match=f"--config.augment.{field}"):
    _run(np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), np.int32), [0, 0], _aug(**{field: value}))
