r"""Reproduces the paper's comparison in one command: Table 1, Fig. 3/4 and Fig. 5.

Trains every model of `config.compare.models` with identical data, splits, augmentation, recipe and seeds,
evaluates each on the test split, and writes the paper's table and figures:

  python -m veinjax.experiments.compare --config=configs/default.py --workdir=DIR \
      [--config.compare.models=resnet34_unet,fcn8s] [--config.compare.num_seeds=3] [--config.key=value]

DIR afterwards holds:
  <model>/seed_<k>/   a train.py workdir (checkpoints, history.jsonl, config.json, eval/test_metrics.json)
                      and compare_run.json, written once that run is trained and evaluated
  <model>/seed_<k>/final/   with --config.final_fit=True: the run's final fit (veinjax.final_fit: retrained
                      on train + validation for the epoch count validation chose); compare_run.json then
                      also holds its test metrics (final_metrics) and epochs (final_epochs)
  table1.md, table1.csv   one row per model (mean +- std over seeds); table1_runs.csv: one row per run.
                      The CSVs also hold selected_{iou,dice,miou}: the validation figures of the evaluation
                      that chose each best checkpoint; compare recipes by those, never by test figures.
                      With final_fit, table1.md has a "<model> (final fit)" row under each model's and
                      table1_runs.csv final_epochs and final_<metric> columns (table1.csv keeps one row
                      per model, the runs' own)
  fig3_<model>.png    loss / val loss, ACC, mIoU per epoch (the paper's Fig. 3 and 4)
  fig5.png            original, label and each model's prediction for three test images (Fig. 5)

Started again on the same DIR it skips finished runs (compare_run.json present and its config equal to the
one asked for), resumes interrupted ones through train_and_evaluate's own checkpoint resume, and rewrites
the table and figures. A finished run whose config differs is an error, never silently retrained; final_fit
alone may differ (switched on for finished runs, it adds their final fits).
`--config.compare.report_only=True` trains nothing: it tabulates the runs finished so far (each row says
how many seeds it averages), e.g. while a long comparison is still running elsewhere.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from veinjax import checkpoint as checkpoint_lib
from veinjax import cli
from veinjax import evaluation
from veinjax import final_fit
from veinjax import inference
from veinjax import initialization
from veinjax import models as models_lib
from veinjax import preemption
from veinjax import timing
from veinjax import train_lib
from veinjax import workdir as workdir_lib
from veinjax.experiments import plots
from veinjax.experiments import table1
from veinjax.experiments import tables
from veinjax.models import cost

# A run directory holds this file once its training and test evaluation are complete.
RUN_MARKER = "compare_run.json"
# Config fields a finished run may differ in: final_fit only adds the run's final fit (its record's
# final_metrics), so switching it on for finished runs fits them, and off leaves them as they are.
_RUN_FREE_FIELDS = ("final_fit",)


# ---------------------------------------------------------------------------------------------------
# Runs: one sub-workdir per (model, seed), skipped when finished, resumed when interrupted.
# ---------------------------------------------------------------------------------------------------


def model_names(config: ml_collections.ConfigDict) -> list[str]:
  """The models to compare, from `config.compare.models` (comma-separated), validated."""
  names = [n.strip() for n in str(config.compare.models).split(",") if n.strip()]
  unknown = [n for n in names if n not in models_lib.MODEL_NAMES]
  if not names or unknown:
    raise ValueError(
        f"config.compare.models={config.compare.models!r}: unknown model(s) {unknown or '(none given)'}; "
        f"give a comma-separated list of {', '.join(models_lib.MODEL_NAMES)}.")
  if len(set(names)) != len(names):
    raise ValueError(f"config.compare.models={config.compare.models!r} lists a model twice.")
  return names


def run_config(config: ml_collections.ConfigDict, model: str,
               seed_index: int) -> ml_collections.ConfigDict:
  """The training config of one run: the shared recipe with this model and seed `config.seed + k`.

  The `compare` block is dropped so that, e.g., asking for more seeds later leaves finished runs valid.
  The input normalisation is resolved (`initialization.with_input_normalization`) as training resolves it,
  so the config compared with a run's config.json, evaluated and used for Fig. 5 is the one it trains.
  """
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():  # configs from the command line are locked against new fields, not deletions
    if "compare" in cfg:
      del cfg["compare"]
  cfg.model = model
  cfg.seed = int(config.seed) + seed_index
  return initialization.with_input_normalization(cfg)


def run_workdir(workdir: str, model: str, seed_index: int) -> str:
  return os.path.join(workdir, model, f"seed_{seed_index}")


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON data (tuples become lists), so a stored copy compares equal."""
  return json.loads(config.to_json_best_effort())


