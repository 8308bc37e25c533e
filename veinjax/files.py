"""Files written whole, and a full disk as a clear error.

  files.write_bytes(path, data)            # a temporary file beside `path`, renamed over it when complete
  files.write_text(path, text)
  with files.written_whole(path) as tmp:   # for writers that take a path (np.save, csv, a video muxer)
    write_somehow(tmp)
  files.append_whole(f, data, path)        # to a file opened with open(path, "ab", buffering=0)

A reader never sees half a file: a write that fails leaves `path` as it was (absent, or its previous
content) and removes the temporary file, and an append that fails cuts the file back to its size before.

A write that fails for want of space (ENOSPC: the disk is full; EDQUOT: the disk quota is exceeded) raises
`DiskFullError`, whose message names the path, says the disk is full and what to do; the mains print it
alone (`veinjax.cli`). `is_disk_full` recognises the condition also where a library reports it as another
error (TensorStore, under orbax, raises a ValueError "RESOURCE_EXHAUSTED: ... No space left on device").
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = {code: os.strerror(code) for code in DISK_FULL_ERRNOS}  # "No space left on device", ...


class DiskFullError(OSError):
  """The disk (or the quota) ran out while writing; the message names the path, what was kept, the fix."""

  def __init__(self, message: str, code: int = errno.ENOSPC, path: str | None = None):
    super().__init__(message)
    self.errno, self.filename = code, path

  def __str__(self) -> str:
    return str(self.args[0])


def _chain(error: BaseException) -> Iterator[BaseException]:
  """`error` and every exception it was raised from or during (causes, contexts, groups), once each."""
  seen, stack = set(), [error]
  while stack:
    e = stack.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def disk_full_errno(error: BaseException) -> int | None:
  """ENOSPC or EDQUOT when `error` (or one it came from) is a write that failed for want of space, else None."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
      return e.errno
    text = str(e)
    for code, words in _DISK_FULL_TEXTS.items():
      if words in text:
        return code
  return None


def is_disk_full(error: BaseException) -> bool:
  return disk_full_errno(error) is not None


def disk_full_error(path: str, error: BaseException, kept: str = "",
                    then: str = "run the same command again") -> DiskFullError:
  """The `DiskFullError` of a failed write of `path` (`error` must satisfy `is_disk_full`).

  Args:
    path: what was being written (a file or a checkpoint directory).
    error: the original error (chained as the cause by the caller's `raise ... from error`).
    kept: what the failure left intact, a sentence (default: `path` is unchanged, nothing half-written).
    then: what to do once there is space.
  """
  code = disk_full_errno(error) or errno.ENOSPC
  what = "the disk quota is exceeded" if code == errno.EDQUOT else "the disk is full"
  folder = os.path.dirname(os.path.abspath(path)) or "."
  kept = kept or f"No half-written file is left: {path} is as it was before."
  room = "ask for a larger quota" if code == errno.EDQUOT else "write to another disk"
  return DiskFullError(
      f"Could not write {path}: {what} ({_DISK_FULL_TEXTS[code]}). {kept} Free space on that disk "
      f"(`df -h {folder}` shows what is left) or {room}, then {then}.", code, path)


def _remove_quietly(path: str) -> None:
  with contextlib.suppress(OSError):
    os.remove(path)


@contextlib.contextmanager
def written_whole(path: str, suffix: str = ".tmp") -> Iterator[str]:
  """Yields a temporary path beside `path` to write; renamed over `path` when the block ends, removed when
  it raises. A full disk becomes `DiskFullError`. `suffix`: the temporary file's ending (keep the real
  extension last for writers that choose the format by it, e.g. ".tmp.npy")."""
  tmp = f"{path}{suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    _remove_quietly(tmp)
    if isinstance(e, Exception) and is_disk_full(e):
      raise disk_full_error(path, e) from e
    raise


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` whole (see the module docstring)."""
  with written_whole(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` whole (see the module docstring)."""
  write_bytes(path, text.encode("utf-8"))


def append_whole(f, data: bytes, path: str, kept: str = "") -> None:
  """Appends `data` to `f` (opened with `open(path, "ab" or "wb", buffering=0)`) whole or not at all: when a
  write fails, the file is cut back to its size before, so it never ends in half a line. A full disk
  becomes `DiskFullError` (`kept`: what the file still holds, a sentence)."""
  start = f.tell()
  try:
    view = memoryview(data)
    while view:
      written = f.write(view)  # a raw write may write less than asked (e.g. just before the disk fills)
      if not written:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
      view = view[written:]
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.ftruncate(f.fileno(), start)
      f.seek(start)
    if isinstance(e, Exception) and is_disk_full(e):
      raise disk_full_error(path, e, kept=kept or f"{path} is cut back to what it held before this write "
                                                   "(no half-written line).") from e
    raise
