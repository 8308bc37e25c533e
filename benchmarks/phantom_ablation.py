r"""Which randomisations of the phantom teach real vessels? An ablation measured on real frames, zero-shot.

  python -m benchmarks.phantom_ablation --workdir=runs/phantom_ablation [--num_seeds=1] \
      [--arms=all,layers,vessels,...] [--config=configs/phantom_pretrain.py] [--config.key=value] \
      [--real_config=configs/usgra_seg.py] [--real_config.dataset.root=...]

Each arm trains the config's model on the randomised phantom (`vein_phantom_random`) with some
randomisation groups switched off (`config.dataset.phantom_random_off`; the groups are
`veinjax.data.phantom_random.GROUPS`), then evaluates its best checkpoint (chosen on phantom frames) on a
real dataset it never saw, zero-shot:

- "validation": the real config's validation split (carved from its train split by the run's seed), the
  split the issue names;
- "non_test": the real dataset's train split with no validation carved from it (validation_fraction=0), so
  every non-test frame of a dataset without a validation folder of its own: a larger sample of the same
  kind, none of which a phantom-only model trains on.

The real test split is never evaluated here, so nothing is chosen on it. An arm is "all" (every group
randomised) or groups joined by "+" ("gain+speckle+compression": those off together). The default arms are
the main groups: tissue layers, vessels, distractors, artefacts, acoustics (gain, speckle, compression
together) and the scan geometry with its overlays. Seed k of every arm is config.seed + k, so arms are paired
by seed (the same initialisation and the same phantom frames, apart from what the ablated groups draw).

Writes DIR/phantom_ablation.md (foreground Dice and IoU per arm, mean ± std over seeds, and the difference
to "all" paired by seed) and DIR/phantom_ablation_runs.csv. Finished runs are skipped on a second call (a
changed config is an error naming the fields, from the `compare` runner); their real-data figures are kept
in DIR/<arm>/seed_<k>/zero_shot.json.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

ALL = "all"
DEFAULT_ARMS = ("all", "layers", "vessels", "distractors", "artifacts", "gain+speckle+compression",
                "geometry+overlays")
REAL_SPLITS = ("validation", "non_test")
ZERO_SHOT_FILE = "zero_shot.json"
_METRICS = ("dice", "iou")


def groups_of(arm: str) -> list[str]:
  """The randomisation groups an arm switches off ([] for "all"), in GROUPS order; a ValueError naming
  --arms if unknown."""
  from veinjax.data import phantom_random_ranges  # pylint: disable=g-import-not-at-top
  if arm == ALL:
    return []
  groups = arm.split("+")
  unknown = [g for g in groups if g not in phantom_random_ranges.GROUPS]
  if unknown or not arm:
    raise ValueError(f"--arms: {arm!r} is not an arm: use {ALL!r} or groups joined by '+' from "
                     f"{', '.join(phantom_random_ranges.GROUPS)}.")
  return [g for g in phantom_random_ranges.GROUPS if g in groups]


def check_arms(arms: Sequence[str]) -> None:
  """Every arm known, "all" among them, and no arm twice (in any order of its groups)."""
  canonical = ["+".join(groups_of(arm)) or ALL for arm in arms]
  if ALL not in canonical:
    raise ValueError(f"--arms must include {ALL!r}: the other arms are measured against it.")
  repeated = sorted({a for a in canonical if canonical.count(a) > 1})
  if repeated:
    raise ValueError(f"--arms: {', '.join(repeated)} given twice; give each arm once.")


def check_config(config) -> None:
  """The base config trains on the randomised phantom with every group on (the arms switch them off)."""
  if config.dataset.name != "vein_phantom_random":
    raise ValueError(f"--config.dataset.name={config.dataset.name!r}: the ablation switches randomisation "
                     "groups of vein_phantom_random; use configs/phantom_pretrain.py or set the name.")
  if config.dataset.get("phantom_random_off", ""):
    raise ValueError(f"--config.dataset.phantom_random_off={config.dataset.phantom_random_off!r}: the arms "
                     "set it; leave it empty and name the groups in --arms.")


def arm_config(config, arm: str, seed_index: int):
  """The training config of one arm and seed."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.dataset.phantom_random_off = ",".join(groups_of(arm))
  out.seed = int(config.seed) + seed_index
  return out


def _real_configs(run_config, real_config) -> dict[str, tuple[Any, str]]:
  """{real split name: (the run's config with the real dataset, the split to evaluate)}."""
  from veinjax import evaluation  # pylint: disable=g-import-not-at-top
  validation = evaluation.with_dataset_of(run_config, real_config, flag="--real_config")
  non_test = evaluation.with_dataset_of(run_config, real_config, flag="--real_config")
  non_test.dataset.validation_fraction = 0.0
  return {"validation": (validation, "validation"), "non_test": (non_test, "train")}


def check_real_data(config, real_config) -> None:
  """Both real splits exist and are not empty (before any training, not after the first arm)."""
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top
  for name, (real, split) in _real_configs(arm_config(config, ALL, 0), real_config).items():
    try:
      count = sources.num_examples(real, split)
    except ValueError as e:
      raise ValueError(f"--real_config: its {name} frames ({split} split): {e}") from None
    if count == 0:
      raise ValueError(f"--real_config: its {name} frames ({split} split) are empty.")


