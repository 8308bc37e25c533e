"""Training interrupted from outside, in fresh processes at full XLA optimisation (no test-only flags): SIGTERM
(preemption), then kill -9 inside a checkpoint write, then resumed to the end and compared bit for bit with an
uninterrupted run of the same command.

Every run is `train.py` in a fresh process on a tiny phantom config written to a file, so the compiled
code is what a user gets (the in-process tests run with `jax_disable_most_optimizations`). The interrupted
runs' processes share one persistent compilation cache (JAX_COMPILATION_CACHE_DIR, as a user restarting after
a preemption would): the later ones load the executables the first compiled, the same code. The
uninterrupted reference trains once the first interrupted process has run its first step, on a copy of that
cache (so no two processes write one cache), beside the interrupted processes on the other core.

Most of a tiny run's time is starting Python, jax and TensorFlow (~12 s of imports here). The second and
third interrupted processes and the reference start with the first and import those libraries while it
trains, then wait for a file before they run train.py (`runpy`, as `python train.py` does: its flags, its
main, nothing test-only): each restart then begins where it would after the imports (46.6 s for the test
here, 53.3 s with each process started when its turn came).
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.conftest import tiny_config
from veinjax import checkpoint
from veinjax import inference
from veinjax import workdir as workdir_lib

NUM_EPOCHS, STEPS_PER_EPOCH = 2, 4  # 10 phantom frames, 2 for validation, batch 2
# unet_widths=(8,): one U-Net stage (two 3x3 conv-BN-ReLU and the 1x1 head, 689 parameters). What is tested is
# the interruption; this model compiles in seconds and writes its checkpoint (every step) in milliseconds,
# where ResNet18-UNet's 170 MB checkpoints and compilations made the test twice as long.
_CONFIG = """
import sys
sys.path.insert(0, {root!r})
from tests.conftest import tiny_config

def get_config():
  return tiny_config({data_dir!r}, num_epochs={epochs}, checkpoint_every_steps=1, log_every_steps=1,
                     model="unet", unet_widths=(8,))
"""
_TIMING = ("images_per_sec", "train_seconds", "eval_seconds")
_ORBAX_TMP = checkpoint._ORBAX_TMP  # pylint: disable=protected-access
_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, phantom_data_dir):
  """The config file; the phantom is generated here first, so runs that start together never race to."""
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top
  config = tiny_config(phantom_data_dir)
  assert [sources.num_examples(config, split) for split in ("train", "test")] == [8, 4]  # 2 of 10 validate
  path = tmp_path_factory.mktemp("interruption") / "tiny_config.py"
  path.write_text(_CONFIG.format(root=str(ROOT), data_dir=phantom_data_dir, epochs=NUM_EPOCHS))
  return str(path)


@pytest.fixture(scope="module")
def shared_cache(config_file):
  """The compilation cache of the interrupted runs' processes."""
  return os.path.join(os.path.dirname(config_file), "xla_cache")


