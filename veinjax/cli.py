"""What the absl mains (train.py, eval.py, predict.py, the experiment runners) share.

  cli.run(main, config_flag=_CONFIG)   # instead of app.run(main)
  cli.quiet_library_logs(__file__)     # once, in main

- `run`: a clear error (`ValueError` and its kinds `BadExampleError`, `CheckpointMismatchError`,
  `WeightsError`; `FileNotFoundError`; `FloatingPointError`; `files.DiskFullError`, or a full disk in
  another library's words) is printed alone, `Error: <message>` on stderr, and the main exits with status
  1; with absl's `--verbosity=1` (or higher) the full traceback is shown instead. An override of a config
  field that does not exist (`--config.lerning_rate=0.1`, which ml_collections reports as a bare
  AttributeError deep in flag parsing) is reported the same way, naming the flag and the closest valid
  fields; so is a config file that does not load.
- `quiet_library_logs`: hides the INFO chatter of orbax, TFDS and JAX (and orbax's own tracebacks of a full
  disk, which veinjax reports once); `run` also drops the tracebacks of orbax writes that finish after one
  of them failed (`drop_closed_loop_callbacks`).
- `shell_command`: a command line with its arguments quoted (for the hints a main prints).

The library itself never changes logging or exits; only the mains call these.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from veinjax import files

# The errors whose message says all there is to say (the message names the flag, file or step and the fix).
# BadExampleError, CheckpointMismatchError and WeightsError are ValueErrors; DiskFullError is an OSError
# (veinjax.files: a full disk or quota, naming the path and what was kept).
CLEAR_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, files.DiskFullError)


def _about_a_full_disk(record: logging.LogRecord) -> bool:
  error = record.exc_info[1] if record.exc_info else None
  return (error is not None and files.is_disk_full(error)) or files.is_disk_full(Exception(record.getMessage()))


class _OnlyOwnInfo(logging.Filter):
  """Passes warnings and errors from everywhere, INFO only from veinjax and the running main; drops orbax's
  error reports of a full disk (a traceback from each of its writer threads), which veinjax.checkpoint
  raises once, as `files.DiskFullError`."""

  def __init__(self, keep_dirs):
    super().__init__()
    self._keep = tuple(keep_dirs)

  def filter(self, record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" in record.pathname and record.levelno >= logging.ERROR:
      return not _about_a_full_disk(record)
    return record.levelno >= logging.WARNING or record.pathname.startswith(self._keep)


def quiet_library_logs(main_file: str) -> None:
  """Hides the INFO chatter of orbax, TFDS and JAX (a dozen lines per checkpoint) from absl logging, so a
  run's progress lines stay readable; their warnings and errors still show. For train.py and eval.py; the
  library itself never changes logging."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  keep = (os.path.dirname(os.path.abspath(__file__)), os.path.abspath(main_file))
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _OnlyOwnInfo) for f in handler.filters):
    handler.addFilter(_OnlyOwnInfo(keep))


def shell_command(*args: str) -> str:
  """A command line to print as a hint, each argument quoted for a POSIX shell where needed."""
  return " ".join(shlex.quote(str(a)) for a in args)


# ---- Unknown config fields ----


def _is_node(value) -> bool:
  """A ConfigDict (not a collections Mapping) or a dict: a field with fields of its own."""
  return isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "items"))


def field_names(config, prefix: str = "") -> list[str]:
  """Every dotted leaf field name of a ConfigDict ("seed", "dataset.name", "augment.enabled", ...)."""
  names = []
  for key, value in config.items():
    if _is_node(value):
      names.extend(field_names(value, f"{prefix}{key}."))
    else:
      names.append(f"{prefix}{key}")
  return names


def _has_field(config, path: str) -> bool:
  node: Any = config
  for part in re.sub(r"\[[^\]]*\]", "", path).split("."):  # "scale_range[0]" -> "scale_range"
    if not _is_node(node) or part not in node:
      return False
    node = node[part]
  return True


def closest_fields(path: str, names: Sequence[str], n: int = 3) -> list[str]:
  """The valid dotted field names nearest to `path` (difflib): by the whole name, then by its last part
  ("name" -> "dataset.name"); failing both, the n least far names, however far."""
  close = difflib.get_close_matches(path, names, n=n, cutoff=0.6)
  leaf = path.rsplit(".", 1)[-1]
  by_leaf: dict[str, list[str]] = {}
  for name in names:
    by_leaf.setdefault(name.rsplit(".", 1)[-1], []).append(name)
  for match in difflib.get_close_matches(leaf, list(by_leaf), n=n, cutoff=0.75):
    close.extend(name for name in by_leaf[match] if name not in close)
  return close[:n] or difflib.get_close_matches(path, names, n=n, cutoff=0.0)


