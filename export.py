"""Exports a trained veinjax run for a device: a thin main over `veinjax.export.export_workdir`.

  python export.py --workdir=runs/realtime --format=tflite [--quantize=none|float16|dynamic|int8]
      [--output=PATH] [--checkpoint=best] [--num_calibration_frames=100]

The exported model takes uint8 frames [1, S, S, C] at the run's image size and returns float32 class
probabilities [1, S, S, K], with the preprocessing inside the graph; `PATH.json` beside it records what it
expects. --format=saved_model writes a directory (float32 only); tflite runs with ai-edge-litert, onnx with
onnxruntime (`veinjax.exported.load(PATH)` picks the runtime). --quantize=int8 calibrates on frames of the
run's own train split. Default PATH: WORKDIR/export/model[_<quantize>].<tflite|onnx> (or .../saved_model).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING lines (the converter)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from veinjax import cli
from veinjax import export as export_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "The train.py workdir to export.")
_FORMAT = flags.DEFINE_string("format", None, f"One of {', '.join(export_lib.FORMATS)}.")
_QUANTIZE = flags.DEFINE_string("quantize", "none", f"One of {', '.join(export_lib.QUANTIZATIONS)} "
                                "(tflite and onnx).")
_OUTPUT = flags.DEFINE_string("output", None, "The file (a directory for saved_model) to write; default under "
                              "WORKDIR/export/.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint directory.")
_NUM_CALIBRATION = flags.DEFINE_integer("num_calibration_frames", 100,
                                        "Train frames that calibrate --quantize=int8.", lower_bound=1)
flags.mark_flags_as_required(["workdir", "format"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs(__file__)
  path = export_lib.export_workdir(_WORKDIR.value, _FORMAT.value, output=_OUTPUT.value, quantize=_QUANTIZE.value,
                                   checkpoint=_CHECKPOINT.value, num_calibration_frames=_NUM_CALIBRATION.value)
  logging.info("Wrote %s and %s", path, path.rstrip(os.sep) + export_lib.METADATA_SUFFIX)
  print(path, flush=True)


if __name__ == "__main__":
  cli.run(main)
