r"""Does veinjax train as well as the PyTorch original? Both frameworks on exactly the same data, side by side.

  python -m benchmarks.peer_accuracy --config=configs/usgra_seg.py --config.image_size=128 \
      --workdir=runs/peer_usgra128 [--num_seeds=3] [--frameworks=veinjax,pytorch] [--config.key=value]

For each seed k (config.seed + k) it trains veinjax's `resnet34_unet` (the `compare` runner's run, in
DIR/veinjax/seed_<k>) and the PyTorch reference, segmentation_models_pytorch's `Unet(config.encoder)` (in
DIR/pytorch/seed_<k>, `benchmarks/torch_training.py`), with the same recipe read from the one config, and
scores both on the test split with veinjax's own metrics. The reference is fed by veinjax's input pipeline,
so both see the same splits, the same augmented batches in the same order and the same test images; both
keep the state that was best on the config's `eval_split` by `best_metric`. What still differs between the
two is printed with the table (`torch_training.DIFFERENCES`).

One difference at a time: `--variant=NAME --config.model_init=smp` (or `--config.bn_running_variance=unbiased`,
the two training differences veinjax can switch to PyTorch's) trains veinjax's runs in DIR/NAME/seed_<k>
beside the same PyTorch runs (fields only veinjax reads do not invalidate them) and writes
DIR/peer_accuracy_NAME.md. `--config.final_fit=True` adds each veinjax run's final fit (`veinjax.final_fit`:
retrained on train + validation for the epoch count validation chose) as a row "<variant> final fit", with
its difference to the plain runs paired by seed.

Writes DIR/peer_accuracy.md (foreground IoU and Dice first, mean ± std over seeds, and a Welch t-test of
veinjax against PyTorch) and DIR/peer_accuracy_runs.csv (one row per run). Finished runs are skipped on a
second call (a changed config is an error naming the fields); an interrupted veinjax run resumes, an
interrupted PyTorch run starts again. torch and segmentation-models-pytorch are optional (never in
requirements.txt); without them `--frameworks=veinjax` still runs, and asking for pytorch says how to
install them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

FRAMEWORKS = ("veinjax", "pytorch")
# (metric key, column title); the foreground's IoU and Dice lead: pixel accuracy is ~0.96 for a model
# that misses most vessels.
METRIC_COLUMNS = (("iou", "{fg} IoU"), ("dice", "{fg} Dice"), ("acc", "ACC"), ("miou", "mIoU"),
                  ("hd95", "HD95 (px)"))
# Metrics the Welch t-test is printed for.
TESTED_METRICS = ("dice", "iou")
_METRIC_NAMES = {"dice": "Dice", "iou": "IoU"}


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
  """(t, two-sided p) of Welch's unequal-variance t-test of mean(a) vs mean(b); None when undefined
  (fewer than 2 values on a side, or no variance on either)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  a, b = [float(v) for v in a], [float(v) for v in b]
  if len(a) < 2 or len(b) < 2 or (len(set(a)) == 1 and len(set(b)) == 1):
    return None
  result = stats.ttest_ind(a, b, equal_var=False)
  return float(result.statistic), float(result.pvalue)


def run_workdir(workdir: str, framework: str, seed_index: int) -> str:
  return os.path.join(workdir, framework, f"seed_{seed_index}")


def train_seed(config, workdir: str, framework: str, seed_index: int, threads: int = 0,
               variant: str = "veinjax") -> list[dict[str, Any]]:
  """Trains (or skips, if finished) one framework's run of seed `config.seed + seed_index`.

  Returns its record {"framework" (the variant's name for veinjax), "seed", "metrics" (test), "selected"
  (the eval_split figures that chose the kept state, with its epoch), "train_seconds", "status"}, and for
  a veinjax run with config.final_fit a second one, framework "<variant> final fit", with its final fit's
  test metrics (trained on train + validation for the chosen epoch count, keeping its last state).
  """
  from veinjax.experiments import compare  # pylint: disable=g-import-not-at-top
  from veinjax.experiments import table1  # pylint: disable=g-import-not-at-top
  cfg = compare.run_config(config, config.model, seed_index)
  if framework == "veinjax":
    path = run_workdir(workdir, variant, seed_index)
    record = compare.train_or_resume(cfg, path)
    selected = table1.selection_metrics(path, cfg.best_metric)
    framework = variant
  else:
    from benchmarks import torch_training  # pylint: disable=g-import-not-at-top  (torch)
    path = run_workdir(workdir, framework, seed_index)
    record = torch_training.train_and_evaluate(cfg, path, threads=threads)
    if record["status"] == "skipped":
      # Fields only veinjax reads may differ, so one set of reference runs serves every veinjax --variant.
      compare._check_same_config(  # pylint: disable=protected-access
          record.get("config", {}), json.loads(cfg.to_json_best_effort()), path, "a finished",
          free_fields=torch_training.VEINJAX_ONLY_FIELDS, runner="peer_accuracy")
    selected = record["selected"]
  records = [{"framework": framework, "seed": int(cfg.seed), "metrics": record["metrics"], "selected": selected,
              "train_seconds": record.get("train_seconds"), "status": record["status"]}]
  if record.get("final_metrics") is not None:
    records.append({"framework": f"{variant} final fit", "seed": int(cfg.seed), "metrics": record["final_metrics"],
                    "selected": {"epoch": record.get("final_epochs")},
                    "train_seconds": record.get("final_train_seconds"), "status": record["status"]})
  return records


