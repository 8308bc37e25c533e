"""A final fit: a run retrained from scratch on train + validation for the epoch count validation chose.

  result = final_fit.train_and_evaluate(config, workdir)   # train.py: the run, then (config.final_fit) this
  record = final_fit.fit(config, workdir)                  # the final fit of a finished run (compare)

The common practice of nnU-Net and most papers: once the validation split has chosen how long to train (the
epoch of the run's best checkpoint by `best_metric`; ties go to the earliest, as the checkpointer keeps a new
best only when it is strictly higher), its examples go back into train and the same recipe (config and seed,
so the same initialisation) trains again from scratch for that many epochs (a cosine schedule spans them).
Nothing is held out then, so nothing is chosen: the final run keeps its last checkpoint as its best
(eval_split "none"), never one chosen on test. It is a normal workdir, WORKDIR/final/ (eval.py, predict.py and
`inference.Predictor.from_workdir` read it as any other), holding besides a run's files

  config.json               the final run's config: dataset.validation_fraction 0 (train is all of it),
                            num_epochs the chosen count, eval_split "none", final_fit False
  eval/test_metrics.json    its last checkpoint on the test split
  final_fit.json            what was chosen from which run (source_workdir, epochs, selection: the validation
                            figures that chose them), the example counts and the test metrics; written last,
                            so it marks the final fit finished

Interrupted, the final run resumes (train_lib's own resume); finished, it is skipped without writing anything.
A finished or interrupted final fit of another epoch count (the run was extended since and chose another
epoch) or recipe is an error naming final/: delete it to fit again.

Only a validation split carved from train by `dataset.validation_fraction` can go back into train; a dataset
with one of its own (a folder dataset's validation/) is refused before anything trains (`check_data`).
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
from absl import logging

from veinjax import evaluation
from veinjax import initialization
from veinjax import train_lib
from veinjax import workdir as workdir_lib
from veinjax.config_checks import NO_EVAL_SPLIT, validate_config
from veinjax.experiments import table1

FINAL_DIR = "final"
RECORD_FILE = "final_fit.json"


def final_workdir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), FINAL_DIR)


def check_data(config: ml_collections.ConfigDict) -> None:
  """Fails unless the validation split is carved from train, the only kind a final fit can put back."""
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top  (TensorFlow)
  if sources.has_own_validation(config):
    where = (f" ({os.path.join(config.dataset.root, 'validation')})" if config.dataset.name == "folder" else "")
    raise ValueError(
        f"--config.final_fit=True puts the validation examples back into train, but dataset "
        f"{config.dataset.name!r} has a validation split of its own{where}, which "
        "--config.dataset.validation_fraction=0 does not merge into train. Move those examples into train/ "
        "(validation is then carved by --config.dataset.validation_fraction), or set --config.final_fit=False.")


def chosen_epochs(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The evaluation of `workdir`'s history that chose its best checkpoint (`table1.selection_metrics`: its
  "epoch" is the count of epochs trained then); it must be on the validation split."""
  selection = table1.selection_metrics(workdir, config.best_metric)
  if not selection:
    raise ValueError(f"{workdir} holds no evaluation of --config.best_metric={config.best_metric!r} in its "
                     f"{workdir_lib.HISTORY_FILE}: train the run first; its final fit trains for the epoch "
                     "count it chose.")
  if selection["eval_split"] != "validation":
    raise ValueError(f"{workdir} chose its best checkpoint on the {selection['eval_split']!r} split, not on "
                     "validation, so there is no validation choice for --config.final_fit to recover from.")
  return selection


