r"""Frames per second of predict.py's work (`predict_lib.predict_to_dir`): a folder of phantom frames and a clip.

  python -m benchmarks.predict_speed --workdir=runs/quickstart [--num_frames=200] [--size=128] [--repeats=3]

Writes `num_frames` phantom test frames as PNGs and a phantom clip of as many frames as an MP4 into a temporary
directory, warms the Predictor up (compilation is not counted), then times the whole per-frame work: reading and
decoding, preprocessing, the batched forward pass, mapping back, writing mask / overlay PNGs and the CSV, and for
the clip the tracking and the overlay video. Median of `repeats` runs; the machine and its load in the output.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Sequence

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from veinjax import cli
from veinjax import frames
from veinjax import inference
from veinjax import predict_lib
from veinjax import timing
from veinjax.data import phantom
from veinjax.data import phantom_clips

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 200, "Frames in the folder and in the clip.")
_SIZE = flags.DEFINE_integer("size", 128, "Frame height and width.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per input; the median is reported.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Predictor batch size.")


def _make_inputs(root: str, num_frames: int, size: int) -> tuple[str, str]:
  folder = os.path.join(root, "frames")
  os.makedirs(folder)
  for i in range(num_frames):
    image, _ = phantom.generate_example((7, i), size)
    Image.fromarray(image).save(os.path.join(folder, f"frame_{i:04d}.png"))
  clip = phantom_clips.generate_clip(7, size=size, num_frames=num_frames)
  clip_path = os.path.join(root, "clip.mp4")
  writer = frames.VideoWriter(clip_path, clip.fps)
  for frame in clip.frames:
    writer.add(np.repeat(frame[..., None], 3, axis=-1))
  writer.close()
  return folder, clip_path


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs(__file__)
  predictor = inference.Predictor.from_workdir(_WORKDIR.value, batch_size=_BATCH_SIZE.value)
  with tempfile.TemporaryDirectory() as root:
    folder, clip_path = _make_inputs(root, _NUM_FRAMES.value, _SIZE.value)
    warm = [np.zeros((_SIZE.value, _SIZE.value), np.uint8)] * _BATCH_SIZE.value
    predictor.predict(warm)  # compiles the forward pass
    print(f"# {timing.device_description()}; 1-minute load before: {os.getloadavg()[0]:.1f}; model "
          f"{predictor.config.model} at {predictor.config.image_size}x{predictor.config.image_size}, batch "
          f"{_BATCH_SIZE.value}")
    for name, path in (("folder of PNGs", folder), ("clip (MP4, with tracking and overlay video)", clip_path)):
      rates = []
      for k in range(_REPEATS.value):
        summary = predict_lib.predict_to_dir(predictor, frames.open_source(path), os.path.join(root, f"out{k}"),
                                             log_every=10**9)
        rates.append(summary["frames_per_second"])
      print(f"{name}: {_NUM_FRAMES.value} frames of {_SIZE.value}x{_SIZE.value}: median "
            f"{statistics.median(rates):.1f} frames/s over {_REPEATS.value} runs "
            f"({', '.join(f'{r:.1f}' for r in rates)})")
    print(f"# 1-minute load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
