"""What the absl mains (train.py, eval.py, predict.py, the experiment runners) share: quiet library logs.

The library itself never changes logging; a main calls `quiet_library_logs(__file__)` once.
"""

from __future__ import annotations

import logging
import os


class _OnlyOwnInfo(logging.Filter):
  """Passes warnings and errors from everywhere, INFO only from veinjax and the running main."""

  def __init__(self, keep_dirs):
    super().__init__()
    self._keep = tuple(keep_dirs)

  def filter(self, record: logging.LogRecord) -> bool:
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
