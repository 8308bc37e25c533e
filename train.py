"""Trains a veinjax segmenter: flags -> config -> `veinjax.train_lib.train_and_evaluate`.

With --config.final_fit=True the run is followed by its final fit (`veinjax.final_fit`): retrained from
scratch on train + validation for the epoch count validation chose, in WORKDIR/final/, evaluated on test.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart [--config.num_epochs=3 ...]

Running it again on the same --workdir resumes from the latest checkpoint; a config that differs from the
run's config.json in more than its length, logging, checkpointing or data location is an error naming the
fields, unless --allow_config_change (then each difference is logged and the old config.json is kept as
config.json.<time>). On several hosts run the same command on each, with --coordinator_address,
--num_processes and --process_id (SLURM and TPU pods need none: `veinjax.distributed`). Watch it with
`tensorboard --logdir=WORKDIR`. A clear error is printed alone (`Error: ...`); --verbosity=1 shows its
traceback.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines (the input pipeline)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from veinjax import cli
from veinjax import distributed
from veinjax import final_fit

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and history.jsonl.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py).",
                                          lock_config=True)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume even if the config differs from the workdir's config.json (each difference is logged; the old "
    "config.json is kept as config.json.<time>).")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", "", "Several hosts: HOST:PORT of process 0's coordinator (with --num_processes and "
    "--process_id); SLURM and TPU pods are detected without it (veinjax.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several hosts: how many processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several hosts: this process, 0..num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # Before anything else uses JAX: on several hosts, every process joins the distributed system here.
  distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  cli.quiet_library_logs(__file__)
  result = final_fit.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                        allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  if result["preempted"]:
    logging.info("Preempted at step %d: the checkpoint is written. Resume with the same command.", result["step"])
    return
  logging.info("Done: step %d, best %s %.4f at step %s. Evaluate on the test split with: %s", result["step"],
               result["best_metric"], result["best_value"] if result["best_value"] is not None else float("nan"),
               result["best_step"], cli.shell_command("python", "eval.py", f"--workdir={result['workdir']}"))
  final = result["final"]
  if final is None:
    return
  if final["preempted"]:
    logging.info("Preempted in the final fit (%s): its checkpoint is written. Resume with the same command.",
                 final["workdir"])
    return
  dice, miou = (float("nan") if final["test_metrics"].get(k) is None else final["test_metrics"][k]
                for k in ("dice", "miou"))  # null: undefined (NaN) on this split
  logging.info("Final fit (%s): %d epochs on train + validation (%d examples), last checkpoint; test dice "
               "%.4f miou %.4f (%s).", final["status"], final["epochs"], final["train_examples"], dice, miou,
               os.path.join(final["workdir"], "eval", "test_metrics.json"))


if __name__ == "__main__":
  cli.run(main, config_flag=_CONFIG)
