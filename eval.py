"""Evaluates a trained checkpoint: flags -> config -> `veinjax.evaluation.evaluate`.

  python eval.py --workdir=runs/quickstart [--config=configs/quickstart.py] [--checkpoint=best|latest|PATH]
      [--split=test] [--save_predictions]

Prints one JSON line of metrics and writes it to WORKDIR/eval/: <split>_metrics.json for the best checkpoint,
<split>_latest_metrics.json for --checkpoint=latest, <split>_step<N>_metrics.json for a checkpoint directory
(see `veinjax.evaluation.evaluate`). Without --config, the run's own WORKDIR/config.json is used. A clear
error is printed alone (`Error: ...`); --verbosity=1 shows its traceback.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines (the input pipeline)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from veinjax import cli
from veinjax import distributed
from veinjax import evaluation
from veinjax import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "The train.py workdir.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration file (configs/*.py); default: the run's WORKDIR/config.json.",
    lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint directory.")
_SPLIT = flags.DEFINE_enum("split", "test", list(evaluation.SPLITS), "The split to evaluate.")
_SAVE_PREDICTIONS = flags.DEFINE_bool(
    "save_predictions", False,
    "Also write input | label | prediction PNGs to WORKDIR/eval/<split>_predictions (best; "
    "<split>_latest_predictions, <split>_step<N>_predictions for the others).")
_DATASET_CONFIG = config_flags.DEFINE_config_file(
    "dataset_config", None, "Evaluate on another dataset: a config file whose `dataset` block replaces the "
    "run's (e.g. configs/usgra_seg.py for a phantom-trained run); results go to "
    "WORKDIR/eval/<dataset>_<split>_metrics.json.", lock_config=True)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", "", "Several hosts: HOST:PORT of process 0's coordinator (with --num_processes and "
    "--process_id); SLURM and TPU pods are detected without it (veinjax.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several hosts: how many processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several hosts: this process, 0..num_processes-1.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # Before anything else uses JAX: on several hosts, every process joins the distributed system here.
  distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  cli.quiet_library_logs(__file__)
  config = _CONFIG.value if _CONFIG.value is not None else workdir_lib.load_config(_WORKDIR.value)
  prefix = ""
  if _DATASET_CONFIG.value is not None:
    config = evaluation.with_dataset_of(config, _DATASET_CONFIG.value)
    prefix = f"{config.dataset.name}_"
  metrics = evaluation.evaluate(config, _WORKDIR.value, checkpoint=_CHECKPOINT.value, split=_SPLIT.value,
                               save_predictions=_SAVE_PREDICTIONS.value, output_prefix=prefix)
  print(json.dumps(workdir_lib.to_jsonable(metrics), sort_keys=True, allow_nan=False), flush=True)


if __name__ == "__main__":
  cli.run(main, config_flag=_CONFIG)
