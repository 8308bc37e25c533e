"""Training interrupted from outside, in fresh processes at full XLA optimisation (no test-only flags):
SIGTERM (preemption) and kill -9, each resumed to the end and compared bit for bit with an uninterrupted
run of the same command.

Every run is `python train.py` in a subprocess on a tiny phantom config written to a file, so the compiled
code is what a user gets (the in-process tests run with `jax_disable_most_optimizations`). The processes share
one persistent compilation cache (JAX_COMPILATION_CACHE_DIR, as a user restarting after a preemption would):
the later ones load the executables the first compiled instead of compiling them again, the same code.
"""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import ROOT
from veinjax import inference
from veinjax import workdir as workdir_lib

NUM_EPOCHS, STEPS_PER_EPOCH = 6, 4  # 10 phantom frames, 2 for validation, batch 2
_CONFIG = """
import sys
sys.path.insert(0, {root!r})
from tests.conftest import tiny_config

def get_config():
  return tiny_config({data_dir!r}, num_epochs={epochs}, checkpoint_every_steps=1, log_every_steps=1)
"""
_TIMING = ("images_per_sec", "train_seconds", "eval_seconds")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, phantom_data_dir):
  path = tmp_path_factory.mktemp("interruption") / "tiny_config.py"
  path.write_text(_CONFIG.format(root=str(ROOT), data_dir=phantom_data_dir, epochs=NUM_EPOCHS))
  return str(path)


def _cache_dir(config_file):
  return os.path.join(os.path.dirname(config_file), "xla_cache")


def _command(config_file, workdir):
  return [sys.executable, str(ROOT / "train.py"), f"--config={config_file}", f"--workdir={workdir}"]


def _env(config_file):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_COMPILATION_CACHE_DIR=_cache_dir(config_file),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  return env


def _train(config_file, workdir):
  result = subprocess.run(_command(config_file, workdir), capture_output=True, text=True, env=_env(config_file),
                          cwd=str(ROOT), timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def _start_and_signal(config_file, workdir, signum, delay_s):
  """Starts training, sends `signum` `delay_s` after its first step ran; returns (returncode, log)."""
  process = subprocess.Popen(_command(config_file, workdir), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             text=True, env=_env(config_file), cwd=str(ROOT))
  log = []
  for line in process.stderr:
    log.append(line)
    if "Compiled and ran the first step" in line:
      time.sleep(delay_s)
      process.send_signal(signum)
      break
  log += process.stderr.readlines()
  return process.wait(timeout=600), "".join(log)


def _final_params(workdir):
  _, variables, _ = inference.load_for_inference(workdir, "latest")
  return jax.tree.map(np.asarray, variables)


def _history(workdir):
  return [{k: v for k, v in r.items() if k not in _TIMING} for r in workdir_lib.read_history(workdir)]


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  _train(config_file, workdir)
  assert os.listdir(_cache_dir(config_file)), "the first run wrote no compiled executable to the shared cache"
  return workdir


def _assert_same_run(workdir, reference):
  history = _history(workdir)
  assert [r["step"] for r in history] == [STEPS_PER_EPOCH * (e + 1) for e in range(NUM_EPOCHS)]  # each once
  assert history == _history(reference)
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir), _final_params(reference))


def test_sigterm_then_kill_9_then_resume_equals_the_uninterrupted_run(config_file, uninterrupted, tmp_path):
  """SIGTERM: a checkpoint, exit 0, a log line. Then kill -9 at a random moment of the resumed run (with a
  checkpoint every step, a kill often lands inside an asynchronous checkpoint write). Then a resume to the
  end: every history record once, metrics and parameters bit for bit those of the uninterrupted run."""
  workdir = str(tmp_path / "interrupted")
  code, log = _start_and_signal(config_file, workdir, signal.SIGTERM, delay_s=1.0)
  assert code == 0, log[-3000:]
  assert "SIGTERM received" in log and "Preempted at step" in log, log[-3000:]
  assert len(_history(workdir)) < NUM_EPOCHS  # it stopped early
  code, log = _start_and_signal(config_file, workdir, signal.SIGKILL, delay_s=random.Random(0).uniform(0.2, 2.0))
  assert code == -signal.SIGKILL, log[-3000:]
  _train(config_file, workdir)
  _assert_same_run(workdir, uninterrupted)
