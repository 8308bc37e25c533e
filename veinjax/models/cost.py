"""Model cost from abstract shapes: parameters and forward FLOPs per image, by XLA's cost analysis.

Used by benchmarks/model_table.py (the README's model table) and by the paper-reproduction runner's Table 1.
Nothing is allocated or run: parameters and input are abstract shapes, so this works on any machine.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from veinjax import models
from veinjax.models import layers


def flops_of(compiled: Any) -> float:
  """Total FLOPs of a compiled computation; `cost_analysis()` is a dict or a list of dicts by version."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, Mapping):
    analysis = [analysis]
  if not analysis:
    raise RuntimeError("XLA returned no cost analysis for this backend")
  return float(sum(entry.get("flops", 0.0) for entry in analysis))


def measure(name: str, encoder: str, size: int, in_channels: int, num_classes: int, batch: int) -> dict:
  """Parameters and forward GFLOPs per image of one model, from abstract shapes only."""
  if name in models.FIXED_ENCODERS:
    encoder = models.DEFAULT_ENCODER  # These accept only the default (and ignore it).
  model = models.create_model(name, num_classes=num_classes, encoder=encoder)
  x = jax.ShapeDtypeStruct((batch, size, size, in_channels), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  forward = jax.jit(functools.partial(model.apply, train=False))
  with layers.lax_convolutions():  # count the model's convolutions, not the CPU small-map workaround
    compiled = forward.lower(variables, x).compile()
  return {
      "params": models.count_params(variables["params"]),
      "gflops": flops_of(compiled) / batch / 1e9,
  }
