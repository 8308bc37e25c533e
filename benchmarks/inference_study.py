r"""Which inference options help: post-processing steps, flip TTA and the seeds' ensemble, on a test split.

  python -m benchmarks.inference_study --workdirs=runs/qs3/resnet34_unet/seed_0,runs/qs3/resnet34_unet/seed_1,...
      [--split=test] [--min_size=0] [--out=docs/results/inference_phantom.md]
  python -m benchmarks.inference_study --workdirs=runs/phantom_pretrain/seed_0,... \
      --dataset_config=configs/usgra_seg.py --split=validation      # zero-shot: phantom-trained runs, real frames

For each run (one seed each; the same recipe) the Predictor segments every frame of the split at its own
size (the frames as the dataset holds them, before any resizing), and each variant is scored on those
original pixels: foreground Dice from one confusion matrix over the split, HD95 per image (pixels of the
original frame). Variants: none, each post-processing step alone (largest, fill_holes, min_size), fill_holes +
min_size, flip TTA, and TTA + fill_holes + min_size (keeping only the largest component is wrong for
frames with several vessels, so it is measured alone); the paired difference to "none" is seed by seed. Each
run is scored on its own split (a carved validation split depends on the run's seed). The ensemble of all runs
(probabilities averaged) is scored against its members' mean where their splits hold the same frames.
`--dataset_config` scores the runs on another dataset's split (its `dataset` block replaces the runs', as in
eval.py), e.g. models trained on the phantom on real frames.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from veinjax import cli
from veinjax import evaluation
from veinjax import inference
from veinjax import metrics as metrics_lib
from veinjax.experiments import tables
from veinjax.postprocess import PostProcess


def _split(config, split: str):
  """(frames, labels, example ids) of `split` as this run's config defines it."""
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top  (TensorFlow)
  examples = list(sources.load_raw_split(config, split).as_numpy_iterator())
  return ([e["image"] for e in examples], [e["mask"].astype(np.int32) for e in examples],
          [bytes(e["id"]) for e in examples])


def score(masks: Sequence[np.ndarray], labels: Sequence[np.ndarray], num_classes: int) -> dict:
  """Foreground Dice / IoU (one confusion matrix over the split) and mean HD95 per image."""
  accumulator = metrics_lib.MetricsAccumulator(num_classes)
  n = accumulator.num_labels
  for mask, label in zip(masks, labels):
    accumulator.add(np.bincount(label.ravel() * n + mask.ravel(), minlength=n * n).reshape(n, n))
    accumulator.add_hd95(mask[None], label[None])
  result = accumulator.result()
  return {"dice": result["dice"], "iou": result["iou"], "hd95": result["hd95"]}


def _variants(min_size: int) -> dict[str, tuple[tuple[str, ...], PostProcess]]:
  both = PostProcess(fill_holes=True, min_size=min_size)
  return {
      "none": ((), PostProcess()),
      "largest (1 component)": ((), PostProcess(largest=1)),
      "fill_holes": ((), PostProcess(fill_holes=True)),
      f"min_size={min_size}": ((), PostProcess(min_size=min_size)),
      "fill_holes+min_size": ((), both),
      "hflip TTA": (("hflip",), PostProcess()),
      "hflip TTA + fill_holes+min_size": (("hflip",), both),
  }


def study(workdirs: Sequence[str], split: str, min_size: int, dataset_config=None) -> str:
  """The Markdown table; `dataset_config` (a config) scores on its dataset instead of the runs' own.

  Each run is scored on its own `split`: a carved split (validation; a single folder's test) depends on the
  run's seed, so the seeds of one recipe may hold different frames, and one run's validation frames may be
  another's training frames. The ensemble is scored only where every run's split holds the same frames.
  """
  single = [inference.Predictor.from_workdir(w, batch_size=8) for w in workdirs]
  trained_on = single[0].config.dataset.name
  configs = [p.config if dataset_config is None else evaluation.with_dataset_of(p.config, dataset_config)
             for p in single]
  splits = [_split(c, split) for c in configs]
  config, (frames, labels, ids) = configs[0], splits[0]
  min_size = min_size or max(1, int(round(0.0005 * np.median([f.shape[0] * f.shape[1] for f in frames]))))
  variants = _variants(min_size)
  results = {name: [] for name in variants}
  for predictor, (run_frames, run_labels, _) in zip(single, splits):
    probabilities = {tta: predictor.with_options(tta=tta).frame_probabilities(run_frames)
                     for tta in {tta for tta, _ in variants.values()}}
    for name, (tta, steps) in variants.items():
      masks = [predictor.mask(p, steps) for p in probabilities[tta]]
      results[name].append(score(masks, run_labels, config.num_classes))
  ensemble_score = None
  if all(run_ids == ids for _, _, run_ids in splits[1:]):
    ensemble = inference.Predictor.from_workdirs(workdirs, batch_size=8)
    ensemble_score = score([ensemble.mask(p) for p in ensemble.frame_probabilities(frames)], labels,
                           config.num_classes)
  return _markdown(results, ensemble_score, workdirs, config, split, sorted({len(s[0]) for s in splits}),
                   trained_on)


