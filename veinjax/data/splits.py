"""Seeded hold-outs of a split's examples: file by file, or by subject (group) so no subject is in two splits.

numpy only (no TensorFlow): `veinjax.data.sources` carves validation and test splits with these.
"""

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

GROUP_FLAG = "--config.dataset.group_pattern"


def holdout(n: int, fraction: float, seed: int, salt: int, what: str) -> np.ndarray:
  """A seeded boolean selection of round(n * fraction) of n items (at least 1, leaving at least 1)."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"{what}={fraction}; it must be in [0, 1).")
  selected = np.zeros(n, dtype=bool)
  if fraction == 0.0:
    return selected
  if n < 2:
    raise ValueError(f"cannot hold out {what}={fraction} of {n} example(s); add examples or set it to 0.")
  count = min(max(int(round(n * fraction)), 1), n - 1)
  order = np.random.default_rng([int(seed), salt]).permutation(n)
  selected[order[:count]] = True
  return selected


def holdout_groups(groups: Sequence[str], fraction: float, seed: int, salt: int, what: str) -> np.ndarray:
  """A seeded boolean selection of whole groups: `groups[i]` names item i's group (e.g. its patient).

  The groups are drawn in a seeded random order (by `seed` and `salt`, as `holdout`); each is taken if it
  brings the selected total closer to round(n * fraction) examples (kept within [1, n - 1]), so the total is
  about that. At least one group is selected (the one closest to the target in size when every group
  overshoots) and at least one is left. Every item of a group gets the group's value, so a group can never be
  on both sides. With one item per group (in item order) the selection is exactly `holdout`'s.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"{what}={fraction}; it must be in [0, 1).")
  n = len(groups)
  if fraction == 0.0:
    return np.zeros(n, dtype=bool)
  names = list(dict.fromkeys(groups))  # in order of first appearance: deterministic for sorted files
  if len(names) < 2:
    raise ValueError(f"cannot hold out {what}={fraction} by group: the {n} example(s) form {len(names)} "
                     f"group(s) under {GROUP_FLAG}; add subjects, fix the pattern, or set {what} to 0.")
  position = {name: i for i, name in enumerate(names)}
  member = np.array([position[g] for g in groups], dtype=np.int64)
  sizes = np.bincount(member, minlength=len(names))
  target = min(max(int(round(n * fraction)), 1), n - 1)
  order = np.random.default_rng([int(seed), salt]).permutation(len(names))
  chosen = np.zeros(len(names), dtype=bool)
  total = 0
  for g in order:
    if chosen.sum() == len(names) - 1:  # leave at least one group
      break
    if abs(total + sizes[g] - target) < abs(total - target):
      chosen[g] = True
      total += sizes[g]
  if not chosen.any():  # every group overshoots on its own: the nearest one (first in the order on ties)
    chosen[min(order, key=lambda g: abs(sizes[g] - target))] = True
  return chosen[member]


def group_pattern_text(config) -> str:
  return str(config.dataset.get("group_pattern", "") or "")


def group_pattern(config) -> Optional["re.Pattern"]:
  """config.dataset.group_pattern compiled, or None when it is empty or absent."""
  text = group_pattern_text(config)
  if not text:
    return None
  try:
    return re.compile(text)
  except re.error as e:
    raise ValueError(f"{GROUP_FLAG}={text!r} is not a regular expression ({e}); e.g. '^(patient\\d+)_' for "
                     f"files named patient01_frame003.png.") from None


def group_of(path, pattern: "re.Pattern") -> str:
  """The group a file belongs to: `pattern` searched in its name, the first capture group or the match."""
  name = Path(path).name
  match = pattern.search(name)
  group = None if match is None else (match.group(1) if pattern.groups else match.group(0))
  if not group:
    why = "does not match" if match is None else "matches with an empty group in"
    raise ValueError(f"file {path} {why} {GROUP_FLAG}={pattern.pattern!r}, so its subject (group) is "
                     f"unknown: rename the file or fix the pattern (searched in the file name; its first "
                     f"group, or the whole match, names the subject).")
  return group


def holdout_items(n: int, fraction: float, seed: int, salt: int, what: str,
             groups: Optional[Sequence[str]] = None) -> np.ndarray:
  """`holdout` of n items, or `holdout_groups` when `groups` (one name per item) is given."""
  if groups is None:
    return holdout(n, fraction, seed, salt, what)
  return holdout_groups(groups, fraction, seed, salt, what)
