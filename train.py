"""Trains a veinjax segmenter: flags -> config -> `veinjax.train_lib.train_and_evaluate`.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart [--config.num_epochs=3 ...]

Running it again on the same --workdir resumes from the latest checkpoint. Watch it with
`tensorboard --logdir=WORKDIR`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines (the input pipeline)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from veinjax import cli
from veinjax import train_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and history.jsonl.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py).",
                                          lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs(__file__)
  result = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("Done: step %d, best %s %.4f at step %s. Evaluate on the test split with: "
               "python eval.py --workdir=%s", result["step"], result["best_metric"],
               result["best_value"] if result["best_value"] is not None else float("nan"), result["best_step"],
               result["workdir"])


if __name__ == "__main__":
  app.run(main)