def _check_same_config(stored: Mapping[str, Any], wanted: Mapping[str, Any], workdir: str, which: str,
                       free_fields: Sequence[str] = _RUN_FREE_FIELDS, runner: str = "compare") -> None:
  """A run in `workdir` must have the config asked for, but for `free_fields`; else an error naming the
  fields and telling the user of `runner` what to do (benchmarks/peer_accuracy checks its runs so too)."""
  # Fields added after runs were recorded (workdir.ADDED_FIELDS) compare as the value that trains exactly as
  # those runs did, so finished runs stay valid.
  differences = [f for f in tables.config_differences(workdir_lib.with_added_fields(stored, wanted), wanted)
                 if f not in free_fields]
  if differences:
    raise ValueError(
        f"{workdir} holds {which} run with a different config (fields: {', '.join(differences)}). "
        f"Give {runner} a new --workdir, or delete that run directory to retrain it.")


def train_or_resume(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Makes sure one run is trained and evaluated on the test split; returns its record.

  The record is what compare_run.json holds: model, seed, config, test metrics, train_seconds (with
  config.final_fit also final_metrics, final_epochs and final_train_seconds of its final fit in
  WORKDIR/final/), plus "status": "skipped" (finished earlier with the same config) or "trained" (trained
  now, or resumed, or its final fit added).

  Raises:
    ValueError: the run directory holds a finished run with another config.
  """
  marker = os.path.join(workdir, RUN_MARKER)
  wanted = _config_json(config)
  if os.path.exists(marker):
    with open(marker) as f:
      record = json.load(f)
    _check_same_config(record.get("config", {}), wanted, workdir, "a finished")
    if config.get("final_fit", False) and "final_metrics" not in record:
      logging.info("%s seed %d: finished earlier; adding its final fit.", config.model, config.seed)
      return dict(_add_final_fit(config, workdir, record), status="trained")
    logging.info("%s seed %d: finished earlier, skipped (%s).", config.model, config.seed, workdir)
    return dict(record, status="skipped")
  # An interrupted run resumes only into the same recipe: train_and_evaluate itself checks the model and
  # the epoch length, but would silently continue with, e.g., another learning rate.
  config_file = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if os.path.isdir(os.path.join(workdir, checkpoint_lib.LATEST_DIR)) and os.path.exists(config_file):
    with open(config_file) as f:
      _check_same_config(json.load(f), wanted, workdir, "an interrupted")

  if config.get("final_fit", False):  # a dataset whose validation cannot go back fails before the run
    final_fit.check_data(config)
  logging.info("%s seed %d: training in %s (resumes from its latest checkpoint if any).",
               config.model, config.seed, workdir)
  start = time.perf_counter()
  if train_lib.train_and_evaluate(config, workdir)["preempted"]:  # SIGTERM: the checkpoint is written
    raise preemption.Preempted(f"{config.model} seed {config.seed} in {workdir}")
  metrics = evaluation.evaluate(config, workdir, checkpoint="best", split="test")
  record = {
      "model": config.model,
      "seed": int(config.seed),
      "config": wanted,
      "metrics": metrics,
      # Only this invocation: a resumed run does not count the time before its interruption.
      "train_seconds": time.perf_counter() - start,
  }
  workdir_lib.write_json(marker, record)
  if config.get("final_fit", False):
    record = _add_final_fit(config, workdir, record)
  return dict(record, status="trained")


def _add_final_fit(config: ml_collections.ConfigDict, workdir: str, record: dict[str, Any]) -> dict[str, Any]:
  """The finished run's final fit (veinjax.final_fit, in WORKDIR/final/) added to its record, which is
  rewritten: an interruption before then leaves the run finished and its final fit to resume."""
  final = final_fit.fit(config, workdir)
  if final["preempted"]:  # SIGTERM: the final run's checkpoint is written
    raise preemption.Preempted(f"{config.model} seed {config.seed} final fit in {final['workdir']}")
  record = dict(record, config=_config_json(config), final_metrics=final["test_metrics"],
                final_epochs=final["epochs"], final_train_seconds=final["train_seconds"])
  workdir_lib.write_json(os.path.join(workdir, RUN_MARKER), record)
  return record


# ---------------------------------------------------------------------------------------------------
# Cost of each model: parameters, GFLOPs per 512x512 image, inference latency on this machine.
# ---------------------------------------------------------------------------------------------------


class TrainedModel:
  """The best checkpoint of one run, as a batch-1 `veinjax.inference.Predictor` (the one inference path).

  Timing and the Fig. 5 predictions share its compiled forward pass, so each model compiles once here.
  """

  def __init__(self, workdir: str):
    self.predictor = inference.Predictor.from_workdir(workdir, checkpoint="best", batch_size=1)
    self.config = self.predictor.config

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Class maps [N, H, W] of model-ready images [N, H, W, C], one frame at a time (batch 1)."""
    return self.predictor.model_size_masks(images)

  def inference_ms(self, runs: int, warmup: int = 2) -> float:
    """Median milliseconds of the forward pass on one frame, device compute only.

    The frame and the variables are on the device before the clock starts, and the clock stops when the
    probabilities are ready, so host preprocessing and transfers are not counted.
    """
    if runs < 1:
      raise ValueError(f"config.compare.timing_runs={runs} must be >= 1.")
    size, channels = self.config.image_size, self.config.in_channels
    frame = jax.random.uniform(jax.random.key(0), (1, size, size, channels), jnp.float32)
    return timing.median_ms(lambda: self.predictor.forward(frame), runs, warmup)

  def gflops(self) -> float:
    """Forward GFLOPs of one table1.FLOPS_IMAGE_SIZE^2 image (XLA cost analysis, veinjax.models.cost)."""
    c = self.config
    return cost.measure(c.model, c.encoder, table1.FLOPS_IMAGE_SIZE, c.in_channels, c.num_classes, batch=1)["gflops"]

  def profile(self, timing_runs: int) -> dict[str, Any]:
    """Parameters, GFLOPs per 512x512 image and inference ms per frame on this machine."""
    return {
        "params": int(self.predictor.num_params),
        "gflops": self.gflops(),
        "inference_ms": self.inference_ms(timing_runs),
    }


# ---------------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------------


def write_curve_figures(config: ml_collections.ConfigDict, workdir: str,
                        seeds: Mapping[str, Sequence[int]]) -> list[str]:
  """fig3_<model>.png for each model of `seeds` (model -> seed indices): one line per seed."""
  paths = []
  for model, seed_indices in seeds.items():
    histories = {f"seed {config.seed + k}": workdir_lib.read_history(run_workdir(workdir, model, k))
                 for k in seed_indices}
    histories = {k: v for k, v in histories.items() if v}
    path = os.path.join(workdir, f"fig3_{model}.png")
    plots.plot_training_curves(histories, path, title=tables.display_name(model, config.encoder),
                               eval_split=config.eval_split)
    paths.append(path)
  return paths


def pick_test_examples(config: ml_collections.ConfigDict, count: int) -> dict[str, np.ndarray]:
  """The first `count` test images (in the split's order) whose label has any foreground.

  Returns a dict with "image" [N, H, W, C] model-ready images, "label" [N, H, W] and "id" [N].
  """
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  # TensorFlow only when needed

  images, labels, ids = [], [], []
  for batch in pipeline.create_eval_dataset(config, "test").as_numpy_iterator():
    for i in range(batch["image"].shape[0]):
      label = batch["label"][i]
      if batch["valid"][i] and label.any():
        images.append(batch["image"][i])
        labels.append(label)
        ids.append(batch["id"][i])
        if len(images) == count:
          return {"image": np.stack(images), "label": np.stack(labels), "id": np.asarray(ids)}
  if not images:
    raise ValueError(f"No test image of dataset {config.dataset.name!r} has any foreground to show in fig5.")
  return {"image": np.stack(images), "label": np.stack(labels), "id": np.asarray(ids)}


def _image_iou(prediction: np.ndarray, label: np.ndarray) -> str:
  union = np.logical_or(prediction > 0, label > 0).sum()
  if union == 0:
    return "IoU —"
  return f"IoU {np.logical_and(prediction > 0, label > 0).sum() / union:.2f}"


def write_prediction_figure(examples: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
                            config: ml_collections.ConfigDict, workdir: str) -> str:
  """fig5.png: original, label and each model's prediction (model -> class maps), one row per image."""
  titles = {tables.display_name(m, config.encoder): p for m, p in predictions.items()}
  notes = {t: [_image_iou(p, l) for p, l in zip(maps, examples["label"])] for t, maps in titles.items()}
  ids = [i.decode() if isinstance(i, bytes) else str(i) for i in examples["id"]]
  path = os.path.join(workdir, "fig5.png")
  plots.plot_prediction_grid(examples["image"], examples["label"], titles, path, row_titles=ids,
                             cell_notes=notes, num_classes=max(config.num_classes, 2))
  return path


# ---------------------------------------------------------------------------------------------------
# The whole comparison.
# ---------------------------------------------------------------------------------------------------


def run_comparison(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or skips / resumes) every model and seed, then writes Table 1 and the figures.

  Returns:
    {"runs": [record per run, each with "status" "trained" or "skipped"], "rows": [Table 1 rows],
     "final_rows": [the final fits' rows, one per model; empty without config.final_fit],
     "files": {name: path of every table and figure written}}.
  """
  models = model_names(config)
  num_seeds = int(config.compare.num_seeds)
  if num_seeds < 1:
    raise ValueError(f"config.compare.num_seeds={num_seeds} must be >= 1.")
  if int(config.compare.num_figure_images) < 1:
    raise ValueError(f"config.compare.num_figure_images={config.compare.num_figure_images} must be >= 1.")
  os.makedirs(workdir, exist_ok=True)

  report_only = bool(config.compare.report_only)
  records = []
  for seed_index in range(num_seeds):  # seed-major: every model has a result before the next seed starts
    for model in models:
      run_dir = run_workdir(workdir, model, seed_index)
      if report_only and not os.path.exists(os.path.join(run_dir, RUN_MARKER)):
        logging.info("%s seed %d: not finished, left out of the report (%s).", model, seed_index, run_dir)
        continue
      cfg = run_config(config, model, seed_index)
      if report_only and cfg.get("final_fit", False):  # report_only trains nothing: no final fit either
        cfg.final_fit = False
      record = train_or_resume(cfg, run_dir)
      record["seed_index"] = seed_index
      record["selection"] = table1.selection_metrics(run_dir, config.best_metric)
      records.append(record)
  # Seeds with a finished run, per model with any: all of them unless report_only left some out.
  seeds = {m: [r["seed_index"] for r in records if r["model"] == m] for m in models}
  seeds = {m: indices for m, indices in seeds.items() if indices}
  models = list(seeds)
  if not models:
    raise ValueError(f"{workdir} holds no finished run of config.compare.models={config.compare.models!r}; "
                     "run without --config.compare.report_only=True to train them.")

  result = {"runs": records, "rows": [], "final_rows": [], "files": {}}
  if jax.process_index() != 0:
    return result
  workdir_lib.write_json(os.path.join(workdir, "compare_config.json"), _config_json(config))
  timing_runs = int(config.compare.timing_runs)
  # Fig. 5 shows the same test images for every model; each model's cost and pictures come from its first
  # finished seed (seed 0 unless report_only left it out).
  examples = pick_test_examples(run_config(config, models[0], 0), int(config.compare.num_figure_images))
  profiles, predictions = {}, {}
  for model in models:
    trained = TrainedModel(run_workdir(workdir, model, seeds[model][0]))
    profiles[model] = trained.profile(timing_runs)
    predictions[model] = trained.predict(examples["image"])
  device = timing.device_description()
  result["rows"] = table1.table_rows(records, profiles, models, config.encoder)
  result["final_rows"] = (table1.final_rows(records, profiles, models, config.encoder)
                          if config.get("final_fit", False) else [])
  result["files"] = table1.write_tables(result["rows"], records, config, workdir, device, timing_runs,
                                        final_rows=result["final_rows"])
  for path in write_curve_figures(config, workdir, seeds):
    result["files"][os.path.basename(path)] = path
  result["files"]["fig5.png"] = write_prediction_figure(examples, predictions, config, workdir)
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs(__file__)
  try:
    result = run_comparison(flags.FLAGS.config, flags.FLAGS.workdir)
  except preemption.Preempted as e:
    logging.info("Preempted (%s): its checkpoint is written; run the same command again to resume.", e)
    return
  if jax.process_index() == 0:
    with open(result["files"]["table1.md"]) as f:
      print(f.read())


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module (tests, notebooks) never
  # collides with train.py's flags of the same names.
  config_flags.DEFINE_config_file("config", None, "Training config file, e.g. configs/default.py.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory of the comparison (one sub-directory per run).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
