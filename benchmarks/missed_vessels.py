r"""Which vessels a trained run misses: found share and pixel recall by size, contrast, grey, depth and edge.

  python -m benchmarks.missed_vessels --workdir=runs/x/seed_0 [--split=validation] \
      [--dataset_config=configs/usgra_seg.py --dataset_config.dataset.validation_fraction=0 --split=train] \
      [--checkpoint=best] [--out=FILE.md]

The run's Predictor segments every frame of the split at the frame's own size (as predict.py does, no
post-processing); each ground-truth vessel (connected component of the foreground) is then measured
(`veinjax.analysis.detection`) and the components are tabulated by equivalent diameter, Weber contrast, lumen
grey level, depth, whether the picture's edge cuts them and which edge, each row giving how many, the share
found (most of its pixels predicted), the pixel recall and the share of all vessel pixels. Predicted
components that touch no vessel are summarised too. `--dataset_config` measures the run on another dataset
(its `dataset` block replaces the run's, as in eval.py): e.g. a phantom-trained run on real frames,
zero-shot; with `validation_fraction=0` and `--split=train` on every non-test frame. Never choose anything on
a test split with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from veinjax import cli
from veinjax.analysis import detection

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint directory.")
_SPLIT = flags.DEFINE_string("split", "validation", "The split to measure on (train, validation or test).")
_DATASET_CONFIG = config_flags.DEFINE_config_file(
    "dataset_config", None, "Measure on another dataset: a config file whose `dataset` block replaces the run's.")
_OUT = flags.DEFINE_string("out", "", "Write the Markdown tables here as well.")

# (field, title, bin edges): each table bins the components by one field.
TABLES = (
    ("equivalent_diameter", "equivalent diameter (x frame height)", (0, 0.05, 0.1, 0.15, 0.2, 0.3, 1.0)),
    ("contrast", "Weber contrast (1: black lumen)", (-np.inf, 0, 0.25, 0.5, 0.75, 1.0)),
    ("lumen_grey", "lumen grey level (0-1)", (-np.inf, 0.05, 0.1, 0.15, 0.2, 0.3, 1.0)),
    ("depth", "depth of the centroid (x frame height)", (0, 0.25, 0.5, 0.75, 1.0)),
    ("touches_picture_edge", "cut by the picture's edge", (-np.inf, 0.5, 1.5)),
)


def measure(predictor, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], foreground: int = 1):
  """(truth components, false component areas) over the frames; masks are class masks at the frames' sizes."""
  components, false = [], []
  for frame, mask in zip(frames, masks):
    predicted = predictor.mask(predictor.frame_probabilities([frame])[0]) == foreground
    truth = np.asarray(mask) == foreground
    components += detection.truth_components(frame, truth, predicted)
    false += detection.false_components(truth, predicted)
  return components, false


def _bin_name(field: str, low: float, high: float) -> str:
  if field == "touches_picture_edge":
    return "yes" if low >= 0.5 else "no"
  return f"({'-inf' if np.isinf(low) else f'{low:g}'}, {high:g}]"


def tables_markdown(components: Sequence[detection.TruthComponent], false: Sequence[float]) -> str:
  """The tables and a summary line, as Markdown."""
  areas = np.array([c.area for c in components])
  recall = (float((np.array([c.detected_share for c in components]) * areas).sum() / areas.sum())
            if components and areas.sum() > 0 else float("nan"))
  found = float(np.mean([c.found for c in components])) if components else float("nan")
  lines = [f"{len(components)} true vessels: {found:.3f} found (most pixels predicted), pixel recall "
           f"{recall:.3f}; {len(false)} predicted components touch no vessel (total area "
           f"{sum(false):.4f} frames' worth, median {np.median(false) if false else 0:.4f} of a frame).", ""]
  for field, title, edges in TABLES:
    lines += [f"| {title} | vessels | found | pixel recall | share of vessel pixels |", "|---|---:|---:|---:|---:|"]
    for g in detection.group_by(components, field, edges):
      lines.append(f"| {_bin_name(field, g.low, g.high)} | {g.count} | {g.found_share:.3f} | "
                   f"{g.pixel_recall:.3f} | {g.pixel_share:.2f} |")
    lines.append("")
  lines += ["| which edge cuts it | vessels | found | pixel recall | share of vessel pixels |",
            "|---|---:|---:|---:|---:|"]
  for name, g in detection.group_by_cut_edge(components).items():
    lines.append(f"| {name} | {g.count} | {g.found_share:.3f} | {g.pixel_recall:.3f} | {g.pixel_share:.2f} |")
  lines.append("")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: a train.py workdir.")
  from veinjax import evaluation  # pylint: disable=g-import-not-at-top
  from veinjax import inference  # pylint: disable=g-import-not-at-top
  from veinjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top  (TensorFlow)
  config = workdir_lib.load_config(_WORKDIR.value)
  if _DATASET_CONFIG.value is not None:
    config = evaluation.with_dataset_of(config, _DATASET_CONFIG.value)
  if int(config.num_classes) > 2:
    raise app.UsageError(f"--workdir: a binary run (num_classes 1 or 2) is measured; this one has "
                         f"{config.num_classes} classes.")
  predictor = inference.Predictor.from_workdir(_WORKDIR.value, _CHECKPOINT.value)
  examples = list(sources.load_raw_split(config, _SPLIT.value).as_numpy_iterator())
  components, false = measure(predictor, [e["image"] for e in examples], [e["mask"] for e in examples])
  text = (f"`{_WORKDIR.value}` ({_CHECKPOINT.value} checkpoint) on {config.dataset.name}'s {_SPLIT.value} "
          f"split ({len(examples)} frames), at the frames' own sizes:\n\n" + tables_markdown(components, false))
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  cli.run(main, config_flag=_DATASET_CONFIG)
