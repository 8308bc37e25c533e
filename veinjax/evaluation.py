"""Evaluation of one split: every real example counted once, metrics from one confusion matrix.

  metrics = evaluate_split(config, par, p_eval_step, variables, split, on_example=callback)
  metrics = evaluate(config, workdir, checkpoint="best", split="test")   # eval.py: from a train.py workdir

`evaluate_split` writes nothing: what a caller does with each example (TensorBoard panels during training,
PNGs for `eval.py --save_predictions`) is its `on_example(image, label, prediction, example_id)` callback.

On many hosts every process evaluates its shard of the split; the confusion matrix and loss are summed across
processes inside the step, and what the host needs per example (predictions and labels for HD95; images and
ids too for `on_example`) is gathered from every process in the split's order, so every process computes
the same metrics and sees every example. Files are written by process 0 only (`PanelWriter`, `write_json`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from veinjax import config_checks
from veinjax import files
from veinjax import initialization
from veinjax import metrics as metrics_lib
from veinjax import parallel
from veinjax import steps
from veinjax import viz
from veinjax import workdir as workdir_lib

SPLITS = config_checks.SPLITS

ExampleCallback = Callable[[np.ndarray, np.ndarray, np.ndarray, Any], None]


def _host_gather(x: np.ndarray) -> np.ndarray:
  """Every process's rows of one eval batch [b, ...] -> [process_count * b, ...] in the split's order.

  Process p holds the split's examples p, p + P, p + 2P, ... (`pipeline.create_eval_dataset`), so row j of
  process p is example P * j + p of the batch's block: interleaving the processes' rows restores the order
  one process would see (padding rows, valid=False, stay where they are).
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = np.asarray(multihost_utils.process_allgather(np.asarray(x)))  # [P, b, ...]
  return np.swapaxes(gathered, 0, 1).reshape((-1,) + gathered.shape[2:])


