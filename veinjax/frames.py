"""Frames to predict on, from an image file, a folder, a glob or a clip, read lazily (Pillow and PyAV).

  source = open_source("scan.mp4")            # or "frame.png", "folder/", "data/*.png", "sweep.tif"
  for name, frame in source.frames(): ...     # unique names, frames as decoded (uint8 / uint16 arrays)

A clip is a video (mp4, avi, mov, mkv, webm: PyAV, which bundles FFmpeg) or a multi-frame TIFF or GIF
(Pillow); its frames are named <clip>_<index> and `source.is_clip` is True, with `source.fps`. Images are
decoded by `veinjax.data.decode.read_image`, as training reads them. A file that cannot be read, a clip with
no frames, a folder without images or a glob without matches is a `BadExampleError` naming the path and the
fix; `skip_bad=True` logs and counts unreadable image files (and clip frames) instead. 16-bit grayscale
images become 8 bits by `high_bit_depth` (predict.py: the run's config.dataset.high_bit_depth, as training).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from absl import logging

from veinjax import files
from veinjax.data.decode import IMAGE_EXTENSIONS, BadExampleError, read_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
MULTI_FRAME_EXTENSIONS = (".tif", ".tiff", ".gif")
_DEFAULT_FPS = 10.0


@dataclasses.dataclass
class FrameSource:
  """Frames of one input path; `frames()` yields (name, array) pairs in order."""
  path: str
  files: list[Path]  # the image files (empty for a clip)
  is_clip: bool = False
  fps: float = _DEFAULT_FPS
  skip_bad: bool = False
  skipped: list[str] = dataclasses.field(default_factory=list)
  high_bit_depth: str = "auto"  # how 16-bit grayscale becomes 8 bits (veinjax.data.decode.HIGH_BIT_DEPTHS)

  def frames(self) -> Iterator[tuple[str, np.ndarray]]:
    if self.is_clip:
      yield from _clip_frames(self)
      return
    for path in self.files:
      try:
        yield (path.stem if len(self.files) == 1 else _unique_stem(path, self.files),
               read_image(path, self.high_bit_depth))
      except BadExampleError as e:
        if not self.skip_bad:
          raise BadExampleError(f"{e} (or pass --on_bad_frame=skip)") from None
        logging.warning("Skipped: %s", e)
        self.skipped.append(str(path))


def _unique_stem(path: Path, files: list[Path]) -> str:
  """The file's stem, with its folder prefixed where two files share a stem (glob over folders)."""
  if sum(f.stem == path.stem for f in files) == 1:
    return path.stem
  return "__".join(path.with_suffix("").parts[-2:])


def _is_multi_frame_image(path: Path) -> bool:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      return getattr(image, "n_frames", 1) > 1
  except OSError:
    return False  # read_image will name the problem


