"""Decoding image and mask files: formats, bit depths, pixel modes, corrupt files; channel conversion."""

import numpy as np
from PIL import Image
import pytest

from veinjax.data import decode
from veinjax.data.decode import BadExampleError


def _gray(h=6, w=5):
  return ((np.arange(h * w).reshape(h, w) * 7) % 256).astype(np.uint8)


def test_grayscale_png_jpeg_bmp(tmp_path):
  gray = _gray()
  for ext in ("png", "bmp"):
    Image.fromarray(gray).save(tmp_path / f"a.{ext}")
    out = decode.read_image(tmp_path / f"a.{ext}")
    assert out.shape == (6, 5, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], gray)
  flat = np.full((16, 16), 90, np.uint8)  # JPEG is lossy: a flat image survives it.
  Image.fromarray(flat).save(tmp_path / "a.jpg", quality=95)
  out = decode.read_image(tmp_path / "a.jpg")
  assert out.shape == (16, 16, 1) and abs(int(out.mean()) - 90) <= 1


def test_rgb_rgba_and_palette_images_become_rgb(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (4, 3, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  np.testing.assert_array_equal(decode.read_image(tmp_path / "rgb.png"), rgb)
  rgba = np.concatenate([rgb, np.full((4, 3, 1), 7, np.uint8)], axis=2)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  np.testing.assert_array_equal(decode.read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped
  pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
  pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
  pal.save(tmp_path / "pal.png")
  out = decode.read_image(tmp_path / "pal.png")
  assert out.shape == (2, 2, 3)
  np.testing.assert_array_equal(out[0, 1], [200, 100, 50])  # the colour, for an image


def test_16bit_grayscale_is_scaled_to_8bit(tmp_path):
  values = np.array([[0, 257, 65535], [32896, 1000, 65280]], np.uint16)
  Image.fromarray(values).save(tmp_path / "g16.png")
  out = decode.read_image(tmp_path / "g16.png")[:, :, 0]
  np.testing.assert_array_equal(out, [[0, 1, 255], [128, 4, 254]])


def test_palette_mask_keeps_indices_not_colours(tmp_path):
  pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
  pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
  pal.save(tmp_path / "m.png")
  np.testing.assert_array_equal(decode.read_mask(tmp_path / "m.png"), [[0, 1], [2, 1]])


def test_gray_16bit_and_gray_as_rgb_masks_keep_values(tmp_path):
  Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "g.png")
  np.testing.assert_array_equal(decode.read_mask(tmp_path / "g.png"), [[0, 255]])
  Image.fromarray(np.array([[0, 300, 2]], np.uint16)).save(tmp_path / "g16.png")
  np.testing.assert_array_equal(decode.read_mask(tmp_path / "g16.png"), [[0, 300, 2]])
  Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)).save(tmp_path / "rgb.png")
  np.testing.assert_array_equal(decode.read_mask(tmp_path / "rgb.png"), [[0, 255]])


def test_colour_mask_is_an_error(tmp_path):
  Image.fromarray(np.array([[[255, 0, 0], [0, 0, 0]]], np.uint8)).save(tmp_path / "c.png")
  with pytest.raises(BadExampleError, match=r"c\.png.*colour"):
    decode.read_mask(tmp_path / "c.png")


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
  with pytest.raises(BadExampleError, match=r"corrupt\.png.*corrupt, truncated"):
    decode.read_image(tmp_path / "corrupt.png")
  noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
  Image.fromarray(noise).save(tmp_path / "full.png")
  data = (tmp_path / "full.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  with pytest.raises(BadExampleError, match=r"cut\.png"):
    decode.read_image(tmp_path / "cut.png")
  with pytest.raises(BadExampleError, match=r"cut\.png"):
    decode.read_mask(tmp_path / "cut.png")
  Image.fromarray(noise).save(tmp_path / "full.jpg")
  data = (tmp_path / "full.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
  with pytest.raises(BadExampleError, match=r"cut\.jpg"):
    decode.read_image(tmp_path / "cut.jpg")


def test_to_channels_luma_and_replication():
  tf = pytest.importorskip("tensorflow")
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top
  rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  gray = sources.to_channels(tf.constant(rgb), 1).numpy()
  assert gray.shape == (5, 7, 1) and gray.dtype == np.uint8
  expected = np.floor(rgb.astype(np.float64) @ [0.299, 0.587, 0.114] + 0.5)
  np.testing.assert_allclose(gray[:, :, 0], expected, atol=1)
  # PIL's "L" conversion is also ITU-R 601 luma: the two agree to rounding.
  np.testing.assert_allclose(gray[:, :, 0], np.asarray(Image.fromarray(rgb).convert("L")), atol=1)
  same = np.repeat(rgb[:, :, :1], 3, axis=2)  # gray stored as RGB converts back exactly
  np.testing.assert_array_equal(sources.to_channels(tf.constant(same), 1).numpy(), rgb[:, :, :1])
  tiled = sources.to_channels(tf.constant(rgb[:, :, :1]), 3).numpy()
  np.testing.assert_array_equal(tiled, np.repeat(rgb[:, :, :1], 3, axis=2))
