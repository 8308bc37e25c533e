"""The XLA:CPU setting veinjax makes before JAX starts, and what the models read from it.

jaxlib 0.10 runs every convolution on CPU through YNNPACK (its "ynn fusions") by default. On the x86 CPUs
veinjax was measured on, those are slower than XLA's older Eigen convolutions, most of all backwards:
a 3x3 conv on [4, 128, 128, 64] forward + both gradients took 352 ms with YNNPACK and 125 ms with Eigen,
the forward alone 44 against 34 (2-core AMD EPYC, jit, median of 5; the whole train step in README
"Training speed on this CPU, against PyTorch").
Importing veinjax therefore appends

    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution

to `XLA_FLAGS` (YNNPACK's other fusions stay as they are), unless

- `VEINJAX_XLA_CPU_FLAGS=0` is set (keep XLA's defaults),
- `XLA_FLAGS` already sets `xla_cpu_experimental_ynn_fusion_type` (the user's choice wins),
- the installed jaxlib is not one veinjax has checked the flag on (an unknown flag aborts XLA at start-up:
  `CHECKED_JAXLIB` below), or
- JAX's backends are already running (XLA reads the flags once, when the first backend starts: import
  veinjax before calling `jax.devices()` or running any computation).

The flag only concerns the CPU backend; GPU and TPU ignore it. `ynn_convolutions_active()` tells the
models which convolutions XLA:CPU runs, because their CPU workarounds (`models/layers.py`) depend on it.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

YNN_FUSION_FLAG = "xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"--{YNN_FUSION_FLAG}=-individual_convolution"
OPT_OUT_ENV = "VEINJAX_XLA_CPU_FLAGS"
# (major, minor) of the jaxlib releases whose XLA knows the flag and whose default list holds YNNPACK's
# convolutions (checked on jaxlib 0.10.2: the compiled HLO's convolutions turn from ynn fusions into
# XLA's own). Extend after checking a new release; until then it runs with XLA's defaults.
CHECKED_JAXLIB = ((0, 10),)


def _jaxlib_version() -> tuple[int, ...] | None:
  try:
    text = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None
  parts = []
  for piece in text.split(".")[:2]:
    digits = "".join(ch for ch in piece if ch.isdigit())
    if not digits:
      return None
    parts.append(int(digits))
  return tuple(parts)


def _backends_started() -> bool:
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started()) if started is not None else False


def flag_to_add(xla_flags: str, *, opt_out: str | None, jaxlib_version: tuple[int, ...] | None,
                backends_started: bool) -> str | None:
  """The flag veinjax would append to `xla_flags`, or None (and why not is in the module docstring)."""
  if opt_out is not None and opt_out.strip().lower() in ("0", "false", "no", "off"):
    return None
  if YNN_FUSION_FLAG in xla_flags or backends_started:
    return None
  if jaxlib_version is None or tuple(jaxlib_version[:2]) not in CHECKED_JAXLIB:
    return None
  return EIGEN_CONVOLUTIONS


def apply_flags() -> bool:
  """Appends the flag to `XLA_FLAGS` where it applies (see the module docstring); True if it did."""
  current = os.environ.get("XLA_FLAGS", "")
  flag = flag_to_add(current, opt_out=os.environ.get(OPT_OUT_ENV), jaxlib_version=_jaxlib_version(),
                     backends_started=_backends_started())
  if flag is None:
    return False
  os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()
  return True


def ynn_convolutions_active(xla_flags: str | None = None) -> bool:
  """Whether XLA:CPU runs convolutions through YNNPACK, judged from `XLA_FLAGS` (default: the environment's).

  False only where the flags take `individual_convolution` out of YNNPACK's list (veinjax's flag, or the
  user's own list without it); anything else counts as YNNPACK's default, as XLA's own default does."""
  flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  value = None
  for token in flags.split():
    name, _, setting = token.lstrip("-").partition("=")
    if name == YNN_FUSION_FLAG:
      value = setting  # the last one wins, as in XLA's flag parser
  if value is None:
    return True
  items = [item for item in value.split(",") if item]
  if not items:  # an empty value: XLA's default list
    return True
  if all(item[0] in "+-" for item in items):  # edits of the default list, which holds the convolutions
    active = True
    for item in items:
      if item[1:] == "individual_convolution":
        active = item[0] == "+"
    return active
  return "individual_convolution" in items  # an exact list
