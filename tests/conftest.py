"""Shared test set-up: fast compilation, a per-session compilation cache, tiny training configs.

- `jax_disable_most_optimizations`: tests are dominated by XLA compile time on a small CPU; the numbers are
  the same up to float rounding.
- A persistent compilation cache in a per-session temporary directory: tests that build the same step twice
  (e.g. an interrupted run and its resumption) compile it once.
- The suite runs on one CPU device; tests needing several devices start a subprocess with XLA_FLAGS (see
  tests/parallel_test.py), because the device count is fixed when JAX starts.
- `fill_disk_during_meta_writes`: a full disk in the middle of a checkpoint write (checkpoint, training tests).
"""

import asyncio
import hashlib
import importlib.util
import pathlib

import jax
import pytest

jax.config.update("jax_disable_most_optimizations", True)

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield


def numpy_uses_avx512() -> bool:
  """Whether numpy runs its AVX-512 code here: its exp, log, sin, ... then round some last bits otherwise,
  so a byte-pinned phantom output can differ by CPU (the pins hold one value per path, see phantom_test)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  features = np._core._multiarray_umath.__cpu_features__  # pylint: disable=protected-access
  return bool(features.get("AVX512_SKX", False))


def frame_digest(image, mask) -> str:
  """The pin of a generated phantom frame: sha256 (first 32 hex digits) of its image bytes + mask bytes."""
  return hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest()[:32]


def load_config(name: str):
  """configs/<name>.py's get_config()."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config(data_dir: str, **overrides):
  """The quickstart recipe shrunk to seconds: a 32x32 phantom of 8 + 4 examples, ResNet18-UNet, 2 epochs."""
  config = load_config("default")
  config.model = "resnet34_unet"
  config.encoder = "resnet18"
  config.image_size = 32
  config.dataset.phantom_size = 32
  config.dataset.phantom_num_train = 10
  config.dataset.phantom_num_test = 4
  config.dataset.validation_fraction = 0.2  # 2 of the 10 train examples
  config.dataset.data_dir = data_dir
  config.batch_size = 2
  config.eval_batch_size = 4
  config.num_epochs = 2
  config.log_every_steps = 2
  config.num_summary_images = 1
  config.parallelism = "jit"
  return override(config, **overrides)


def augment_config(**parts):
  """configs/default.py's augment block with every part off, then `parts` switched on."""
  cfg = load_config("default").augment
  cfg.enabled = True
  cfg.rotation_degrees = cfg.shift_fraction = cfg.projective = 0.0
  cfg.brightness = cfg.contrast = cfg.gamma = cfg.speckle = 0.0
  cfg.hflip = cfg.vflip = False
  cfg.scale_range = (1.0, 1.0)
  return override(cfg, **parts)


def override(config, **overrides):
  """Sets dotted fields in place, e.g. override(config, **{"dataset.phantom_size": 32}); returns config."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="session")
def phantom_data_dir(tmp_path_factory):
  """One TFDS data_dir for the whole session, so the tiny phantom is generated once."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, phantom_data_dir):
  """A finished uninterrupted tiny run (2 epochs x 4 steps, mid-epoch checkpoints every 3 steps):
  (config, workdir, train_and_evaluate's result). Shared by the training, evaluation and inference tests."""
  from veinjax import train_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(phantom_data_dir, checkpoint_every_steps=3)
  workdir = str(tmp_path_factory.mktemp("run"))
  result = train_lib.train_and_evaluate(config, workdir)
  return config, workdir, result


def fill_disk_during_meta_writes(monkeypatch, managers, step, error):
  """The disk fills up in the middle of writing checkpoint `step` in the `managers` directories ("checkpoints",
  "checkpoints_best"): its `meta` item is written halfway, then the write fails with `error` (orbax's JSON
  item writer, patched; its array items are written as usual)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  original = ocp.JsonCheckpointHandler._save_fn

  async def failing(self, item, directory):
    # directory: WORKDIR/<manager>/<step>.orbax-checkpoint-tmp/meta.orbax-checkpoint-tmp
    step_dir = pathlib.Path(str(directory)).parent
    if step_dir.parent.name in managers and step_dir.name.split(".")[0] == str(step):
      (pathlib.Path(str(directory)) / self._filename).write_text('{"fingerprint": {"mod')
      # The array items finish first, so that a manager reopened in this same process (a real resume is a
      # new process) removes a partial directory that nothing is still writing into.
      await asyncio.sleep(0.2)
      raise error
    return await original(self, item, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", failing)


class Crash(Exception):
  """What `CrashingDataset` raises: a job killed mid-epoch."""


class CrashingDataset:
  """Wraps one epoch's tf.data.Dataset; iterating it dies after `after` batches, like a killed job."""

  def __init__(self, ds, after):
    self.ds, self.after = ds, after

  def skip(self, k):
    return CrashingDataset(self.ds.skip(k), self.after - k)

  def as_numpy_iterator(self):
    for i, batch in enumerate(self.ds.as_numpy_iterator()):
      if i == self.after:
        raise Crash("killed")
      yield batch