def open_source(path: str, skip_bad: bool = False) -> FrameSource:
  """The frames at `path` (see the module docstring)."""
  if any(ch in path for ch in "*?["):
    files = sorted(Path(p) for p in glob.glob(path) if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
      raise BadExampleError(f"--input={path} matches no image file ({', '.join(IMAGE_EXTENSIONS)}); check the "
                            "pattern (quote it so the shell does not expand it).")
    return FrameSource(path, files, skip_bad=skip_bad)
  p = Path(path)
  if p.is_dir():
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
      raise BadExampleError(f"--input={path} is a folder without images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "point it at the folder that holds the frames.")
    return FrameSource(path, files, skip_bad=skip_bad)
  if not p.exists():
    raise BadExampleError(f"--input={path} does not exist; give an image, a folder, a glob or a clip.")
  suffix = p.suffix.lower()
  if suffix in VIDEO_EXTENSIONS:
    return FrameSource(path, [], is_clip=True, fps=_video_fps(p), skip_bad=skip_bad)
  if suffix in MULTI_FRAME_EXTENSIONS and _is_multi_frame_image(p):
    return FrameSource(path, [], is_clip=True, skip_bad=skip_bad)
  if suffix in IMAGE_EXTENSIONS or suffix == ".gif":
    return FrameSource(path, [p], skip_bad=skip_bad)
  raise BadExampleError(f"--input={path}: unknown file type {suffix!r}; give an image "
                        f"({', '.join(IMAGE_EXTENSIONS)}), a clip ({', '.join(VIDEO_EXTENSIONS + ('.gif',))}, "
                        "multi-frame .tif), a folder or a glob.")


def _av():
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("Reading and writing video clips needs PyAV: pip install av") from None
  return av


def _video_fps(path: Path) -> float:
  av = _av()
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise BadExampleError(f"{path} holds no video stream; give a clip with video frames.")
      rate = container.streams.video[0].average_rate
      return float(rate) if rate else _DEFAULT_FPS
  except av.error.FFmpegError as e:
    raise BadExampleError(f"cannot open clip {path}: {e}. The file is corrupt, truncated or not a video; "
                          "re-export it.") from None


def _clip_frames(source: FrameSource) -> Iterator[tuple[str, np.ndarray]]:
  path = Path(source.path)
  frames = (_video_frames(path) if path.suffix.lower() in VIDEO_EXTENSIONS
            else _image_sequence(path, source.high_bit_depth))
  count = 0
  for frame in frames:
    yield f"{path.stem}_{count:05d}", frame
    count += 1
  if count == 0:
    raise BadExampleError(f"clip {path} has no frames that decode; re-export it.")


def _video_frames(path: Path) -> Iterator[np.ndarray]:
  av = _av()
  try:
    with av.open(str(path)) as container:
      for frame in container.decode(video=0):
        yield frame.to_ndarray(format="rgb24")
  except av.error.FFmpegError as e:
    # Frames decoded before the damage have been yielded (and written); say where it broke.
    raise BadExampleError(f"clip {path} stops decoding: {e}. It is corrupt or truncated; re-export it "
                          "(every frame before the damage has been written).") from None


def _image_sequence(path: Path, high_bit_depth: str = "auto") -> Iterator[np.ndarray]:
  from PIL import Image, ImageSequence  # pylint: disable=g-import-not-at-top
  from veinjax.data import decode  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      for page in ImageSequence.Iterator(image):
        yield decode.image_to_array(page.copy(), path, high_bit_depth)
  except (OSError, SyntaxError, ValueError) as e:
    raise BadExampleError(f"cannot decode clip {path}: {e}; re-export it.") from None


class VideoWriter:
  """Writes uint8 RGB frames [H, W, 3] as an MPEG-4 video, frame by frame (dimensions padded to even, as
  yuv420p needs). The file appears under its name only when `close()` finishes it; a write that fails
  removes the partial file (a full disk raises `files.DiskFullError`)."""

  def __init__(self, path: str, fps: float):
    self.path, self.fps = path, fps
    self._tmp = f"{path}.tmp{os.path.splitext(path)[1]}"
    self._container = self._stream = None

  def add(self, frame: np.ndarray) -> None:
    try:
      self._add(frame)
    except Exception as e:  # pylint: disable=broad-except  (re-raised, a full disk as DiskFullError)
      self._abort(e)
      raise

  def _abort(self, error: Exception) -> None:
    """Drops the partial file after a failed write; raises `files.DiskFullError` for a full disk."""
    container, self._container = self._container, None
    if container is not None:
      with contextlib.suppress(Exception):
        container.close()
    with contextlib.suppress(OSError):
      os.remove(self._tmp)
    if files.is_disk_full(error):
      raise files.disk_full_error(self.path, error) from error

  def _add(self, frame: np.ndarray) -> None:
    av = _av()
    height, width = frame.shape[:2]
    if self._container is None:
      self._container = av.open(self._tmp, mode="w")
      self._stream = self._container.add_stream("mpeg4", rate=max(1, round(self.fps)))
      self._stream.width, self._stream.height = width + width % 2, height + height % 2
      self._stream.pix_fmt, self._stream.bit_rate = "yuv420p", 4_000_000
    padded = np.zeros((self._stream.height, self._stream.width, 3), np.uint8)
    padded[:height, :width] = frame[:self._stream.height, :self._stream.width]
    for packet in self._stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
      self._container.mux(packet)

  def close(self) -> None:
    if self._container is None:
      return
    try:
      for packet in self._stream.encode():
        self._container.mux(packet)
      self._container.close()
      self._container = None
      os.replace(self._tmp, self.path)
    except Exception as e:  # pylint: disable=broad-except  (re-raised, a full disk as DiskFullError)
      self._abort(e)
      raise
