"""veinjax.files: files written whole, and a full disk (or quota) as one clear error naming the path.

A real full disk is /dev/full (every write fails with ENOSPC): a temporary file that is a link to it makes
the write of that one file fail as on a full disk, with the kernel's own errno. Other cases raise the error
by hand (EDQUOT, a short write, TensorStore's wording).
"""

import errno
import json
import os

import numpy as np
import pytest

from veinjax import cli
from veinjax import evaluation
from veinjax import files
from veinjax import frames
from veinjax import workdir as workdir_lib

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


def _full_disk_at(path):
  """The next write of `path` (through its temporary file `path.tmp`) fails with ENOSPC."""
  os.symlink("/dev/full", f"{path}.tmp")


def _leftovers(directory):
  return sorted(name for name in os.listdir(directory) if ".tmp" in name)


@needs_dev_full
def test_write_json_on_a_full_disk_keeps_the_previous_file(tmp_path):
  path = str(tmp_path / "test_metrics.json")
  workdir_lib.write_json(path, {"miou": 0.5})
  _full_disk_at(path)
  with pytest.raises(files.DiskFullError) as info:
    workdir_lib.write_json(path, {"miou": 0.9})
  message = str(info.value)
  assert message.startswith(f"Could not write {path}: the disk is full (No space left on device).")
  assert "is as it was before" in message and f"df -h {tmp_path}" in message
  assert "run the same command again" in message
  assert info.value.errno == errno.ENOSPC and info.value.filename == path
  with open(path) as f:
    assert json.load(f) == {"miou": 0.5}  # the previous content, whole
  assert _leftovers(tmp_path) == []  # the temporary file (here the link) is gone


def test_over_quota_is_named_as_such_and_leaves_no_file(tmp_path):
  path = str(tmp_path / "mask.png")
  with pytest.raises(files.DiskFullError, match=r"the disk quota is exceeded \(Disk quota exceeded\).*larger quota"):
    with files.written_whole(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"\x89PNG half")
      raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), tmp)
  assert os.listdir(tmp_path) == []


def test_other_write_errors_pass_through_unchanged_but_leave_nothing(tmp_path):
  path = str(tmp_path / "a.json")
  with pytest.raises(PermissionError):
    with files.written_whole(path) as tmp:
      open(tmp, "w").close()
      raise PermissionError(errno.EACCES, "Permission denied", tmp)
  assert os.listdir(tmp_path) == []


def test_disk_full_is_recognised_through_wrappers():
  # TensorStore (orbax's array writer) reports a full disk as a ValueError in its own words.
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file '
                           '"/w/checkpoints/9.orbax-checkpoint-tmp/...": Failed to write 18142 bytes to file 21: '
                           'No space left on device')
  assert files.disk_full_errno(tensorstore) == errno.ENOSPC
  try:
    try:
      raise OSError(errno.EDQUOT, "Disk quota exceeded")
    except OSError as e:
      raise RuntimeError("background save failed") from e
  except RuntimeError as wrapped:
    assert files.disk_full_errno(wrapped) == errno.EDQUOT
  assert not files.is_disk_full(OSError(errno.EACCES, "Permission denied"))
  assert not files.is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory"))


class _FillingFile:
  """An unbuffered file on a disk with `room` bytes left: writes what fits, then fails with ENOSPC."""

  def __init__(self, raw, room):
    self.raw, self.room = raw, room

  def write(self, data):
    if self.room <= 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    n = min(len(data), self.room)
    self.room -= n
    return self.raw.write(bytes(data[:n]))

  def __getattr__(self, name):
    return getattr(self.raw, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.raw.close()


def test_history_append_on_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch):
  """A half JSON line in history.jsonl would stop read_history, and so every resume of the run."""
  workdir = str(tmp_path)
  workdir_lib.append_history(workdir, {"epoch": 1, "step": 4, "miou": 0.5})
  real_open = open
  monkeypatch.setattr(workdir_lib, "open", lambda path, *a, **k: _FillingFile(real_open(path, *a, **k), room=7),
                      raising=False)
  with pytest.raises(files.DiskFullError, match=r"history\.jsonl: the disk is full.*records before this one"):
    workdir_lib.append_history(workdir, {"epoch": 2, "step": 8, "miou": 0.6})
  monkeypatch.undo()
  assert workdir_lib.read_history(workdir) == [{"epoch": 1, "step": 4, "miou": 0.5}]


@needs_dev_full
def test_evaluation_pictures_on_a_full_disk_leave_no_half_png(tmp_path):
  writer = evaluation.PanelWriter(str(tmp_path))
  image, label = np.zeros((8, 8, 1), np.uint8), np.zeros((8, 8), np.int32)
  writer(image, label, label, b"te0.png")
  _full_disk_at(str(tmp_path / "te1.png"))
  with pytest.raises(files.DiskFullError, match=r"te1\.png: the disk is full"):
    writer(image, label, label, b"te1.png")
  assert sorted(os.listdir(tmp_path)) == ["te0.png"]


@needs_dev_full
def test_overlay_video_on_a_full_disk_leaves_no_partial_video(tmp_path):
  path = str(tmp_path / "clip_overlay.mp4")
  os.symlink("/dev/full", f"{path}.tmp.mp4")  # VideoWriter's temporary file keeps the extension last
  video = frames.VideoWriter(path, fps=10)
  with pytest.raises(files.DiskFullError, match=r"clip_overlay\.mp4: the disk is full"):
    for i in range(5):
      video.add(np.full((16, 16, 3), 40 * i, np.uint8))
    video.close()
  assert os.listdir(tmp_path) == []


def test_mains_print_a_full_disk_alone(capsys):
  def main(error):
    def run(argv):
      del argv
      raise error
    return cli.clear_errors(run)

  ours = files.disk_full_error("/w/eval/test_metrics.json", OSError(errno.ENOSPC, "No space left on device"))
  theirs = ValueError("RESOURCE_EXHAUSTED: Failed writing /w/x: No space left on device")  # e.g. TensorStore
  for error, expected in [(ours, "Error: Could not write /w/eval/test_metrics.json: the disk is full"),
                          (theirs, "Error: the disk is full (or over its quota): RESOURCE_EXHAUSTED"),
                          (OSError(errno.ENOSPC, "No space left on device", "/w/events"),
                           "Error: the disk is full (or over its quota): [Errno 28]")]:
    with pytest.raises(SystemExit) as exit_info:
      main(error)([])
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(expected), stderr
  with pytest.raises(PermissionError):  # not a clear error: its traceback is shown
    main(PermissionError(errno.EACCES, "Permission denied"))([])
