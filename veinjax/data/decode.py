"""Reading image and mask files into numpy arrays (PIL), with errors that name the file and the fix.

- Images: PNG, JPEG, BMP (and TIFF), 8- or 16-bit, grayscale, RGB, RGBA or palette. `read_image` returns
  uint8 [H, W, 1] for grayscale files and uint8 [H, W, 3] for colour ones (palette and RGBA are converted to
  RGB first; alpha is dropped). An EXIF orientation tag (phones, some scanners' JPEGs) is applied, so the
  pixels are the upright picture a viewer shows (`PIL.ImageOps.exif_transpose`); the size is then the upright
  one. Conversion to the model's channel count (ITU-R 601 luma for grayscale) happens later, once, in
  `veinjax.data.sources`.
- 16-bit grayscale images become 8 bits by a rule, `high_bit_depth` (`config.dataset.high_bit_depth`, logged
  once per process and rule): "16" scales 0..65535 linearly to 0..255 (65535 -> 255, rounded); "12" scales
  0..4095 (a sample above 4095 is an error naming the file); "minmax" stretches each image's own minimum..
  maximum to 0..255; "auto" (the default) uses the bit depth the file records in its PNG sBIT chunk (Pillow
  does not parse it; `png_significant_bits` reads it): b significant bits scale 0..2^b-1, unless a sample
  exceeds 2^b-1, which means the samples were scaled up to 16 bits as the PNG standard prescribes and "16"
  applies; without an sBIT chunk (or sBIT = 16, or not a PNG) "auto" is "16", so true 16-bit data is read as
  it always was. Raw 12-bit samples in a 16-bit file without sBIT need "12" (or "minmax"): read as 16-bit,
  they would fill only 17 of the 256 gray levels.
- Masks: `read_mask` returns the stored values, [H, W] integers: palette PNGs keep their palette INDICES (the
  class values), never their colours; 16-bit masks keep their values. An EXIF orientation is applied as for
  images (masks are normally PNGs without one). Mapping values to classes is the caller's job
  (`veinjax.data.folder`).
- A file that cannot be decoded (corrupt, truncated, not an image) raises `BadExampleError` naming it.
  `check_file` finds that cheaply, from the headers, without keeping the pixels (before a long training).
"""

import struct
from pathlib import Path
from typing import Optional, Tuple, Union

from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageOps

PathLike = Union[str, Path]

# Extensions read as images; anything else in an images folder (e.g. Labelme JSON) is not an image.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# How 16-bit grayscale samples become 8 bits (`config.dataset.high_bit_depth`; see the module docstring).
HIGH_BIT_DEPTHS = ("auto", "16", "12", "minmax")
_HIGH_BIT_FLAG = "--config.dataset.high_bit_depth"
_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_logged_rules: set = set()  # (rule, depth) pairs already logged by this process


class BadExampleError(ValueError):
  """One example cannot be used. The message names the file(s) and says how to fix it.

  With `config.dataset.on_bad_example="skip"` such examples are skipped (and logged) instead of failing.
  """


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _undecodable(path: PathLike, what: str, error: Exception) -> BadExampleError:
  return BadExampleError(
      f"cannot decode {what} file {path}: {error}. The file is corrupt, truncated or not an image; "
      f"re-export it, or remove it (or set --config.dataset.on_bad_example=skip).")


def _is_16bit(mode: str) -> bool:
  return mode.startswith("I;16") or mode == "I"


def _open(path: PathLike, what: str) -> Image.Image:
  """Opens and fully decodes a file, so that truncation and corruption surface here, with the file name.

  The EXIF orientation is applied; a 16-bit PNG's sBIT depth is kept in `image.info["significant_bits"]`.
  """
  try:
    image = Image.open(path)
    image.load()
    significant_bits = png_significant_bits(path) if image.format == "PNG" and _is_16bit(image.mode) else None
    image = _upright(image)
  except FileNotFoundError:
    raise BadExampleError(f"{what} file not found: {path}") from None
  except _DECODE_ERRORS as e:
    raise _undecodable(path, what, e) from None
  if significant_bits is not None:
    image.info["significant_bits"] = significant_bits
  return image


def _orientation(image: Image.Image, loaded: bool = True) -> int:
  """The EXIF orientation (1 = upright). Of a PNG not yet decoded only an EXIF chunk before the pixels is
  read (Pillow would decode the whole file to look for one after them), so that `check_file` stays cheap."""
  if not loaded and image.format == "PNG" and "exif" not in image.info:
    return 1
  try:
    return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
  except Exception:  # pylint: disable=broad-except  (unreadable EXIF: as if there were none)
    return 1


def _upright(image: Image.Image) -> Image.Image:
  """The image with its EXIF orientation applied (a copy), or the image itself when it has none."""
  if _orientation(image) == 1:
    return image
  return ImageOps.exif_transpose(image)


def check_file(path: PathLike, what: str = "image") -> Tuple[int, int]:
  """Checks that `path` decodes, cheaply; returns its upright (width, height) (EXIF orientation applied).

  PNGs are verified (`Image.verify`: every chunk and its CRC, so corruption and truncation are found
  without decompressing into an image); other formats, whose `verify` checks nothing, are decoded. Raises
  `BadExampleError` naming the file, as `read_image` / `read_mask` would.
  """
  try:
    with Image.open(path) as image:
      size = image.size
      swapped = _orientation(image, loaded=False) in (5, 6, 7, 8)  # a quarter turn: width and height exchange
      if image.format == "PNG":
        image.verify()
      else:
        image.load()
  except FileNotFoundError:
    raise BadExampleError(f"{what} file not found: {path}") from None
  except _DECODE_ERRORS as e:
    raise _undecodable(path, what, e) from None
  return (size[1], size[0]) if swapped else size