def _host_gather_ids(ids: np.ndarray) -> np.ndarray:
  """`_host_gather` for example ids (bytes): as uint8 rows padded to the longest id of any process."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  ids = [bytes(i) for i in ids]
  width = int(np.max(multihost_utils.process_allgather(np.int32(max([len(i) for i in ids] + [1])))))
  codes = np.zeros((len(ids), width), np.uint8)
  for row, i in enumerate(ids):
    codes[row, :len(i)] = np.frombuffer(i, np.uint8)
  return np.array([row.tobytes().rstrip(b"\0") for row in _host_gather(codes)], dtype=object)


def evaluate_split(config, par: parallel.DataParallel, p_eval_step: Callable, variables, split: str, *,
                   on_example: ExampleCallback | None = None) -> dict:
  """Metrics of the whole `split` (acc, miou, iou, dice, ..., hd95, loss, num_examples).

  `variables` are in the layout `par` expects (replicated). HD95 is measured on the host per image.
  `on_example(image, label, prediction, id)` is called for each real example of the split, in order, with
  the image on [0, 1] (any input normalisation undone); on many hosts on every process, with every
  process's examples (a callback that writes files writes on process 0 only, as `PanelWriter` does). Once
  the callback's `full` attribute is true (`PanelCollector`), images are no longer gathered for it.
  """
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  normalization = pipeline.input_normalization(config)
  ds = pipeline.create_eval_dataset(config, split, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  accumulator = metrics_lib.MetricsAccumulator(config.num_classes, config.pixel_spacing_mm)
  loss_sum = count = 0.0
  for device_batch, host_batch in par.prefetch(ds.as_numpy_iterator()):
    out = p_eval_step(variables, device_batch)
    sums = par.first({k: out[k] for k in ("confusion", "loss_sum", "count")})
    accumulator.add(sums["confusion"])
    loss_sum += float(sums["loss_sum"])
    count += float(sums["count"])
    pred, label, valid = par.local(out["prediction"]), host_batch["label"], host_batch["valid"]
    many = jax.process_count() > 1
    if many:
      pred, label, valid = _host_gather(pred), _host_gather(label), _host_gather(valid)
    accumulator.add_hd95(pred, label, valid)
    # `full` is the same on every process (the callback saw the same examples), so all gather or none.
    if on_example is None or getattr(on_example, "full", False):
      continue
    images = _host_gather(host_batch["image"]) if many else host_batch["image"]
    ids = _host_gather_ids(host_batch["id"]) if many else host_batch["id"]
    for i in np.flatnonzero(valid):
      image = images[i]
      if normalization is not None:  # back to [0, 1] for the pictures
        image = image * np.asarray(normalization[1], np.float32) + np.asarray(normalization[0], np.float32)
      on_example(image, label[i], pred[i], ids[i])
  result = accumulator.result()
  result["loss"] = loss_sum / count if count else float("nan")
  return result


class PanelCollector:
  """An `on_example` callback keeping the input | label | prediction panels of the first `limit` examples."""

  def __init__(self, limit: int):
    self.limit = limit
    self.panels: list[np.ndarray] = []

  def __call__(self, image, label, prediction, example_id) -> None:
    del example_id
    if len(self.panels) < self.limit:
      self.panels.append(viz.panel(image, label, prediction))

  @property
  def full(self) -> bool:
    """Whether it holds `limit` panels (`evaluate_split` then stops gathering images for it)."""
    return len(self.panels) >= self.limit


def safe_file_stem(example_id, index: int) -> str:
  """A file name stem for an example id (path separators flattened, extension dropped)."""
  name = example_id.decode("utf-8", "replace") if isinstance(example_id, bytes) else str(example_id)
  name = name.replace(os.sep, "__").replace("/", "__").strip() or f"example_{index:05d}"
  return os.path.splitext(name)[0]


class PanelWriter:
  """An `on_example` callback writing each example's input | label | prediction panel to DIR/<id>.png.

  On many hosts it writes on process 0 only, which `evaluate_split` gives every process's examples. Each
  picture is written whole (`veinjax.files`): a full disk raises `files.DiskFullError`, leaving no half PNG.
  """

  def __init__(self, directory: str):
    self.directory = directory
    self.written = 0  # the running index names examples without an id
    if jax.process_index() == 0:
      os.makedirs(directory, exist_ok=True)

  def __call__(self, image, label, prediction, example_id) -> None:
    if jax.process_index() == 0:
      path = os.path.join(self.directory, safe_file_stem(example_id, self.written) + ".png")
      files.write_bytes(path, viz.encode_png(viz.panel(image, label, prediction)))  # whole, or not at all
    self.written += 1


def output_stem(split: str, checkpoint: str, step) -> str:
  """The name under DIR/eval/ of one checkpoint's results on `split`, so that evaluating one checkpoint never
  overwrites another's: "<split>" for the best checkpoint (as always), "<split>_latest" for the latest,
  "<split>_step<N>" for a checkpoint directory (N its step)."""
  if checkpoint == "best":
    return split
  if checkpoint == "latest":
    return f"{split}_latest"
  return f"{split}_step{step}" if step is not None else f"{split}_{os.path.basename(os.path.normpath(checkpoint))}"


def with_dataset_of(config: ml_collections.ConfigDict, other: ml_collections.ConfigDict,
                    flag: str = "--dataset_config") -> ml_collections.ConfigDict:
  """`config` (a run's) with `other`'s dataset block: the same model measured on another dataset (e.g. a
  phantom-trained run on real frames, zero-shot). The class count must agree."""
  if int(other.num_classes) != int(config.num_classes):
    raise ValueError(f"{flag}: its num_classes={other.num_classes} differs from the run's "
                     f"{config.num_classes}; the run's model predicts {config.num_classes} class logit(s).")
  out = ml_collections.ConfigDict(config.to_dict())
  out.dataset = ml_collections.ConfigDict(other.dataset.to_dict())
  return out


def evaluate(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "best", split: str = "test",
             save_predictions: bool = False, output_prefix: str = "") -> dict:
  """Evaluates a checkpoint of `workdir` on `split`; writes DIR/eval/<stem>_metrics.json and returns it.

  <stem> names the checkpoint (`output_stem`): <split> for the best checkpoint (test_metrics.json),
  <split>_latest for the latest, <split>_step<N> for a checkpoint directory.

  Args:
    config: the run's config (its model must match the checkpoint's; the data fields pick what is measured).
    workdir: the train.py workdir.
    checkpoint: "best", "latest" or a checkpoint directory.
    split: "train", "validation" or "test".
    save_predictions: also write input | label | prediction panels to DIR/eval/<stem>_predictions/.
    output_prefix: prepended to <stem> (eval.py --dataset_config: "<dataset>_", so that another dataset's
      figures never overwrite the run's own).

  Returns:
    The metrics (acc, miou, iou, iou_per_class (background first), dice, precision, recall, specificity,
    hd95, loss, num_examples) and where they came from (split, checkpoint, checkpoint_step, selected_on).
  """
  config_checks.validate_config(config)
  steps.check_choice(split, SPLITS, "--split")
  workdir = os.path.abspath(workdir)
  # The checkpoint is evaluated on inputs normalised as in its training (the run's config.json).
  config = initialization.with_recorded_normalization(config, workdir)
  par = parallel.DataParallel(config.parallelism)
  par.check_batch_size(config.eval_batch_size, "--config.eval_batch_size")
  model = steps.create_model(config, bn_axis_name=par.axis_name)
  tree, meta = steps.restore_variables(config, model, workdir, checkpoint)
  out_dir = os.path.join(workdir, "eval")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
  stem = output_prefix + output_stem(split, checkpoint, meta.get("step"))
  writer = PanelWriter(os.path.join(out_dir, f"{stem}_predictions")) if save_predictions else None
  result = evaluate_split(config, par, steps.wrap_eval_step(config, par, model), par.replicate(tree), split,
                          on_example=writer)
  result.update({"split": split, "checkpoint": checkpoint, "checkpoint_path": meta["path"],
                 "checkpoint_step": meta.get("step"), "model": config.model,
                 "selected_on": meta.get("eval_split") if checkpoint == "best" else None,
                 "best_metric": meta.get("best_metric"), "dataset": config.dataset.name})
  result = workdir_lib.to_jsonable(result)
  workdir_lib.write_json(os.path.join(out_dir, f"{stem}_metrics.json"), result)
  return result
