r"""Measures the training input pipeline: augmented training images per second at the model size.

  python -m benchmarks.input_pipeline [--source=auto] [--num_examples=128] [--passes=5] \
      [--config=configs/default.py] [--config.image_size=512] [--config.batch_size=8]

Builds a raw train split in memory (--source: "sources" = veinjax.data.sources with the vein_phantom
dataset at --num_examples, written to a temporary data_dir; "phantom" = frames from
veinjax.data.phantom.generate_example; "synthetic" = random frames with dark ellipses as the mask; "auto" =
the first of these that is available), switches EVERY augmentation on (the config's value where it is on
already, else a moderate one), runs one warm-up epoch (which also resizes and caches the raw split), then
times --passes further epochs (each a different epoch number, so a different shuffle and augmentation) and
prints the median images per second. Timing covers the whole tf.data pipeline as the trainer consumes it,
per-epoch set-up included: gather from the cache, augmentation, batching and prefetch, up to batches in host
memory. It also prints the process's CPU time per image, which (unlike the rate) does not depend on what else
runs on the machine: 1000 / that = images per second per core the pipeline has to itself.
"""

import os
import resource
import statistics
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout, for configs/default.py

from ml_collections import config_flags
import tensorflow as tf

from benchmarks import synthetic
from veinjax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "configs", "default.py"),
                                          "Run config; its image_size, batch_size and augment are used.")
_SOURCE = flags.DEFINE_enum("source", "auto", ["auto", "sources", "phantom", "synthetic"],
                            "Where the raw frames come from (see the module docstring).")
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 128, "Raw train examples = images per timed epoch (the default config trains on 270).")
_PASSES = flags.DEFINE_integer("passes", 5, "Timed epochs after the warm-up epoch.")

# Used where the config leaves an augmentation off, so the benchmark always measures all of them.
_ALL_ON = {"rotation_degrees": 15.0, "hflip": True, "vflip": True, "shift_fraction": 0.1,
           "scale_range": (0.9, 1.1), "projective": 0.05, "brightness": 0.1, "contrast": 0.2, "gamma": 0.2,
           "speckle": 0.1}


def _in_memory(images, masks) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensor_slices({
      "image": np.stack(images)[..., None], "mask": np.stack(masks),
      "id": np.array([f"frame_{i:04d}" for i in range(len(images))])})


def _raw_split(config, source: str, num_examples: int, tmp_dir: str) -> tuple[str, tf.data.Dataset]:
  """(what was used, the raw train split)."""
  size = config.image_size
  if source in ("auto", "sources"):
    try:
      from veinjax.data import sources  # pylint: disable=g-import-not-at-top
    except ImportError:
      if source == "sources":
        raise
    else:
      config.dataset.name = "vein_phantom"
      config.dataset.data_dir = tmp_dir
      config.dataset.phantom_num_train = num_examples
      config.dataset.phantom_num_test = 4  # built alongside train; not used here
      config.dataset.phantom_size = size
      config.dataset.validation_fraction = 0.0
      raw = sources.load_raw_split(config, "train")
      # Held in memory, so the benchmark measures the pipeline rather than the disk.
      items = list(raw.as_numpy_iterator())
      return "veinjax.data.sources (vein_phantom)", _in_memory(
          [x["image"][..., 0] for x in items], [x["mask"] for x in items])
  if source in ("auto", "phantom"):
    try:
      from veinjax.data import phantom  # pylint: disable=g-import-not-at-top
    except ImportError:
      if source == "phantom":
        raise
    else:
      frames = [phantom.generate_example((1, i), size) for i in range(num_examples)]
      return "veinjax.data.phantom.generate_example", _in_memory(*zip(*frames))
  rng = np.random.default_rng(0)
  frames = [synthetic.synthetic_frame(rng, size) for _ in range(num_examples)]
  return "synthetic ellipses", _in_memory(*zip(*frames))


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _epoch(config, epoch: int, raw: tf.data.Dataset) -> tuple[int, float, float]:
  """(images, wall seconds, CPU seconds of this process) for one full training epoch."""
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  count = 0
  for batch in pipeline.create_train_dataset(config, epoch=epoch, raw=raw).as_numpy_iterator():
    count += int(batch["image"].shape[0])
  return count, time.perf_counter() - start, _cpu_seconds() - start_cpu


def main(argv):
  del argv
  config = _CONFIG.value
  config.in_channels = 1
  config.augment.enabled = True
  for field, value in _ALL_ON.items():
    if not config.augment[field] or (field == "scale_range" and tuple(config.augment[field]) == (1.0, 1.0)):
      config.augment[field] = value
  with tempfile.TemporaryDirectory() as tmp_dir:
    start = time.perf_counter()
    used, raw = _raw_split(config, _SOURCE.value, _NUM_EXAMPLES.value, tmp_dir)
    print(f"raw split: {_NUM_EXAMPLES.value} frames from {used} in {time.perf_counter() - start:.1f} s")
    print(f"image_size={config.image_size} batch_size={config.batch_size} "
          f"resize_method={config.resize_method} cpus={os.cpu_count()}")
    print("augment:", {k: config.augment[k] for k in ["enabled", *_ALL_ON]})
    count, seconds, _ = _epoch(config, 0, raw)
    print(f"warm-up epoch (resize + cache + augment): {count} images in {seconds:.2f} s")
    rates, cpu_ms = [], []
    for epoch in range(1, _PASSES.value + 1):
      count, seconds, cpu_seconds = _epoch(config, epoch, raw)
      rates.append(count / seconds)
      cpu_ms.append(1000.0 * cpu_seconds / count)
      print(f"epoch {epoch}: {count} images in {seconds:.2f} s = {rates[-1]:.1f} images/s, "
            f"{cpu_ms[-1]:.1f} CPU-ms per image")
  try:
    load = " (1-minute load average %.1f on %d CPUs)" % (os.getloadavg()[0], os.cpu_count())
  except OSError:
    load = ""
  # CPU time per image does not depend on what else runs on the machine; the rate does.
  print(f"CPU time per image (median): {statistics.median(cpu_ms):.1f} ms, i.e. "
        f"{1000.0 / statistics.median(cpu_ms):.0f} images/s per fully available core{load}")
  print(f"augmented {config.image_size}x{config.image_size} training images per second "
        f"(median of {len(rates)}): {statistics.median(rates):.1f}")


if __name__ == "__main__":
  app.run(main)