def zero_shot(run_config, real_config, run_dir: str) -> dict[str, dict[str, float]]:
  """{real split: metrics} of the run's best checkpoint on the real dataset; cached in the run directory."""
  from veinjax import evaluation  # pylint: disable=g-import-not-at-top
  from veinjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(run_dir, ZERO_SHOT_FILE)
  wanted = real_config.dataset.to_json_best_effort(sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    if stored.get("real_dataset") == wanted:
      return stored["metrics"]
  metrics = {}
  for name, (config, split) in _real_configs(run_config, real_config).items():
    result = evaluation.evaluate(config, run_dir, checkpoint="best", split=split,
                                 output_prefix=f"{config.dataset.name}_{name}_")
    metrics[name] = {k: float(result[k]) for k in (*_METRICS, "num_examples")}
  workdir_lib.write_json(path, {"real_dataset": wanted, "metrics": metrics})
  return metrics


def run_ablation(config, real_config, workdir: str, arms: Sequence[str], num_seeds: int) -> list[dict[str, Any]]:
  """Trains (or skips, when finished) every arm and seed; returns one record per run."""
  from veinjax.experiments import compare  # pylint: disable=g-import-not-at-top
  check_arms(arms)  # everything checked before the first run trains
  check_config(config)
  check_real_data(config, real_config)
  records = []
  for seed_index in range(num_seeds):
    for arm in arms:
      run_config = arm_config(config, arm, seed_index)
      run_dir = os.path.join(workdir, arm, f"seed_{seed_index}")
      record = compare.train_or_resume(run_config, run_dir)
      records.append({"arm": arm, "seed": int(run_config.seed), "phantom_test_dice": record["metrics"]["dice"],
                      "real": zero_shot(run_config, real_config, run_dir)})
      write_tables(records, arms, workdir)
  return records


def _mean_std(values: Sequence[float], signed: bool = False) -> str:
  mean = f"{statistics.mean(values):+.3f}" if signed else f"{statistics.mean(values):.3f}"
  return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.3f}"


def table_markdown(records: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> str:
  """One row per arm: real-data Dice and IoU per split, their paired difference to "all", phantom Dice."""
  by_arm = {arm: sorted((r for r in records if r["arm"] == arm), key=lambda r: r["seed"]) for arm in arms}
  reference = {r["seed"]: r for r in by_arm.get(ALL, [])}
  head = ["arm (groups off)", "seeds"]
  for split in REAL_SPLITS:
    head += [f"{split} Dice", f"{split} IoU", f"{split} Dice − all"]
  head.append("phantom test Dice")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
  for arm in arms:
    runs = by_arm[arm]
    if not runs:
      continue
    cells = [arm if arm == ALL else arm.replace("+", ", "), str(len(runs))]
    for split in REAL_SPLITS:
      cells += [_mean_std([r["real"][split][m] for r in runs]) for m in _METRICS]
      paired = [r["real"][split]["dice"] - reference[r["seed"]]["real"][split]["dice"]
                for r in runs if r["seed"] in reference]
      cells.append("—" if arm == ALL or not paired else _mean_std(paired, signed=True))
    cells.append(_mean_std([r["phantom_test_dice"] for r in runs]))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_tables(records: Sequence[Mapping[str, Any]], arms: Sequence[str], workdir: str) -> str:
  """Writes DIR/phantom_ablation.md and DIR/phantom_ablation_runs.csv; returns the markdown."""
  markdown = table_markdown(records, arms)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "phantom_ablation.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(workdir, "phantom_ablation_runs.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arm", "seed", "phantom_test_dice"] + [f"{s}_{m}" for s in REAL_SPLITS for m in _METRICS])
    for r in records:
      writer.writerow([r["arm"], r["seed"], r["phantom_test_dice"]] +
                      [r["real"][s][m] for s in REAL_SPLITS for m in _METRICS])
  return markdown


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  arms = [a.strip() for a in values.arms.split(",") if a.strip()]
  if values.num_seeds < 1:
    raise ValueError(f"--num_seeds={values.num_seeds}: at least 1.")
  records = run_ablation(values.config, values.real_config, values.workdir, arms, values.num_seeds)
  print(write_tables(records, arms, values.workdir))


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from veinjax import cli  # pylint: disable=g-import-not-at-top
  _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config_flag = config_flags.DEFINE_config_file(
      "config", os.path.join(_root, "configs", "phantom_pretrain.py"), "Training config on the randomised phantom.")
  config_flags.DEFINE_config_file("real_config", os.path.join(_root, "configs", "usgra_seg.py"),
                                  "Config whose dataset block is the real data measured zero-shot.")
  flags.DEFINE_string("workdir", None, "Directory of the ablation (DIR/<arm>/seed_<k>).")
  flags.DEFINE_string("arms", ",".join(DEFAULT_ARMS), "Comma-separated arms: 'all' and groups joined by '+'.")
  flags.DEFINE_integer("num_seeds", 1, "Seeds config.seed .. config.seed + n - 1 of every arm.")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main, config_flag=config_flag)
