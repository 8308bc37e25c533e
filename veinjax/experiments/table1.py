"""Table 1 of a comparison: one row per model (mean ± std over seeds), its Markdown and CSV files.

Built by `veinjax.experiments.compare` from the finished runs' records and each model's cost profile. With
final fits (`veinjax.final_fit`: retrained on train + validation for the chosen epoch count), the Markdown
table has a "<model> (final fit)" row under each model's and table1_runs.csv their figures per run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from veinjax import workdir as workdir_lib
from veinjax.experiments import tables

# The paper's Table 1 (Qin et al.), on its own (unreleased) data: model -> (ACC, mIoU).
PAPER_RESULTS = {
    "resnet34_unet": (0.963, 0.873),
    "deeplabv3plus": (0.911, 0.867),
    "fcn8s": (0.904, 0.716),
}
# The paper states model cost per 512x512 image, whatever size a run trains at.
FLOPS_IMAGE_SIZE = 512
# Metrics of the table, foreground IoU and Dice first (issue 5): (metrics key = CSV stem, column title).
# "{fg}" is what the foreground is on this dataset (veinjax.data.sources.foreground_name): "Vein", "Vessel"...
_METRIC_COLUMNS = (
    ("iou", "{fg} IoU"),
    ("dice", "{fg} Dice"),
    ("acc", "ACC"),
    ("miou", "mIoU"),
    ("hd95", "HD95 (px)"),
)

# Validation metrics of the evaluation that chose each run's best checkpoint: the numbers to compare recipes
# by (choosing a recipe by its test figures would leak the test set into the choice).
_SELECTION_KEYS = ("iou", "dice", "miou")


def selection_metrics(workdir: str, best_metric: str) -> dict[str, Any]:
  """Metrics of the evaluation (history record) whose `best_metric` chose the best checkpoint ({} if none).

  The checkpointer keeps a new best only when it is strictly higher, so ties go to the earliest evaluation.
  """
  history = workdir_lib.read_history(workdir)
  scored = [r for r in history if r.get(best_metric) is not None]
  if not scored:
    return {}
  best = max(scored, key=lambda r: r[best_metric])  # max() returns the first of equal maxima
  return {"eval_split": best.get("eval_split"), "epoch": best.get("epoch"), "best_metric": best_metric,
          **{key: best.get(key) for key in _SELECTION_KEYS}}


def table_rows(records: Sequence[Mapping[str, Any]], profiles: Mapping[str, Mapping[str, Any]],
              models: Sequence[str], encoder: str) -> list[dict[str, Any]]:
  """One row per model: mean and std over seeds of each test metric, plus cost and the paper's values."""
  rows = []
  for model in models:
    runs = [r for r in records if r["model"] == model]
    row = {"model": model, "name": tables.display_name(model, encoder), "num_seeds": len(runs),
           "seeds": sorted(int(r["seed"]) for r in runs)}
    for key, _ in _METRIC_COLUMNS:
      row[f"{key}_mean"], row[f"{key}_std"] = tables.mean_std([r["metrics"].get(key) for r in runs])
    profile = profiles.get(model, {})
    row["params"] = profile.get("params")
    row["gflops_512"] = profile.get("gflops")
    row["inference_ms"] = profile.get("inference_ms")
    row["train_minutes_mean"], _ = tables.mean_std([r.get("train_seconds", 0.0) / 60.0 for r in runs])
    for key in _SELECTION_KEYS:  # on the split that chose the checkpoint (validation unless configured)
      row[f"selected_{key}_mean"], row[f"selected_{key}_std"] = tables.mean_std(
          [r.get("selection", {}).get(key) for r in runs])
    row["paper_acc"], row["paper_miou"] = PAPER_RESULTS.get(model, (None, None))
    rows.append(row)
  return rows


def final_rows(records: Sequence[Mapping[str, Any]], profiles: Mapping[str, Mapping[str, Any]],
               models: Sequence[str], encoder: str) -> list[dict[str, Any]]:
  """One row per model whose runs have final fits (records with "final_metrics"): mean and std over those
  seeds of the final runs' test metrics, their training minutes and epoch counts ("epochs", per seed). The
  network is the model's, so its cost (parameters, GFLOPs, ms / frame) is the model row's."""
  rows = []
  for model in models:
    runs = [r for r in records if r["model"] == model and r.get("final_metrics") is not None]
    if not runs:
      continue
    row = {"model": model, "name": f"{tables.display_name(model, encoder)} (final fit)", "num_seeds": len(runs),
           "seeds": sorted(int(r["seed"]) for r in runs), "epochs": [int(r["final_epochs"]) for r in runs]}
    for key, _ in _METRIC_COLUMNS:
      row[f"{key}_mean"], row[f"{key}_std"] = tables.mean_std([r["final_metrics"].get(key) for r in runs])
    profile = profiles.get(model, {})
    row["params"], row["gflops_512"] = profile.get("params"), profile.get("gflops")
    row["inference_ms"] = profile.get("inference_ms")
    row["train_minutes_mean"], _ = tables.mean_std([r.get("final_train_seconds", 0.0) / 60.0 for r in runs])
    row["paper_acc"] = row["paper_miou"] = None
    rows.append(row)
  return rows


