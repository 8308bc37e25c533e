r"""Training-step time with and without the CPU small-feature-map workaround in `veinjax.models.layers`.

  python benchmarks/small_map_conv.py                       # the default cases below, batch 4, 3 runs each
  python benchmarks/small_map_conv.py --cases=fcn8s:128 --runs=5

XLA's CPU convolution is very slow when a (dilated) kernel is larger than its feature map, which small
training images hit in the deepest layers: FCN-8s's 7x7 fc6 on pool5, ResNet 3x3 convs on 2x2 maps,
DeepLab's dilated ASPP. `layers.conv_general_dilated` computes those convolutions as im2col + matmul on CPU.
This prints, per case, the median time of one jitted forward + backward pass (BCE loss, train-mode BatchNorm)
with plain `lax.conv_general_dilated` and with the workaround, measured in the same run, and their ratio.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Sequence

from absl import app
from absl import flags

import jax
import jax.numpy as jnp
import optax

from veinjax import models
from veinjax.models import layers

_CASES = flags.DEFINE_list("cases", ["fcn8s:128", "deeplabv3plus:128", "resnet34_unet:64", "resnet34_unet:128"],
                           "model:size pairs to time.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size.")
_RUNS = flags.DEFINE_integer("runs", 3, "Timed runs per case and path (after one compile-and-run).")


def step_seconds(name: str, size: int, batch: int, runs: int) -> float:
  """Median seconds of one jitted forward + backward pass; the conv path is fixed when this traces."""
  model = models.create_model(name)
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 1))
  labels = (jax.random.uniform(jax.random.key(1), (batch, size, size, 1)) > 0.9).astype(jnp.float32)
  variables = model.init(jax.random.key(2), images, train=False)

  def loss_fn(params, batch_stats):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                            mutable=["batch_stats"])
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

  grad_fn = jax.jit(jax.grad(loss_fn))
  jax.block_until_ready(grad_fn(variables["params"], variables["batch_stats"]))  # compile + first run
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(grad_fn(variables["params"], variables["batch_stats"]))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv: Sequence[str]) -> None:
  del argv
  print(f"backend {jax.default_backend()}, {os.cpu_count()} cores, batch {_BATCH.value}, "
        f"median of {_RUNS.value} runs")
  print("| model | input | lax conv (s / step) | small-map matmul (s / step) | speed-up |")
  print("|---|---:|---:|---:|---:|")
  for case in _CASES.value:
    name, size = case.split(":")
    time_step = functools.partial(step_seconds, name, int(size), _BATCH.value, _RUNS.value)
    with layers.lax_convolutions():
      plain = time_step()
    workaround = time_step()
    print(f"| {name} | {size}x{size} | {plain:.3f} | {workaround:.3f} | {plain / workaround:.1f}x |",
          flush=True)


if __name__ == "__main__":
  app.run(main)
