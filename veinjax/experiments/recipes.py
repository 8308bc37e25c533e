r"""Compares training recipes on the validation split, and says which one to keep.

Each recipe is one finished `compare` workdir: the same dataset, model and seeds, trained with a different
recipe (loss, schedule, epochs, augmentation...). The first workdir is the reference:

  python -m veinjax.experiments.recipes \
      --workdirs=runs/usgra_paper128,runs/usgra_best128,runs/usgra_best40ep128 [--model=resnet34_unet] \
      [--metric=dice] [--out=DIR]

prints (and with --out writes DIR/recipes.md and DIR/recipes.csv) one row per recipe: the config fields in
which it differs from the reference, its validation figures (those of the evaluation that chose each run's
checkpoint: `selected_*` in the workdir's table1_runs.csv), the difference to the reference paired seed by
seed, and the test figures for the record. The recipe kept is the one with the highest mean validation
`--metric`; test figures never take part in the choice (choosing by them would leak the test set).

Pairing is fair because seed k of every recipe is config.seed + k: the same validation split (carved from
train by that seed) and the same initialisation seed. So the workdirs must agree on the dataset, the
classes, the seed and the split that chose the checkpoints; otherwise this is an error naming the field.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags

from veinjax.experiments import tables

# Metrics a recipe can be chosen by: keys of the `selected_<key>` columns of table1_runs.csv.
SELECTION_METRICS = ("dice", "iou", "miou")
# Fields every recipe must share for their validation figures to be comparable seed by seed. Dataset
# locations (dataset.root, dataset.data_dir) may differ between machines, so they are not among them.
_SHARED_FIELDS = ("dataset.", "num_classes", "seed", "eval_split")
_LOCATION_FIELDS = ("dataset.root", "dataset.data_dir")


def _must_share(field: str) -> bool:
  if field in _LOCATION_FIELDS:
    return False
  return any(field == f or (f.endswith(".") and field.startswith(f)) for f in _SHARED_FIELDS)


def _read_runs(workdir: str) -> list[dict[str, str]]:
  path = os.path.join(workdir, "table1_runs.csv")
  if not os.path.exists(path):
    raise ValueError(
        f"{path} does not exist: --workdirs takes directories written by `python -m "
        "veinjax.experiments.compare` (add --config.compare.report_only=True there to tabulate the runs "
        "finished so far).")
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _read_config(workdir: str) -> dict[str, Any]:
  """The recipe's config JSON (nested, as compare wrote it) without the runner's own `compare` block."""
  path = os.path.join(workdir, "compare_config.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: rerun compare on {workdir} (it writes the file with the tables).")
  with open(path) as f:
    config = json.load(f)
  config.pop("compare", None)
  return config


def _float(value: str) -> float | None:
  return float(value) if value not in ("", None) else None


def load_recipe(workdir: str, model: str) -> dict[str, Any]:
  """One recipe: its config JSON and, per seed, the validation and test figures of `model`."""
  rows = _read_runs(workdir)
  runs = [r for r in rows if r["model"] == model]
  if not runs:
    present = sorted({r["model"] for r in rows})
    raise ValueError(f"{workdir} holds no finished {model} run (it has: {', '.join(present) or 'none'}); "
                     "pick another --model or train it with compare.")
  seeds = {}
  for r in runs:
    seeds[int(r["seed"])] = {
        **{f"val_{key}": _float(r[f"selected_{key}"]) for key in SELECTION_METRICS},
        "test_iou": _float(r["iou"]), "test_dice": _float(r["dice"]),
        "train_seconds": _float(r["train_seconds"]), "selected_epoch": r["selected_epoch"],
    }
  return {"workdir": workdir, "name": os.path.basename(os.path.normpath(workdir)), "config": _read_config(workdir),
          "seeds": seeds}


def _format_value(value: Any) -> str:
  if isinstance(value, list):  # JSON turned the config's tuples into lists
    return "(" + ", ".join(_format_value(v) for v in value) + ")"
  if isinstance(value, dict):
    return json.dumps(value, sort_keys=True)
  return str(value)


def differences(reference: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
  """`field=value` for every config field where `config` differs from `reference`, sorted by field."""
  values = tables.flatten(config)
  return [f"{k}={_format_value(values.get(k, '(unset)'))}" for k in tables.config_differences(reference, config)]


def check_comparable(recipes: Sequence[Mapping[str, Any]]) -> None:
  """Raises ValueError unless every recipe shares the reference's data, classes, seed and selection split."""
  reference = recipes[0]
  if reference["config"].get("eval_split") != "validation":
    raise ValueError(
        f"{reference['workdir']} chose its checkpoints on the {reference['config'].get('eval_split')!r} split: "
        "recipes are compared on the validation split only (choosing by test figures leaks the test set). "
        "Train with --config.eval_split=validation.")
  reference_values = tables.flatten(reference["config"])
  for recipe in recipes[1:]:
    values = tables.flatten(recipe["config"])
    for field in tables.config_differences(reference["config"], recipe["config"]):
      if _must_share(field):
        raise ValueError(
            f"{recipe['workdir']} differs from the reference {reference['workdir']} in "
            f"{field}={_format_value(values.get(field, '(unset)'))} (reference: "
            f"{_format_value(reference_values.get(field, '(unset)'))}): recipes compared on the validation "
            "split must share the dataset, classes, seed and eval_split. Train it again with the reference's value.")