def unknown_config_field(argv: Sequence[str], flag_name: str, load: Callable[[str], Any]) -> str | None:
  """The error message for the first `--<flag_name>.<path>=...` of `argv` naming no field of the config
  file given by `--<flag_name>=FILE` (loaded with `load`), or None (none, or no config file to check)."""
  config_file = None
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf"--?{re.escape(flag_name)}(=(.*))?", arg)
    if match:
      config_file = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  if not config_file:
    return None
  try:
    config = load(config_file)
  except Exception:  # pylint: disable=broad-except  (the config file's own error is reported by absl)
    return None
  names = field_names(config)
  for arg in argv:
    match = re.match(rf"--?(?:no)?{re.escape(flag_name)}\.([^=]+)", arg)
    if not match or _has_field(config, match.group(1)):
      continue
    path = match.group(1)
    close = ", ".join(f"--{flag_name}.{c}" for c in closest_fields(path, names))
    return (f"--{flag_name}.{path}: {config_file} has no field {path!r}; the closest valid fields: {close} "
            f"(configs/default.py lists every field).")
  return None


# ---- The mains' entry point ----


def _print_error(error: BaseException | str) -> None:
  sys.stderr.flush()
  print(f"Error: {error}", file=sys.stderr, flush=True)


def _verbose() -> bool:
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return int(flags.FLAGS["verbosity"].value) >= 1
  except (KeyError, flags.UnparsedFlagAccessError, TypeError, ValueError):
    return False


def clear_errors(main: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], Any]:
  """`main` with its clear errors (CLEAR_ERRORS) printed alone as `Error: <message>` (exit status 1), or
  raised with the full traceback under `--verbosity=1` or higher. A full disk that some writer reports in
  its own words (not as `files.DiskFullError`) is printed alone too, saying what to do."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except  (anything else is re-raised)
      disk_full = not isinstance(e, files.DiskFullError) and files.is_disk_full(e)
      if not (disk_full or isinstance(e, CLEAR_ERRORS)) or _verbose():
        raise
      _print_error(f"the disk is full (or over its quota): {e}. Free space on that disk or write to another "
                   "one, then run the same command again." if disk_full else e)
      sys.exit(1)

  return wrapped


def _flags_parser(config_flag_names: Sequence[str]) -> Callable[[list[str]], list[str]]:
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  def parse(argv: list[str]) -> list[str]:
    try:
      return app.parse_flags_with_usage(argv)
    except Exception:  # pylint: disable=broad-except  (e.g. ml_collections' AttributeError "'nonexistent'")
      for name in config_flag_names:
        message = unknown_config_field(argv, name, flags.FLAGS[name].parser.parse)
        if message:
          _print_error(message)
          sys.exit(1)
      raise

  return parse


def _with_loaded_config(main: Callable[[Sequence[str]], Any], config_flag) -> Callable[[Sequence[str]], Any]:
  """`main`, after a config file that does not load (ml_collections defers that error to the first use of
  the flag's value, as a many-line OSError) has become a clear error naming the flag."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      value = config_flag.value
      if value is not None:
        getattr(value, "to_dict")  # a stand-in for a config that failed to load raises here
    except OSError as e:
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      raise ValueError(f"--{config_flag.name}: the config file does not load: {lines[-1]}") from e
    return main(argv)

  return wrapped


def _is_closed_loop_callback(unraisable) -> bool:
  return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


def drop_closed_loop_callbacks() -> None:
  """When one write of an orbax checkpoint fails (a full disk), the writes still in flight complete onto its
  event loop, which is closed by then: each prints a traceback (`RuntimeError: Event loop is closed`, through
  `sys.unraisablehook`), hundreds of them around the one clear error. Their results are discarded anyway and
  the failure is reported once (`files.DiskFullError`), so the mains drop those tracebacks (any other goes to
  the previous hook)."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_callbacks", False):
    return

  def hook(unraisable):
    if not _is_closed_loop_callback(unraisable):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


def run(main: Callable[[Sequence[str]], Any], config_flag=None) -> None:
  """`absl.app.run(main)` with clear errors printed alone (see the module docstring). `config_flag`: the
  main's `config_flags.DEFINE_config_file` holder (or None), whose unknown overrides are named and whose
  file, if it does not load, is a clear error."""
  from absl import app  # pylint: disable=g-import-not-at-top
  drop_closed_loop_callbacks()
  names = [config_flag.name] if config_flag is not None else []
  if config_flag is not None:
    main = _with_loaded_config(main, config_flag)
  app.run(clear_errors(main), flags_parser=_flags_parser(names))
