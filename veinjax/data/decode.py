"""Reading image and mask files into numpy arrays (PIL), with errors that name the file and the fix.

- Images: PNG, JPEG, BMP (and TIFF), 8- or 16-bit, grayscale, RGB, RGBA or palette. `read_image` returns
  uint8 [H, W, 1] for grayscale files and uint8 [H, W, 3] for colour ones (palette and RGBA are converted to
  RGB first; alpha is dropped). 16-bit samples are scaled linearly to 8 bits (65535 -> 255). Conversion to the
  model's channel count (ITU-R 601 luma for grayscale) happens later, once, in `veinjax.data.sources`.
- Masks: `read_mask` returns the stored values, [H, W] integers: palette PNGs keep their palette INDICES (the
  class values), never their colours; 16-bit masks keep their values. Mapping values to classes is the
  caller's job (`veinjax.data.folder`).
- A file that cannot be decoded (corrupt, truncated, not an image) raises `BadExampleError` naming it.
"""

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

PathLike = Union[str, Path]

# Extensions read as images; anything else in an images folder (e.g. Labelme JSON) is not an image.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class BadExampleError(ValueError):
  """One example cannot be used. The message names the file(s) and says how to fix it.

  With `config.dataset.on_bad_example="skip"` such examples are skipped (and logged) instead of failing.
  """


def _open(path: PathLike, what: str) -> Image.Image:
  """Opens and fully decodes a file, so that truncation and corruption surface here, with the file name."""
  try:
    image = Image.open(path)
    image.load()
  except FileNotFoundError:
    raise BadExampleError(f"{what} file not found: {path}") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadExampleError(
        f"cannot decode {what} file {path}: {e}. The file is corrupt, truncated or not an image; "
        f"re-export it, or remove it (or set --config.dataset.on_bad_example=skip)."
    ) from None
  return image


def _scale_16bit(array: np.ndarray) -> np.ndarray:
  """Linear 16-bit -> 8-bit: 0 -> 0, 65535 -> 255, rounded."""
  return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def read_image(path: PathLike) -> np.ndarray:
  """Reads an image file as uint8 [H, W, 1] (grayscale) or [H, W, 3] (colour)."""
  return image_to_array(_open(path, "image"), path)


def image_to_array(image: Image.Image, path: PathLike) -> np.ndarray:
  """A decoded Pillow image (a file, or one page of a multi-frame TIFF/GIF) -> uint8 [H, W, 1 or 3]."""
  mode = image.mode
  if mode in ("1", "L"):
    array = np.asarray(image.convert("L"))
  elif mode == "LA":
    array = np.asarray(image.getchannel("L"))
  elif mode.startswith("I;16") or mode == "I":
    # 16-bit grayscale (Pillow opens 16-bit PNGs as "I;16" or "I").
    array = _scale_16bit(np.clip(np.asarray(image), 0, 65535))
  elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
    if mode in ("P", "PA"):  # Palette: through RGBA so that a transparency entry does not warn.
      image = image.convert("RGBA")
    array = np.asarray(image.convert("RGB"))
  else:
    raise BadExampleError(
        f"image file {path} has an unsupported pixel mode {mode!r}; save it as 8- or 16-bit grayscale, RGB, "
        f"RGBA or palette PNG/JPEG/BMP.")
  if array.ndim == 2:
    array = array[:, :, None]
  return np.ascontiguousarray(array, dtype=np.uint8)


def read_mask(path: PathLike) -> np.ndarray:
  """Reads a label mask: [H, W] stored values (uint8, or int32 for 16-bit masks).

  Palette PNGs give their indices, grayscale their gray values, 1-bit PNGs 0/1. An RGB(A) file whose channels
  are all equal (a grayscale mask saved as RGB) gives that gray value; a truly coloured mask is an error.
  """
  image = _open(path, "mask")
  mode = image.mode
  if mode in ("P", "L"):
    array = np.asarray(image)
  elif mode == "1":
    array = np.asarray(image).astype(np.uint8)
  elif mode in ("PA", "LA"):
    array = np.asarray(image)[:, :, 0]  # The index / gray channel; alpha is not a label.
  elif mode.startswith("I;16") or mode == "I":
    array = np.asarray(image).astype(np.int32)
  elif mode in ("RGB", "RGBA"):
    rgb = np.asarray(image)[:, :, :3]
    if not (np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])):
      raise BadExampleError(
          f"mask file {path} is a colour ({mode}) image; a mask must hold class values: save it as a "
          f"grayscale or palette (indexed) PNG whose values are listed in --config.dataset.mask_values.")
    array = rgb[:, :, 0]
  else:
    raise BadExampleError(
        f"mask file {path} has an unsupported pixel mode {mode!r}; save it as an 8- or 16-bit grayscale "
        f"or palette PNG.")
  return np.ascontiguousarray(array)


def frame_to_uint8(frame: np.ndarray, what: str = "frame") -> np.ndarray:
  """An in-memory frame -> uint8 [H, W, 1] or [H, W, 3], as `read_image` turns a file into one.

  Grayscale [H, W] or [H, W, 1], gray + alpha [H, W, 2] (alpha dropped), RGB [H, W, 3], RGBA [H, W, 4]
  (alpha dropped); uint8 as it is, uint16 scaled linearly to 8 bits (65535 -> 255) as 16-bit files are.
  Anything else is a `BadExampleError` naming `what` and the fix.
  """
  array = np.asarray(frame)
  if array.dtype == np.uint16:
    array = _scale_16bit(array)
  elif array.dtype != np.uint8:
    raise BadExampleError(f"{what} has dtype {array.dtype}; give uint8 (or 16-bit uint16) pixel values, e.g. "
                          "as read from an image file (float images: scale to 0..255 and cast to uint8).")
  if array.ndim == 2:
    array = array[:, :, None]
  if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
    raise BadExampleError(f"{what} has shape {array.shape}; expected [H, W] gray or [H, W, C] with C = 1 "
                          "(gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).")
  if array.shape[-1] == 2:
    array = array[:, :, :1]
  elif array.shape[-1] == 4:
    array = array[:, :, :3]
  return np.ascontiguousarray(array)