def recipe_rows(recipes: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
  """One row per recipe, the kept one (highest mean validation `metric`) flagged; in the order given."""
  if metric not in SELECTION_METRICS:
    raise ValueError(f"--metric={metric!r}: choose one of {', '.join(SELECTION_METRICS)}.")
  reference = recipes[0]
  rows = []
  for recipe in recipes:
    seeds = recipe["seeds"]
    row = {"recipe": recipe["name"], "workdir": recipe["workdir"], "num_seeds": len(seeds),
           "seeds": sorted(seeds),
           "differences": differences(reference["config"], recipe["config"]) if recipe is not reference else []}
    for key in [f"val_{k}" for k in SELECTION_METRICS] + ["test_iou", "test_dice"]:
      row[f"{key}_mean"], row[f"{key}_std"] = tables.mean_std([s[key] for s in seeds.values()])
    row["train_minutes_mean"], _ = tables.mean_std(
        [None if s["train_seconds"] is None else s["train_seconds"] / 60 for s in seeds.values()])
    # Paired by seed: the same validation split and initialisation, so seed-to-seed variation cancels.
    paired = sorted(set(seeds) & set(reference["seeds"])) if recipe is not reference else []
    deltas = [seeds[k][f"val_{metric}"] - reference["seeds"][k][f"val_{metric}"] for k in paired
              if seeds[k][f"val_{metric}"] is not None and reference["seeds"][k][f"val_{metric}"] is not None]
    row["paired_delta_mean"], row["paired_delta_std"] = tables.mean_std(deltas)
    row["paired_seeds"] = len(deltas)
    rows.append(row)
  scored = [r for r in rows if r[f"val_{metric}_mean"] is not None]
  if not scored:
    raise ValueError("No recipe has validation figures (selected_* in table1_runs.csv); were they trained "
                     "with evaluation on?")
  kept = max(scored, key=lambda r: r[f"val_{metric}_mean"])  # the first of equal maxima
  for row in rows:
    row["kept"] = row is kept
  return rows


_METRIC_TITLES = {"dice": "{fg} Dice", "iou": "{fg} IoU", "miou": "mIoU"}


def table_markdown(rows: Sequence[Mapping[str, Any]], recipes: Sequence[Mapping[str, Any]], model: str,
                   metric: str) -> str:
  """The recipe table as Markdown, with the rule that chose the kept recipe spelled out under it."""
  config = recipes[0]["config"]
  fg = tables.foreground_name(config)
  chosen_by = _METRIC_TITLES[metric].format(fg=fg)
  header = ["Recipe", "Differs from the reference", "Seeds", f"Val. {chosen_by}",
            f"Δ val. {chosen_by} vs reference (paired)", f"Val. {fg} IoU" if metric != "iou" else f"Val. {fg} Dice",
            f"Test {fg} IoU", f"Test {fg} Dice", "Train min / seed"]
  other_val = "val_iou" if metric != "iou" else "val_dice"
  lines = [f"## Recipes: {tables.display_name(model, str(config.get('encoder', '')))} on "
           f"{config['dataset']['name']}, chosen by validation {chosen_by}", "",
           "| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
  for r in rows:
    n = r["num_seeds"]
    name = f"**{r['recipe']}** (kept)" if r["kept"] else r["recipe"]
    delta = ("(reference)" if r is rows[0] else
             "—" if r["paired_delta_mean"] is None else
             f"{r['paired_delta_mean']:+.3f} ± {r['paired_delta_std']:.3f} ({r['paired_seeds']} seeds)")
    cells = [name, ", ".join(f"`{d}`" for d in r["differences"]) or ("—" if r is rows[0] else "(nothing)"),
             str(n), tables.format_mean_std(r[f"val_{metric}_mean"], r[f"val_{metric}_std"], n), delta,
             tables.format_mean_std(r[f"{other_val}_mean"], r[f"{other_val}_std"], n),
             tables.format_mean_std(r["test_iou_mean"], r["test_iou_std"], n),
             tables.format_mean_std(r["test_dice_mean"], r["test_dice_std"], n),
             "—" if r["train_minutes_mean"] is None else f"{r['train_minutes_mean']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  lines += [
      "",
      f"Reference: {rows[0]['workdir']}. Validation figures are those of the evaluation that chose each run's "
      f"checkpoint (by {config.get('best_metric')}); mean ± sample std over seeds. The paired Δ subtracts the "
      "reference's figure seed by seed (same validation split and initialisation), so seed-to-seed variation "
      f"cancels. The kept recipe has the highest mean validation {chosen_by}; test figures are for the record "
      "and took no part in the choice.",
      "",
  ]
  return "\n".join(lines)


_CSV_FIELDS = (["recipe", "workdir", "kept", "num_seeds", "differences"]
               + [f"val_{k}_{s}" for k in SELECTION_METRICS for s in ("mean", "std")]
               + ["paired_delta_mean", "paired_delta_std", "paired_seeds"]
               + [f"test_{k}_{s}" for k in ("iou", "dice") for s in ("mean", "std")] + ["train_minutes_mean"])


def write_tables(rows: Sequence[Mapping[str, Any]], markdown: str, out_dir: str) -> dict[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  paths = {name: os.path.join(out_dir, name) for name in ("recipes.md", "recipes.csv")}
  with open(paths["recipes.md"], "w") as f:
    f.write(markdown)
  with open(paths["recipes.csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      values = dict(row, differences="; ".join(row["differences"]))
      writer.writerow({k: ("" if values.get(k) is None else values[k]) for k in _CSV_FIELDS})
  return paths


def compare_recipes(workdirs: Sequence[str], model: str, metric: str = "dice",
                    out_dir: str = "") -> dict[str, Any]:
  """Loads, checks and tabulates the recipes; returns {"rows", "markdown", "files"}."""
  if len(workdirs) < 2:
    raise ValueError(f"--workdirs={','.join(workdirs)!r}: give at least two compare workdirs, the reference first.")
  if len(set(map(os.path.normpath, workdirs))) != len(workdirs):
    raise ValueError(f"--workdirs={','.join(workdirs)!r} names a workdir twice.")
  recipes = [load_recipe(w, model) for w in workdirs]
  check_comparable(recipes)
  rows = recipe_rows(recipes, metric)
  markdown = table_markdown(rows, recipes, model, metric)
  files = write_tables(rows, markdown, out_dir) if out_dir else {}
  return {"rows": rows, "markdown": markdown, "files": files}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = compare_recipes(flags.FLAGS.workdirs, flags.FLAGS.model, flags.FLAGS.metric, flags.FLAGS.out)
  print(result["markdown"])


if __name__ == "__main__":
  flags.DEFINE_list("workdirs", None, "compare workdirs, one per recipe; the first is the reference.")
  flags.DEFINE_string("model", "resnet34_unet", "The model whose runs are compared.")
  flags.DEFINE_enum("metric", "dice", SELECTION_METRICS, "Validation metric that chooses the recipe.")
  flags.DEFINE_string("out", "", "Directory for recipes.md and recipes.csv; empty = print only.")
  flags.mark_flags_as_required(["workdirs"])
  app.run(main)