def _values(records: Sequence[Mapping[str, Any]], framework: str, key: str, where: str | None = "metrics"):
  """`key` of `framework`'s records (of their `where` dict, or of the record itself), where it is set."""
  found = [(r if where is None else r[where]).get(key) for r in records if r["framework"] == framework]
  return [v for v in found if v is not None]


def table_markdown(records: Sequence[Mapping[str, Any]], foreground: str, title: str,
                   differences: Sequence[str]) -> str:
  """The side-by-side table (mean ± sample std over seeds), the Welch t-tests and what differs."""
  from veinjax.experiments import tables  # pylint: disable=g-import-not-at-top
  frameworks = list(dict.fromkeys(r["framework"] for r in records))  # in the order they were trained
  header = (["Framework", "Seeds"] + [t.format(fg=foreground) for _, t in METRIC_COLUMNS]
            + [f"Val. {foreground} Dice (chose the state)", "Train min / seed"])
  lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
           "|---|" + "---:|" * (len(header) - 1)]
  for framework in frameworks:
    runs = [r for r in records if r["framework"] == framework]
    cells = [framework, str(len(runs))]
    for key, _ in METRIC_COLUMNS:
      digits = 2 if key == "hd95" else 3
      cells.append(tables.format_mean_std(*tables.mean_std(_values(records, framework, key)), len(runs), digits))
    cells.append(tables.format_mean_std(*tables.mean_std(_values(records, framework, "dice", "selected")),
                                        len(runs)))
    minutes = [s / 60 for s in _values(records, framework, "train_seconds", where=None)]
    cells.append(tables.format_mean_std(*tables.mean_std(minutes), len(minutes), 1))
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  ours = [f for f in frameworks if f != "pytorch"]
  for mine in ours if "pytorch" in frameworks else []:
    for key in TESTED_METRICS:
      a, b = _values(records, mine, key), _values(records, "pytorch", key)
      if not a or not b:
        continue
      delta = sum(a) / len(a) - sum(b) / len(b)
      test = welch_t_test(a, b)
      verdict = ("Welch t = {:.2f}, p = {:.3f}".format(*test) if test else
                 "no t-test (fewer than 2 seeds each, or no spread)")
      lines.append(f"- test {foreground} {_METRIC_NAMES[key]}, {mine} − "
                   f"pytorch: {delta:+.4f} ({verdict}; seeds: {mine} "
                   f"{', '.join(f'{v:.3f}' for v in a)}; pytorch {', '.join(f'{v:.3f}' for v in b)})")
  for mine in ours:
    if mine.endswith(" final fit") and mine[:-len(" final fit")] in frameworks:
      plain = {r["seed"]: r["metrics"].get("dice") for r in records if r["framework"] == mine[:-len(" final fit")]}
      pairs = [(r["metrics"].get("dice"), plain.get(r["seed"])) for r in records if r["framework"] == mine]
      deltas = [f - p for f, p in pairs if f is not None and p is not None]
      if deltas:
        mean, std = tables.mean_std(deltas)
        lines.append(f"- test {foreground} Dice, {mine} − {mine[:-len(' final fit')]}, paired by seed: "
                     f"{tables.format_mean_std(mean, std, len(deltas), 4)} (seeds: "
                     f"{', '.join(f'{d:+.3f}' for d in deltas)})")
  lines.append("")
  lines.append("Identical by construction: splits, augmented batches and their order, test images, loss "
               "formula, optimizer and schedule, checkpoint rule, metrics code. What differs:")
  lines += [f"- {d}" for d in differences]
  return "\n".join(lines) + "\n"