def png_significant_bits(path: PathLike) -> Optional[int]:
  """The significant bits of a PNG's (first) gray or colour channel from its sBIT chunk, or None.

  The chunks before the image data are walked (sBIT must come before IDAT); a file that is not a PNG, has
  no sBIT or has an invalid one gives None.
  """
  with open(path, "rb") as f:
    if f.read(8) != _PNG_SIGNATURE:
      return None
    while True:
      header = f.read(8)
      if len(header) < 8:
        return None
      length, kind = struct.unpack(">I4s", header)
      if kind == b"sBIT":
        data = f.read(length)
        return int(data[0]) if data and 1 <= data[0] <= 16 else None
      if kind in (b"IDAT", b"IEND"):
        return None
      f.seek(length + 4, 1)  # the chunk's data and CRC


def check_high_bit_depth(rule) -> str:
  """config.dataset.high_bit_depth as one of HIGH_BIT_DEPTHS (12 and 16 may be given as integers)."""
  rule = str(rule)
  if rule not in HIGH_BIT_DEPTHS:
    raise ValueError(f"{_HIGH_BIT_FLAG}={rule!r}; valid: {', '.join(HIGH_BIT_DEPTHS)} (how 16-bit grayscale "
                     "images become 8 bits: auto = the PNG's sBIT depth if it has one, else 16).")
  return rule


def _scale(array: np.ndarray, maximum: int) -> np.ndarray:
  """Linear 0..maximum -> 0..255, rounded (maximum 65535: 0 -> 0, 65535 -> 255)."""
  return ((array.astype(np.uint32) * 255 + maximum // 2) // maximum).astype(np.uint8)


def _scale_16bit(array: np.ndarray) -> np.ndarray:
  """Linear 16-bit -> 8-bit: 0 -> 0, 65535 -> 255, rounded."""
  return _scale(array, 65535)


def _log_rule_once(rule: str, depth, path: PathLike, why: str) -> None:
  if (rule, depth) in _logged_rules:
    return
  _logged_rules.add((rule, depth))
  logging.info("16-bit grayscale images become 8 bits by %s=%s: %s (first such file: %s).", _HIGH_BIT_FLAG,
               rule, why, path)


def high_bit_to_uint8(array: np.ndarray, path: PathLike, rule: str = "auto",
                      significant_bits: Optional[int] = None) -> np.ndarray:
  """16-bit grayscale samples -> uint8 by `rule` (see the module docstring); logs the rule once."""
  rule = check_high_bit_depth(rule)
  array = np.clip(array, 0, 65535)
  if rule == "minmax":
    low, high = int(array.min()), int(array.max())
    _log_rule_once(rule, None, path, "each image's minimum..maximum stretched to 0..255")
    if high == low:
      return np.zeros(array.shape, np.uint8)
    shifted = array.astype(np.uint32) - low
    return ((shifted * 255 + (high - low) // 2) // (high - low)).astype(np.uint8)
  if rule == "12":
    if array.max() > 4095:
      raise BadExampleError(
          f"image file {path} has a sample of {int(array.max())}, above 4095, so it does not hold 12-bit "
          f"data as {_HIGH_BIT_FLAG}=12 says; set it to 16, auto or minmax.")
    _log_rule_once(rule, 12, path, "12-bit samples, 0..4095 -> 0..255")
    return _scale(array, 4095)
  bits = 16
  if rule == "auto" and significant_bits is not None and significant_bits < 16:
    if array.max() <= (1 << significant_bits) - 1:
      bits = significant_bits
  if rule == "auto":
    why = (f"its PNG sBIT depth, {bits} bits, 0..{(1 << bits) - 1} -> 0..255" if bits < 16 else
           "16 bits, 0..65535 -> 0..255 (no sBIT chunk below 16 bits, or samples already scaled to 16 bits)")
  else:
    why = "16 bits, 0..65535 -> 0..255"
  _log_rule_once(rule, bits, path, why)
  return _scale(array, (1 << bits) - 1)


def read_image(path: PathLike, high_bit_depth: str = "auto") -> np.ndarray:
  """Reads an image file as uint8 [H, W, 1] (grayscale) or [H, W, 3] (colour), upright (EXIF orientation).

  `high_bit_depth`: how a 16-bit grayscale image becomes 8 bits (HIGH_BIT_DEPTHS; the module docstring).
  """
  return image_to_array(_open(path, "image"), path, high_bit_depth)


def image_to_array(image: Image.Image, path: PathLike, high_bit_depth: str = "auto") -> np.ndarray:
  """A decoded Pillow image (a file, or one page of a multi-frame TIFF/GIF) -> uint8 [H, W, 1 or 3]."""
  mode = image.mode
  if mode in ("1", "L"):
    array = np.asarray(image.convert("L"))
  elif mode == "LA":
    array = np.asarray(image.getchannel("L"))
  elif _is_16bit(mode):
    # 16-bit grayscale (Pillow opens 16-bit PNGs as "I;16" or "I").
    array = high_bit_to_uint8(np.asarray(image), path, high_bit_depth, image.info.get("significant_bits"))
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
  elif _is_16bit(mode):
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