def table_markdown(rows: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict, device: str,
                   timing_runs: int, final_rows: Sequence[Mapping[str, Any]] = ()) -> str:
  """Table 1 as Markdown, with a heading and footnotes that say how every number was made; each of
  `final_rows` (`final_rows`) under its model's row."""
  seed_lists = {tuple(r["seeds"]) for r in rows}
  counts = sorted({r["num_seeds"] for r in rows})
  size = config.image_size
  foreground = tables.foreground_name(config)
  header = ["Model", "Seeds"] + [title.format(fg=foreground) for _, title in _METRIC_COLUMNS] + [
      "Params (M)", f"GFLOPs ({FLOPS_IMAGE_SIZE}x{FLOPS_IMAGE_SIZE})", f"ms / frame ({size}x{size})¹",
      "Train min / seed³", "Paper ACC²", "Paper mIoU²"]
  lines = [
      f"## Table 1: {config.dataset.name}, {size}x{size}, {tables.plural(config.num_epochs, 'epoch')}, "
      f"{tables.plural(counts[0], 'seed') if len(counts) == 1 else f'{counts[0]}-{counts[-1]} seeds per model'}",
      "",
      "| " + " | ".join(header) + " |",
      "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
  ]
  finals = {r["model"]: r for r in final_rows}
  for r in [row for main in rows for row in (main, finals.get(main["model"])) if row is not None]:
    cells = [r["name"], str(r["num_seeds"])]
    for key, _ in _METRIC_COLUMNS:
      digits = 1 if key == "hd95" else 3
      cells.append(tables.format_mean_std(r[f"{key}_mean"], r[f"{key}_std"], r["num_seeds"], digits))
    cells += [
        tables.format_number(None if r["params"] is None else r["params"] / 1e6, 2),
        tables.format_number(r["gflops_512"], 1),
        tables.format_number(r["inference_ms"], 2),
        tables.format_number(r["train_minutes_mean"], 1),
        tables.format_number(r["paper_acc"]),
        tables.format_number(r["paper_miou"]),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  if len(seed_lists) == 1:
    seed_values = ", ".join(str(k) for k in next(iter(seed_lists)))
    seeds_text = (f"mean ± sample std over seeds {seed_values}" if counts[0] > 1 else f"seed {seed_values}")
  else:  # report_only over unfinished seeds: rows differ
    seeds_text = ("mean ± sample std over each model's finished seeds (the Seeds column; one seed shows no "
                  "±): " + "; ".join(f"{r['name']} {', '.join(str(k) for k in r['seeds'])}" for r in rows))
  lines += [
      "",
      f"Test split, best checkpoint by {config.best_metric} on the {config.eval_split} split; {seeds_text}. "
      f"{foreground} IoU and Dice are of the foreground class"
      f"{' (mean over the foreground classes)' if config.num_classes > 2 else ''}; "
      "mIoU averages background and foreground (the paper's eq. 6); "
      "HD95 in pixels at the model's input size. GFLOPs: XLA cost analysis of one forward pass.",
      "",
      f"¹ Inference on {device}: batch 1, jitted forward pass and class map, device compute only, "
      f"median of {timing_runs} runs.",
      "",
      "² Qin et al., Table 1, on the paper's own data (not released): for reference, not a like-for-like "
      "comparison.",
      "",
      "³ Wall-clock minutes of training plus test evaluation per run on the same machine, mean over seeds "
      "(a resumed run counts only its last part).",
      "",
  ]
  if final_rows:
    epochs = "; ".join(f"{tables.display_name(r['model'], config.encoder)} {', '.join(str(e) for e in r['epochs'])}"
                       for r in final_rows)
    lines += [
        "(final fit): each seed retrained from scratch (same seed) on train + validation for the epoch count "
        f"its {config.eval_split} split chose ({epochs}), its last checkpoint on the test split: nothing was "
        "chosen on held-out data. The same network as the row above, so the same cost.",
        "",
    ]
  return "\n".join(lines)


_CSV_FIELDS = (["model", "name", "num_seeds"]
               + [f"{key}_{s}" for key, _ in _METRIC_COLUMNS for s in ("mean", "std")]
               + ["params", "gflops_512", "inference_ms", "train_minutes_mean"]
               + [f"selected_{key}_{s}" for key in _SELECTION_KEYS for s in ("mean", "std")]
               + ["paper_acc", "paper_miou", "device"])


def write_tables(rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
                 config: ml_collections.ConfigDict, workdir: str, device: str,
                 timing_runs: int, final_rows: Sequence[Mapping[str, Any]] = ()) -> dict[str, str]:
  """Writes table1.md (with the `final_rows`), table1.csv (one row per model) and table1_runs.csv (one row
  per run, with its final fit's epochs and test metrics where it has one)."""
  paths = {name: os.path.join(workdir, name) for name in ("table1.md", "table1.csv", "table1_runs.csv")}
  with open(paths["table1.md"], "w") as f:
    f.write(table_markdown(rows, config, device, timing_runs, final_rows))
  with open(paths["table1.csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      values = dict(row, device=device)
      writer.writerow({k: ("" if values.get(k) is None else values[k]) for k in _CSV_FIELDS})
  run_fields = (["model", "seed"] + [key for key, _ in _METRIC_COLUMNS] + ["train_seconds", "selected_epoch"]
                + [f"selected_{key}" for key in _SELECTION_KEYS]
                + ["final_epochs"] + [f"final_{key}" for key, _ in _METRIC_COLUMNS])
  with open(paths["table1_runs.csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=run_fields)
    writer.writeheader()
    for r in records:
      values = {"model": r["model"], "seed": r["seed"], "train_seconds": r.get("train_seconds")}
      values.update({key: r["metrics"].get(key) for key, _ in _METRIC_COLUMNS})
      selection = r.get("selection", {})
      values["selected_epoch"] = selection.get("epoch")
      values.update({f"selected_{key}": selection.get(key) for key in _SELECTION_KEYS})
      final = r.get("final_metrics") or {}  # empty cells: no final fit
      values["final_epochs"] = r.get("final_epochs")
      values.update({f"final_{key}": final.get(key) for key, _ in _METRIC_COLUMNS})
      writer.writerow({k: ("" if v is None else v) for k, v in values.items()})
  return paths


