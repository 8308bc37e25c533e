"""veinjax.postprocess on hand-made masks: each step alone, their order, classes kept apart, the flag parser."""

import numpy as np
import pytest

from veinjax.postprocess import PostProcess, keep_largest, postprocess, remove_small


def _mask():
  """A 20x20 mask: a 5x5 square of class 1 with a 1-pixel hole, a 2x2 class-1 speck, a 3x3 class-2 block."""
  mask = np.zeros((20, 20), np.uint8)
  mask[2:7, 2:7] = 1
  mask[4, 4] = 0  # the hole
  mask[15:17, 15:17] = 1  # the speck (4 pixels)
  mask[10:13, 2:5] = 2
  return mask


def test_off_by_default_returns_the_mask_unchanged():
  mask = _mask()
  assert postprocess(mask, 3, PostProcess()) is mask


def test_min_size_removes_only_small_components():
  out = postprocess(_mask(), 3, PostProcess(min_size=5))
  assert out[15:17, 15:17].sum() == 0  # the 4-pixel speck is gone
  assert (out[2:7, 2:7] == 1).sum() == 24 and (out == 2).sum() == 9  # the rest untouched


def test_fill_holes_fills_the_hole_with_its_class():
  out = postprocess(_mask(), 3, PostProcess(fill_holes=True))
  assert out[4, 4] == 1 and (out[2:7, 2:7] == 1).all()


def test_largest_keeps_the_k_largest_per_class():
  out = postprocess(_mask(), 3, PostProcess(largest=1))
  assert out[15:17, 15:17].sum() == 0 and (out == 1).sum() == 24 and (out == 2).sum() == 9
  both = postprocess(_mask(), 3, PostProcess(largest=2))
  np.testing.assert_array_equal(both, _mask())


def test_fill_holes_never_overwrites_another_class():
  mask = np.zeros((9, 9), np.uint8)
  mask[1:8, 1:8] = 1
  mask[4, 4] = 2  # a class-2 pixel inside the class-1 ring is not a hole of class 1
  out = postprocess(mask, 3, PostProcess(fill_holes=True))
  assert out[4, 4] == 2


def test_eight_connectivity_joins_diagonal_pixels():
  binary = np.eye(5, dtype=bool)  # one diagonal line = one component of 5 pixels
  assert remove_small(binary, 5).sum() == 5
  assert keep_largest(binary, 1).sum() == 5


def test_parse_names_the_flag_on_bad_steps():
  assert PostProcess.parse("largest,fill_holes,min_size=20") == PostProcess(largest=1, fill_holes=True,
                                                                            min_size=20)
  assert PostProcess.parse("largest=3") == PostProcess(largest=3)
  assert PostProcess.parse("") == PostProcess()
  for bad, message in [("biggest", "unknown step 'biggest'"), ("min_size", "pixel count"),
                       ("largest=x", "not an integer"), ("fill_holes=1", "takes no value")]:
    with pytest.raises(ValueError, match=message):
      PostProcess.parse(bad)
  with pytest.raises(ValueError, match=">= 0"):
    PostProcess(min_size=-1)