def _markdown(results, ensemble_score, workdirs, config, split, frame_counts, trained_on) -> str:
  fg = tables.foreground_name(config)
  n = len(workdirs)
  scored_on = config.dataset.name
  num_frames = "/".join(str(c) for c in frame_counts)
  lines = [f"## Inference options: {config.model} on {scored_on} {split} ({num_frames} frames at their "
           f"own size), {n} seeds" + ("" if trained_on == scored_on else f" trained on {trained_on}"), "",
           f"| Variant | {fg} Dice | Δ Dice vs none (paired) | HD95 (px) | Δ HD95 vs none (paired) |",
           "|---|---:|---:|---:|---:|"]
  base = results["none"]
  for name, scores in results.items():
    dice = tables.mean_std([s["dice"] for s in scores])
    hd = tables.mean_std([s["hd95"] for s in scores])
    d_dice = tables.mean_std([s["dice"] - b["dice"] for s, b in zip(scores, base)])
    d_hd = tables.mean_std([s["hd95"] - b["hd95"] for s, b in zip(scores, base)])
    lines.append(f"| {name} | {tables.format_mean_std(*dice, n)} | "
                 f"{'—' if name == 'none' else f'{d_dice[0]:+.4f} ± {d_dice[1]:.4f}'} | "
                 f"{tables.format_mean_std(*hd, n, 2)} | "
                 f"{'—' if name == 'none' else f'{d_hd[0]:+.2f} ± {d_hd[1]:.2f}'} |")
  best = max(results, key=lambda k: (statistics.mean(s["dice"] for s in results[k]), -len(k)))
  lines += ["", f"Highest mean {fg} Dice: **{best}**."]
  members = [s["dice"] for s in base]
  if ensemble_score is None:
    lines += ["", f"Ensemble not scored: the runs' {split} splits hold different frames (carved by each run's "
              "seed), so one member's scored frames may be another's training frames."]
  else:
    lines += ["", f"Ensemble of the {n} seeds (probabilities averaged, no post-processing): {fg} Dice "
              f"{ensemble_score['dice']:.4f}, HD95 {ensemble_score['hd95']:.2f} px; its members: Dice "
              f"{statistics.mean(members):.4f} mean (min {min(members):.4f}, max {max(members):.4f}), HD95 "
              f"{statistics.mean(s['hd95'] for s in base):.2f} px mean."]
  lines += ["", "Runs: " + ", ".join(workdirs), ""]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs(__file__)
  args = flags.FLAGS
  markdown = study(args.workdirs, args.split, args.min_size, args.dataset_config)
  print(markdown)
  if args.out:
    with open(args.out, "w") as f:
      f.write(markdown)


if __name__ == "__main__":
  # Flags only when run as a program, so that tests import study() beside other benchmarks' flags.
  flags.DEFINE_list("workdirs", None, "train.py workdirs: the seeds of one recipe.")
  flags.DEFINE_string("split", "test", "The split to score on.")
  flags.DEFINE_integer("min_size", 0, "min_size step in pixels of the original frame; 0 = 0.05% of the frame's area.")
  flags.DEFINE_string("out", "", "Write the Markdown table here as well.")
  dataset_config = config_flags.DEFINE_config_file(
      "dataset_config", None, "Score on another dataset: a config file whose `dataset` block replaces the runs' "
      "(e.g. configs/usgra_seg.py for phantom-trained runs); the class counts must agree.", lock_config=True)
  flags.mark_flags_as_required(["workdirs"])
  cli.run(main, config_flag=dataset_config)  # clear errors, e.g. a --dataset_config of another class count
