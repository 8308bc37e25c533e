"""Runs trained veinjax models on new frames: flags -> `veinjax.inference.Predictor` -> masks, overlays, CSV.

  python predict.py --workdir=runs/quickstart --input=PATH --output=DIR [--checkpoint=best]
      [--postprocess=largest,fill_holes,min_size=20] [--tta=hflip] [--batch_size=8] [--save_probabilities]
      [--pixel_spacing_mm=0.1] [--on_bad_frame=error|skip]

PATH is an image, a folder of images, a quoted glob ("scans/*.png") or a clip (mp4/avi/mov/mkv, multi-frame
TIFF or GIF). --workdir=runs/a,runs/b,runs/c averages the runs' probabilities (an ensemble, e.g. the seeds
of one compare run). What DIR holds: see veinjax/predict_lib.py. A clear error is printed alone (`Error: ...`);
--verbosity=1 shows its traceback.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines (the preprocessing)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from veinjax import cli
from veinjax import frames
from veinjax import inference
from veinjax import predict_lib
from veinjax.postprocess import PostProcess

_WORKDIR = flags.DEFINE_list("workdir", None, "train.py workdir(s); several = an ensemble.")
_INPUT = flags.DEFINE_string("input", None, "An image, a folder, a glob or a clip.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for masks/, overlays/, predictions.csv (created).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint directory.")
_POSTPROCESS = flags.DEFINE_string("postprocess", "", "Comma-separated: largest[=k], fill_holes, min_size=N.")
_TTA = flags.DEFINE_list("tta", [], "Test-time augmentation: hflip (or nothing).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Frames per forward pass.")
_SAVE_PROBABILITIES = flags.DEFINE_bool("save_probabilities", False, "Also write probabilities/<frame>.npy.")
_PIXEL_SPACING = flags.DEFINE_float("pixel_spacing_mm", None,
                                    "Millimetres per pixel for areas in mm^2; default: the run's config.")
_ON_BAD_FRAME = flags.DEFINE_enum("on_bad_frame", "error", ["error", "skip"],
                                  "An unreadable image file: stop (error) or log and count it (skip).")
flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs(__file__)
  source = frames.open_source(_INPUT.value, skip_bad=_ON_BAD_FRAME.value == "skip")
  predictor = inference.Predictor.from_workdirs(
      _WORKDIR.value, _CHECKPOINT.value, batch_size=_BATCH_SIZE.value, tta=_TTA.value,
      postprocess=PostProcess.parse(_POSTPROCESS.value))
  # 16-bit grayscale files become 8 bits as the run's training read them.
  source.high_bit_depth = str(predictor.config.dataset.get("high_bit_depth", "auto"))
  spacing = _PIXEL_SPACING.value if _PIXEL_SPACING.value is not None else predictor.config.pixel_spacing_mm
  summary = predict_lib.predict_to_dir(predictor, source, _OUTPUT.value,
                                       save_probabilities=_SAVE_PROBABILITIES.value, pixel_spacing_mm=spacing)
  logging.info("Done: %d frames, %s", summary["frames"], summary["csv"])


if __name__ == "__main__":
  cli.run(main)
