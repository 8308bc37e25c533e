"""The files of a run's workdir that are not checkpoints: config.json, history.jsonl, metrics JSON.

  DIR/config.json      the resolved config of the run (`write_config`, `load_config`; a resume with another
                       config compares them with `config_changes` and keeps the old one: `keep_previous_config`)
  DIR/history.jsonl    one JSON object per evaluation (`append_history`, `read_history`, `truncate_history`)
  any *.json           strict JSON written atomically (`write_json`), so a reader never sees half a file

Every file here is written whole (`veinjax.files`): a write that fails leaves the file as it was, and one
that fails for want of space raises `files.DiskFullError` naming the file.

Only process 0 writes (every writer here is a no-op elsewhere), so callers on many hosts need no
`if jax.process_index() == 0`. Metrics go through `to_jsonable`: numpy values become plain JSON and an
undefined metric (NaN) becomes null, which strict JSON readers accept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from veinjax import files
from veinjax.models import unet

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.jsonl"

# Fields added to the config after runs were recorded, with the value that trains as those runs did: a
# recorded config without one compares as if it had this value, so older runs stay comparable (resume,
# compare). dataset.high_bit_depth "auto" reads 16-bit data as before unless a PNG has an sBIT chunk;
# bn_running_variance "biased" and model_init "veinjax" are flax's BatchNorm and veinjax's init, as before;
# unet_widths the original U-Net's; dataset.phantom_random_off / _settings "": every group randomised, with
# the default ranges.
ADDED_FIELDS = {"encoder_weights": "", "init_from": "", "init_from_checkpoint": "best", "init_from_scope": "all",
                "input_mean": [], "input_std": [], "dataset.high_bit_depth": "auto", "dataset.group_pattern": "",
                "final_fit": False, "bn_running_variance": "biased", "model_init": "veinjax",
                "unet_widths": list(unet.UNET_WIDTHS), "dataset.phantom_random_off": "",
                "dataset.phantom_random_settings": "", "ema_decay": 0.0}


def to_jsonable(value):
  """Metrics (numpy scalars and arrays) as plain, strict JSON values.

  An undefined metric (NaN, e.g. HD95 of a split without veins) or an infinite one becomes null: Python's
  json would write the bare token NaN, which strict JSON readers reject.
  """
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return to_jsonable(np.asarray(value).tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _is_writer() -> bool:
  return jax.process_index() == 0


def write_json(path: str, value: Any, indent: int | None = 2) -> None:
  """Writes `value` as strict JSON (sorted keys), atomically: a temporary file renamed over `path`."""
  if not _is_writer():
    return
  files.write_text(path, json.dumps(to_jsonable(value), indent=indent, sort_keys=True, allow_nan=False) + "\n")


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """DIR/config.json: the resolved config the run trains with (atomically: other processes read it)."""
  if _is_writer():
    files.write_text(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def config_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """A config as plain JSON data (tuples become lists), as config.json holds it, so the two compare equal."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(to_jsonable(config)))


def config_changes(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """(dotted field, stored value, wanted value) for each field that differs between two config JSONs, in
  field order (`veinjax.experiments.tables.config_differences`); a field only one has shows `None` on the
  other side, except the ADDED_FIELDS, which a stored config without them is taken to hold."""
  from veinjax.experiments import tables  # pylint: disable=g-import-not-at-top
  stored, wanted = with_added_fields(stored, wanted), tables.flatten(wanted)
  return [(field, stored.get(field), wanted.get(field)) for field in tables.config_differences(stored, wanted)]


def with_added_fields(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
  """`stored` (flattened to dotted names) with each of ADDED_FIELDS that `wanted` has and it lacks."""
  from veinjax.experiments import tables  # pylint: disable=g-import-not-at-top
  stored, wanted = tables.flatten(stored), tables.flatten(wanted)
  return {**{k: v for k, v in ADDED_FIELDS.items() if k in wanted}, **stored}


def keep_previous_config(workdir: str) -> str | None:
  """Copies DIR/config.json to DIR/config.json.<YYYYmmdd-HHMMSS> (before a changed config replaces it);
  returns the copy's path (None on other processes or without a config.json)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not _is_writer() or not os.path.exists(path):
    return None
  stamp = time.strftime("%Y%m%d-%H%M%S")
  copy, n = f"{path}.{stamp}", 1
  while os.path.exists(copy):
    copy, n = f"{path}.{stamp}-{n}", n + 1
  shutil.copy2(path, copy)
  return copy


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to DIR/config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} a train.py workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def read_history(workdir: str) -> list[dict]:
  """The records of DIR/history.jsonl, in the order written."""
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_history(workdir: str, step: int) -> None:
  """Drops records newer than the checkpoint a resumed run continues from (it will write them again)."""
  if not _is_writer():
    return
  records = [r for r in read_history(workdir) if r.get("step", 0) <= step]
  files.write_text(os.path.join(workdir, HISTORY_FILE), "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))


def append_history(workdir: str, record: Mapping[str, Any]) -> None:
  """Adds one evaluation record to DIR/history.jsonl, whole or not at all (a failed append leaves no half
  line, which would stop every later `read_history`, and so the run's resume)."""
  if _is_writer():
    path = os.path.join(workdir, HISTORY_FILE)
    line = (json.dumps(to_jsonable(record), allow_nan=False) + "\n").encode("utf-8")
    with open(path, "ab", buffering=0) as f:
      files.append_whole(f, line, path, kept=f"{path} holds the records before this one (no half-written line); "
                         "the checkpoint of this evaluation was not written, so resuming redoes it.")