# Imports what train.py will (the slow part of its start), waits until the file argv[1] exists, then runs
# the train.py command that follows it as `python train.py ...` would.
_WHEN_TOLD = """
import os, runpy, sys, time
import tensorflow, tensorflow_datasets, jax  # noqa
from veinjax import final_fit, train_lib  # noqa
while not os.path.exists(sys.argv[1]):
  time.sleep(0.01)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _command(config_file, workdir, go_file=None):
  """`python train.py ...`, or with `go_file` the same command started now and run once that file exists."""
  train = [str(ROOT / "train.py"), f"--config={config_file}", f"--workdir={workdir}"]
  return [sys.executable] + (["-c", _WHEN_TOLD, go_file] if go_file else []) + train


def _env(cache_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             # jax's default puts the cache's own path in the compile options (a GPU autotuning cache beside
             # it), so a copied cache would miss on every key; this CPU run uses none of XLA's extra caches.
             JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES="none")
  env.pop("XLA_FLAGS", None)
  return env


def _start(config_file, workdir, cache_dir, log_path=None, go_file=None):
  """`train.py` started in the background (with `go_file`: run once that file exists); its log goes to
  `log_path`, or to a pipe that the caller reads."""
  stderr = open(log_path, "w") if log_path else subprocess.PIPE  # pylint: disable=consider-using-with
  try:
    return subprocess.Popen(_command(config_file, workdir, go_file), stderr=stderr, stdout=subprocess.DEVNULL,
                            text=True, env=_env(cache_dir), cwd=str(ROOT))
  finally:
    if log_path:
      stderr.close()


class _Started:
  """`train.py` on the interrupted run's workdir, started now (its imports run beside the earlier runs) and
  run when `go()` is called."""

  def __init__(self, config_file, workdir, cache_dir, root, name, log_to_file):
    self._go_file = str(root / f"{name}.go")
    self.log_path = str(root / f"{name}.log") if log_to_file else None
    self.process = _start(config_file, workdir, cache_dir, self.log_path, self._go_file)

  def go(self):
    if self.process.poll() is not None:
      log = open(self.log_path).read() if self.log_path else self.process.stderr.read()
      raise AssertionError(f"it ended (exit {self.process.returncode}) before it was told to run:\n{log[-3000:]}")
    open(self._go_file, "w").close()  # pylint: disable=consider-using-with
    return self.process

  def stop(self):
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()


class _Uninterrupted:
  """The uninterrupted run of the same command: started with the interrupted one (its imports run beside
  it), trained once that one has run its first step, on a copy of the compilation cache it wrote (so it
  loads what that run compiled, and no other process writes its cache)."""

  def __init__(self, config_file, root):
    self.workdir = str(root / "workdir")
    self._cache_dir = str(root / "xla_cache")
    self._started = _Started(config_file, self.workdir, self._cache_dir, root, "uninterrupted", log_to_file=True)
    self._running = False

  def start(self, compiled_cache):
    """Copies `compiled_cache` and lets it train (once)."""
    if not self._running:
      shutil.copytree(compiled_cache, self._cache_dir)
      self._started.go()
      self._running = True

  def finished(self):
    """Its workdir, once it has finished."""
    assert self._running, "start() it first"
    code = self._started.process.wait(timeout=_TIMEOUT_S)
    assert code == 0, open(self._started.log_path).read()[-3000:]
    return self.workdir

  def stop(self):
    self._started.stop()


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory):
  reference = _Uninterrupted(config_file, tmp_path_factory.mktemp("uninterrupted"))
  yield reference
  reference.stop()


def _train_to_the_end(started):
  """Runs the started process to its end; returns its log."""
  code = started.go().wait(timeout=_TIMEOUT_S)
  log = open(started.log_path).read()
  assert code == 0, log[-3000:]
  return log


def _read_until_first_step(process, log):
  for line in process.stderr:
    log.append(line)
    if "Compiled and ran the first step" in line:
      return
  raise AssertionError("training ended before its first step:\n" + "".join(log)[-3000:])


def _writes_in_progress(workdir):
  """The steps whose checkpoint is being written (orbax's temporary directories)."""
  directory = os.path.join(workdir, checkpoint.LATEST_DIR)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return [int(name.split(".")[0]) for name in names if _ORBAX_TMP in name]


def _kill_9_inside_a_checkpoint_write(started, workdir, delay_s):
  """Runs the started process and, `delay_s` after its first step ran, kills it (-9) as soon as a checkpoint
  is being written. Returns (returncode, log, the interrupted writes' steps)."""
  process = started.go()
  log = []
  _read_until_first_step(process, log)
  time.sleep(delay_s)
  deadline = time.time() + _TIMEOUT_S
  while not _writes_in_progress(workdir) and process.poll() is None and time.time() < deadline:
    time.sleep(0.002)
  process.kill()
  log += process.stderr.readlines()
  return process.wait(timeout=_TIMEOUT_S), "".join(log), _writes_in_progress(workdir)


def _sigterm_after_first_step(config_file, workdir, cache_dir, after_first_step):
  """Starts training, calls `after_first_step()` once its first step ran, then sends SIGTERM; returns
  (returncode, log)."""
  process = _start(config_file, workdir, cache_dir)
  log = []
  _read_until_first_step(process, log)
  after_first_step()
  process.send_signal(signal.SIGTERM)
  log += process.stderr.readlines()
  return process.wait(timeout=_TIMEOUT_S), "".join(log)


def _final_params(workdir):
  _, variables, _ = inference.load_for_inference(workdir, "latest")
  return jax.tree.map(np.asarray, variables)


def _history(workdir):
  return [{k: v for k, v in r.items() if k not in _TIMING} for r in workdir_lib.read_history(workdir)]


def _assert_same_run(workdir, reference):
  history = _history(workdir)
  assert [r["step"] for r in history] == [STEPS_PER_EPOCH * (e + 1) for e in range(NUM_EPOCHS)]  # each once
  assert history == _history(reference)
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir), _final_params(reference))


def test_sigterm_then_kill_9_in_a_checkpoint_write_then_resume_equals_the_uninterrupted_run(
    config_file, shared_cache, uninterrupted, tmp_path):
  """SIGTERM (a preemption): the step in flight finishes, a checkpoint is written, a log line says so and the
  process exits 0. The next start resumes from that step and is killed (-9) while it writes a checkpoint
  (every step writes one): the partial write is removed and the third start resumes from the checkpoint
  before it. The run ends with every history record once, metrics and parameters bit for bit those of the
  uninterrupted run, which trains beside them."""
  workdir = str(tmp_path / "interrupted")
  # The second and third runs import their libraries while the first trains.
  second = _Started(config_file, workdir, shared_cache, tmp_path, "second", log_to_file=False)
  third = _Started(config_file, workdir, shared_cache, tmp_path, "third", log_to_file=True)
  try:
    _interrupt_resume_and_compare(config_file, workdir, shared_cache, uninterrupted, second, third)
  finally:
    second.stop()
    third.stop()


def _interrupt_resume_and_compare(config_file, workdir, shared_cache, uninterrupted, second, third):
  code, log = _sigterm_after_first_step(config_file, workdir, shared_cache,
                                        lambda: uninterrupted.start(shared_cache))
  assert code == 0, log[-3000:]
  assert "SIGTERM received" in log and "Preempted at step" in log, log[-3000:]
  preempted_step = int(log.split("Preempted at step")[1].split()[0].strip(".,:;"))
  assert 0 < preempted_step < NUM_EPOCHS * STEPS_PER_EPOCH - 1
  assert os.listdir(shared_cache), "the first run wrote no compiled executable to the shared cache"

  code, log, interrupted = _kill_9_inside_a_checkpoint_write(second, workdir,
                                                             delay_s=random.Random(0).uniform(0.0, 0.2))
  assert code == -signal.SIGKILL, log[-3000:]
  assert f"at step {preempted_step} " in log, log[-3000:]  # resumed from the preemption's checkpoint
  assert interrupted, "the kill landed outside a checkpoint write:\n" + log[-3000:]

  log = _train_to_the_end(third)
  resumed_step = max(interrupted) - 1
  resumed_from = os.path.join(workdir, checkpoint.LATEST_DIR, str(resumed_step))
  assert f"Resuming from {resumed_from} at step {resumed_step} " in log, log[-3000:]
  assert not _writes_in_progress(workdir)
  _assert_same_run(workdir, uninterrupted.finished())
