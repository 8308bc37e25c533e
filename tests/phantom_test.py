"""The synthetic vein phantom: determinism, value ranges, vein masks, the same scene at every size."""

import numpy as np
import pytest
from scipy import ndimage

from veinjax.data import phantom


def test_same_seed_same_example_and_different_seeds_differ():
  image_a, mask_a = phantom.generate_example(7, 64)
  image_b, mask_b = phantom.generate_example(7, 64)
  np.testing.assert_array_equal(image_a, image_b)
  np.testing.assert_array_equal(mask_a, mask_b)
  image_c, _ = phantom.generate_example(8, 64)
  assert not np.array_equal(image_a, image_c)
  # Tuple seeds (split code, index) as the TFDS builder uses them.
  np.testing.assert_array_equal(phantom.generate_example((1, 3), 64)[0], phantom.generate_example((1, 3), 64)[0])
  assert not np.array_equal(phantom.generate_example((1, 3), 64)[0], phantom.generate_example((2, 3), 64)[0])


@pytest.mark.parametrize("size", [64, 96])
def test_types_ranges_and_vein_masks(size):
  ratios = []
  for seed in range(8):
    image, mask = phantom.generate_example(seed, size)
    assert image.shape == (size, size) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    _, num_veins = ndimage.label(mask)
    assert 1 <= num_veins <= 3, (seed, num_veins)
    assert image.std() > 10  # A textured frame, not a flat one.
    # Anechoic lumen: veins are darker than the tissue around them (much darker but for slow-flow "smoke").
    ring = ndimage.binary_dilation(mask, iterations=max(size // 16, 2)) & ~ndimage.binary_dilation(mask)
    ratios.append(image[mask == 1].mean() / image[ring].mean())
  assert max(ratios) < 0.85 and np.mean(ratios) < 0.6, ratios


def test_veins_lie_below_the_skin_and_inside_the_frame():
  for seed in range(8):
    _, mask = phantom.generate_example(seed, 64)
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    assert rows.min() > 64 * 0.05 and rows.max() < 63
    assert cols.min() > 0 and cols.max() < 63


def test_same_scene_at_every_size():
  for seed in range(10):
    _, small = phantom.generate_example(seed, 64)
    _, large = phantom.generate_example(seed, 128)
    large_down = large.reshape(64, 2, 64, 2).mean(axis=(1, 3)) >= 0.5
    iou = (large_down & (small == 1)).sum() / (large_down | (small == 1)).sum()
    assert iou > 0.8, (seed, iou)


def test_example_seeds_differ_between_splits():
  assert phantom.example_seed("train", 5) != phantom.example_seed("test", 5)
  assert phantom.example_seed("test", 5) == phantom.example_seed("test", 5)
  with pytest.raises(ValueError, match="valid"):
    phantom.example_seed("val", 0)


def test_too_small_size_is_rejected():
  with pytest.raises(ValueError, match="32"):
    phantom.generate_example(0, 16)