def write_runs_csv(records: Sequence[Mapping[str, Any]], path: str) -> None:
  from veinjax import files  # pylint: disable=g-import-not-at-top
  fields = (["framework", "seed"] + [k for k, _ in METRIC_COLUMNS] + ["selected_epoch", "selected_dice",
                                                                      "selected_iou", "train_seconds"])
  rows = []
  for r in records:
    row = {"framework": r["framework"], "seed": r["seed"], "train_seconds": r.get("train_seconds"),
           **{k: r["metrics"].get(k) for k, _ in METRIC_COLUMNS}}
    row.update({f"selected_{k}": r["selected"].get(k) for k in ("epoch", "dice", "iou")})
    rows.append(row)

  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=fields)
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(path, text.getvalue())


def differences(config) -> list[str]:
  """What differs between the two frameworks' runs of `config` (the reference's fixed traits, veinjax's
  matching options as configured)."""
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top  (no torch import at load)
  return list(torch_training.DIFFERENCES) + [
      f"veinjax here: model_init={config.get('model_init', 'veinjax')!r}, "
      f"bn_running_variance={config.get('bn_running_variance', 'biased')!r}"]


def run(config, workdir: str, num_seeds: int, frameworks: Sequence[str], threads: int = 0,
        variant: str = "veinjax") -> dict[str, Any]:
  """Trains every (seed, framework) run not finished yet, seed by seed, and writes the table.

  Returns {"records": [...], "markdown": str, "files": {name: path}}.
  """
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top
  from veinjax import train_lib  # pylint: disable=g-import-not-at-top
  from veinjax import files  # pylint: disable=g-import-not-at-top
  from veinjax.experiments import tables  # pylint: disable=g-import-not-at-top
  unknown = [f for f in frameworks if f not in FRAMEWORKS]
  if not frameworks or unknown:
    raise ValueError(f"--frameworks={','.join(frameworks)}: give a comma-separated subset of "
                     f"{','.join(FRAMEWORKS)}.")
  if variant == "pytorch" or not variant.replace("_", "").replace("-", "").isalnum():
    raise ValueError(f"--variant={variant!r}: a name of letters, digits, '_' and '-' other than 'pytorch'.")
  if num_seeds < 1:
    raise ValueError(f"--num_seeds={num_seeds} must be >= 1.")
  train_lib.validate_config(config)
  if "pytorch" in frameworks:
    torch_training.check_config(config)
    torch_training.import_torch()  # fail before any training, not after the first veinjax run
  records = []
  for k in range(num_seeds):
    for framework in frameworks:
      for record in train_seed(config, workdir, framework, k, threads, variant):
        records.append(record)
        print(f"{record['framework']} seed {record['seed']} ({record['status']}): test dice "
              f"{record['metrics']['dice']:.4f} iou {record['metrics']['iou']:.4f}", flush=True)
  foreground = tables.foreground_name(config)
  title = (f"{config.dataset.name} {config.image_size}x{config.image_size}, {config.model} "
           f"({config.encoder}), loss {config.loss}, {config.optimizer} {config.learning_rate:g} "
           f"{config.lr_schedule}, batch {config.batch_size}, {config.num_epochs} epochs")
  markdown = table_markdown(records, foreground, title, differences(config))
  os.makedirs(workdir, exist_ok=True)
  suffix = "" if variant == "veinjax" else f"_{variant}"
  md_path = os.path.join(workdir, f"peer_accuracy{suffix}.md")
  csv_path = os.path.join(workdir, f"peer_accuracy{suffix}_runs.csv")
  files.write_text(md_path, markdown)
  write_runs_csv(records, csv_path)
  return {"records": records, "markdown": markdown,
          "files": {os.path.basename(md_path): md_path, os.path.basename(csv_path): csv_path}}


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top

  def body():
    frameworks = [f.strip() for f in flags.FLAGS.frameworks.split(",") if f.strip()]
    print(run(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.num_seeds, frameworks, flags.FLAGS.threads,
              flags.FLAGS.variant)["markdown"])

  torch_training.peer_main(argv, __file__, body)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top
  torch_training.preload()  # torch before TensorFlow (see torch_training.import_torch); a no-op without it
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from veinjax import cli  # pylint: disable=g-import-not-at-top
  config_flag = config_flags.DEFINE_config_file("config", None, "Training config file, e.g. "
                                                "configs/usgra_seg.py.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory of the comparison (one sub-directory per framework and seed).")
  flags.DEFINE_integer("num_seeds", 3, "Seeds config.seed .. config.seed + n - 1, each framework.")
  flags.DEFINE_string("frameworks", "veinjax,pytorch", "Comma-separated subset of veinjax,pytorch.")
  flags.DEFINE_string("variant", "veinjax", "Name of the veinjax runs (DIR/<variant>/seed_<k>, the table's row): "
                      "e.g. --variant=veinjax_smp_init --config.model_init=smp beside the same PyTorch runs.")
  flags.DEFINE_integer("threads", 0, "torch intra-op threads (0 = torch's default: every core).")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main, config_flag=config_flag)
