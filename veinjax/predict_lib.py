"""predict.py's work: run a `Predictor` over a frame source and write every frame's results as it is done.

  summary = predict_to_dir(predictor, frames.open_source(path), output_dir, ...)

OUTPUT/ afterwards holds:
  masks/<frame>.png           class indices at the frame's own size (0 = background)
  overlays/<frame>.png        the frame with the foreground classes blended over it
  probabilities/<frame>.npy   float32 [H, W, C] (with save_probabilities)
  predictions.csv             one row per frame and foreground class: frame, class, area_px, area_mm2
  <clip>_overlay.mp4          for a clip: the overlays as a video, each tracked vessel labelled with its id
  tracks.csv                  for a clip: every vessel track per frame (veinjax.analysis.tracking; a header
                              alone = nothing was tracked)

Every file is written whole (a temporary file renamed into place, `veinjax.files`) and each frame's CSV rows are
appended whole once its files are written, so a run stopped midway leaves each finished frame intact and no
half-written file or CSV line. A full disk stops it with `files.DiskFullError`, which says how many frames are done.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from collections.abc import Iterator

import numpy as np
from absl import logging

from veinjax import files
from veinjax import frames as frames_lib
from veinjax import inference
from veinjax import viz
from veinjax.analysis import tracking
from veinjax.data import decode

CSV_FIELDS = ("frame", "class", "area_px", "area_mm2")


def _save_npy(path: str, array: np.ndarray) -> None:
  with files.written_whole(path, suffix=".tmp.npy") as tmp:
    np.save(tmp, array)


def _write_frame(dirs: dict[str, str], name: str, result, overlay: np.ndarray, save_probabilities: bool) -> None:
  """masks/<name>.png, overlays/<name>.png [, probabilities/<name>.npy]: all of them or none (a write that
  fails removes the frame's files written before it)."""
  written = []
  try:
    path = os.path.join(dirs["masks"], f"{name}.png")
    files.write_bytes(path, viz.encode_png(result.mask))
    written.append(path)
    path = os.path.join(dirs["overlays"], f"{name}.png")
    files.write_bytes(path, viz.encode_png(overlay))
    written.append(path)
    if save_probabilities:
      _save_npy(os.path.join(dirs["probabilities"], f"{name}.npy"), result.probabilities)
  except BaseException:
    for path in written:
      with contextlib.suppress(OSError):
        os.remove(path)
    raise


def _csv_bytes(rows: list[dict], header: bool = False) -> bytes:
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
  if header:
    writer.writeheader()
  writer.writerows(rows)
  return text.getvalue().encode("utf-8")


def prepare_output_dir(output_dir: str, save_probabilities: bool) -> dict[str, str]:
  """Creates OUTPUT/{masks,overlays[,probabilities]}; an output path that is a file is an error."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(f"--output={output_dir} is a file; give a directory (it is created if missing).")
  dirs = {"masks": os.path.join(output_dir, "masks"), "overlays": os.path.join(output_dir, "overlays")}
  if save_probabilities:
    dirs["probabilities"] = os.path.join(output_dir, "probabilities")
  for d in dirs.values():
    os.makedirs(d, exist_ok=True)
  return dirs


def _batches(source: frames_lib.FrameSource, size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
  batch = []
  for item in source.frames():
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _csv_rows(name: str, mask: np.ndarray, num_labels: int, spacing_mm: float) -> list[dict]:
  areas = np.bincount(mask.ravel(), minlength=num_labels)
  return [{"frame": name, "class": c, "area_px": int(areas[c]),
           "area_mm2": round(float(areas[c]) * spacing_mm ** 2, 4) if spacing_mm > 0 else ""}
          for c in range(1, num_labels)]


def _label_tracks(overlays: list[np.ndarray], tracks: list[tracking.Track]) -> list[np.ndarray]:
  """The overlays with each track's id written at its centroid in every frame it is in."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  labelled = []
  for index, overlay in enumerate(overlays):
    image = Image.fromarray(overlay)
    draw = ImageDraw.Draw(image)
    for trk in tracks:
      point = trk.point_at(index)
      if point is not None:
        draw.text((point.centroid_x_px + 3, point.centroid_y_px - 5), str(trk.id),
                  fill=(255, 255, 0) if not point.predicted else (160, 160, 160))
    labelled.append(np.asarray(image))
  return labelled


def _write_clip_outputs(output_dir: str, source: frames_lib.FrameSource, masks: list[np.ndarray],
                        overlays: list[np.ndarray], pixel_spacing_mm: float) -> tuple[str, str]:
  """tracks.csv and the labelled overlay video of a clip; returns their paths."""
  tracks = tracking.track(masks, pixel_spacing_mm=pixel_spacing_mm or None) if masks else []
  tracks_path = os.path.join(output_dir, "tracks.csv")
  with files.written_whole(tracks_path) as tmp:
    rows = tracking.write_tracks_csv(tracks, tmp)
  logging.info("Tracked %d vessel(s) over %d frames (%d rows) -> %s", len(tracks), len(masks), rows, tracks_path)
  stem = os.path.splitext(os.path.basename(source.path))[0]
  video = frames_lib.VideoWriter(os.path.join(output_dir, f"{stem}_overlay.mp4"), source.fps)
  for frame in _label_tracks(overlays, tracks):
    video.add(frame)
  video.close()
  return tracks_path, video.path


def predict_to_dir(predictor: inference.Predictor, source: frames_lib.FrameSource, output_dir: str, *,
                   save_probabilities: bool = False, pixel_spacing_mm: float = 0.0,
                   log_every: int = 50) -> dict:
  """Predicts every frame of `source` into `output_dir` (see the module docstring); returns a summary:
  {"frames", "skipped", "seconds", "frames_per_second", "csv", "video", "tracks"}.

  A clip's masks and overlays are kept in memory for the tracker and the video (about 4 bytes per pixel
  and frame).

  Raises:
    files.DiskFullError: the disk filled up (or the quota ran out); the message says how many frames are
      done (their files whole, their rows in predictions.csv) and that no half-written file is left.
  """
  if pixel_spacing_mm < 0:
    raise ValueError(f"--pixel_spacing_mm={pixel_spacing_mm} must be >= 0 (0 = pixels only).")
  dirs = prepare_output_dir(output_dir, save_probabilities)
  csv_path = os.path.join(output_dir, "predictions.csv")
  clip_masks, clip_overlays = [], []
  done, start = 0, time.perf_counter()
  try:
    with open(csv_path, "wb", buffering=0) as f:  # unbuffered: a failed append is cut back at once
      files.append_whole(f, _csv_bytes([], header=True), csv_path)
      for batch in _batches(source, predictor.batch_size):
        results = predictor.predict([frame for _, frame in batch])
        for (name, frame), result in zip(batch, results):
          overlay = viz.overlay(decode.frame_to_uint8(frame), result.mask)
          _write_frame(dirs, name, result, overlay, save_probabilities)
          files.append_whole(f, _csv_bytes(_csv_rows(name, result.mask, predictor.num_labels, pixel_spacing_mm)),
                             csv_path)
          done += 1
          if source.is_clip:
            clip_masks.append(result.mask)
            clip_overlays.append(overlay)
        if done % log_every < len(batch):
          rate = done / max(time.perf_counter() - start, 1e-9)
          logging.info("%d frames (%.1f frames/s)", done, rate)
    seconds = time.perf_counter() - start
    tracks_path = video_path = None
    if source.is_clip:
      tracks_path, video_path = _write_clip_outputs(output_dir, source, clip_masks, clip_overlays, pixel_spacing_mm)
  except files.DiskFullError as e:
    clip = " (the clip's tracks.csv and overlay video are not written)" if source.is_clip else ""
    raise files.disk_full_error(
        e.filename, e, kept=f"No half-written file is left: {output_dir} holds the results of the first {done} "
        f"frame(s) and nothing of the next, and predictions.csv lists exactly those{clip}.",
        then="run the same command again (it predicts every frame again)") from e
  summary = {"frames": done, "skipped": list(source.skipped), "seconds": seconds,
             "frames_per_second": done / seconds if seconds > 0 else float("nan"), "csv": csv_path,
             "video": video_path, "tracks": tracks_path}
  logging.info("Predicted %d frames in %.1f s (%.1f frames/s)%s into %s.", done, seconds,
               summary["frames_per_second"],
               f"; skipped {len(source.skipped)} unreadable file(s)" if source.skipped else "", output_dir)
  return summary