def final_config(config: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
  """The run's recipe and seed on all of train (no validation carved), for `epochs`, keeping its last
  checkpoint; a plain run (final_fit off: it has nothing held out to recover)."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():  # a config recorded before the field existed may lack it
    cfg.final_fit = False
  cfg.num_epochs = int(epochs)
  cfg.dataset.validation_fraction = 0.0
  cfg.eval_split = NO_EVAL_SPLIT
  return cfg


def _check_recorded(stored: dict, cfg: ml_collections.ConfigDict, final_dir: str, which: str,
                    allow_config_change: bool) -> None:
  """A final run already in `final_dir` must be this one: the same epoch count and, beyond the fields a
  resume may change (train_lib.RESUME_FREE_FIELDS) unless `allow_config_change`, the same recipe."""
  changes = workdir_lib.config_changes(stored, workdir_lib.config_json(cfg))
  refused = [c for c in changes if c[0] == "num_epochs" or not (
      allow_config_change or train_lib._is_resume_free(c[0], cfg))]  # pylint: disable=protected-access
  if refused:
    shown = "; ".join(f"{field}: {old!r} there, {new!r} now" for field, old, new in refused)
    raise ValueError(
        f"{final_dir} holds {which} final fit that differs from the one this run now asks for ({shown}); the "
        "run chose another epoch count since (e.g. it was extended), or its recipe changed. Delete "
        f"{final_dir} to fit again.")


def fit(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> dict:
  """The final fit of the finished run in `workdir`, trained with `config`: trains WORKDIR/final/ (resuming
  it when interrupted, skipping it when finished) and evaluates its last checkpoint on the test split.

  Returns:
    final_fit.json's record (source_workdir, epochs, selection, train_examples, validation_examples,
    config, test_metrics, train_seconds: this call's only) plus "workdir" (final/), "status" ("trained" or
    "skipped") and "preempted": True when a SIGTERM stopped the final run with its checkpoint written (then
    only workdir, epochs and status are set; call again to resume).

  Raises:
    ValueError: the run has no validation choice, the dataset's validation split is not carved from train,
      or final/ holds a final fit of another epoch count or recipe.
  """
  validate_config(config)
  workdir = os.path.abspath(workdir)
  final_dir = final_workdir(workdir)
  selection = chosen_epochs(config, workdir)
  epochs = int(selection["epoch"])
  # Normalisation resolved as the final run's fresh start resolves it, so it compares with its config.json.
  cfg = initialization.with_input_normalization(final_config(config, epochs))
  record_path = os.path.join(final_dir, RECORD_FILE)
  if os.path.exists(record_path):
    with open(record_path) as f:
      record = json.load(f)
    _check_recorded(record.get("config", {}), cfg, final_dir, "a finished", allow_config_change)
    logging.info("The final fit in %s is finished (%d epochs); skipped.", final_dir, epochs)
    return dict(record, workdir=final_dir, status="skipped", preempted=False)
  config_file = os.path.join(final_dir, workdir_lib.CONFIG_FILE)
  if os.path.exists(config_file):  # an interrupted final fit resumes only into the same epoch count
    with open(config_file) as f:
      _check_recorded(json.load(f), cfg, final_dir, "an interrupted", allow_config_change)
  check_data(config)
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top  (TensorFlow)
  counts = {"train_examples": sources.num_examples(cfg, "train"),
            "validation_examples": sources.num_examples(config, "validation")}
  logging.info("Final fit in %s: %d epochs (best %s %.4f on validation after epoch %d of %s) on train + "
               "validation (%d examples).", final_dir, epochs, config.best_metric,
               selection.get(config.best_metric) or float("nan"), epochs, workdir, counts["train_examples"])
  start = time.perf_counter()
  result = train_lib.train_and_evaluate(cfg, final_dir, allow_config_change)
  if result["preempted"]:
    return {"workdir": final_dir, "epochs": epochs, "status": "preempted", "preempted": True}
  metrics = evaluation.evaluate(cfg, final_dir, checkpoint="best", split="test")
  record = {"source_workdir": workdir, "epochs": epochs, "selection": selection, **counts,
            "step": result["step"], "config": workdir_lib.config_json(cfg), "test_metrics": metrics,
            "train_seconds": time.perf_counter() - start}
  workdir_lib.write_json(record_path, record)
  return dict(record, workdir=final_dir, status="trained", preempted=False)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> dict:
  """`train_lib.train_and_evaluate`, then, with config.final_fit, the run's final fit (`fit`): train.py's work.

  Returns train_lib's result plus "final": `fit`'s record (None without final_fit or when the run itself
  was preempted; its own "preempted" says whether the final run was).
  """
  wanted = bool(config.get("final_fit", False))
  if wanted:  # a dataset whose validation cannot go back fails now, not after the run
    validate_config(config)
    check_data(config)
  result = train_lib.train_and_evaluate(config, workdir, allow_config_change)
  result["final"] = None
  if wanted and not result["preempted"]:
    result["final"] = fit(config, workdir, allow_config_change)
  return result
