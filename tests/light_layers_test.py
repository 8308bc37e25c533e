"""The light models' bricks: the CPU shift-add convolutions equal XLA's, the fused bilinear upsampling
equals jax.image.resize, and a depthwise-separable block over several inputs equals it over their
concatenation."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from veinjax.models import layers
from veinjax.models import light_layers

jax.config.update("jax_disable_most_optimizations", True)

_DN = ("NHWC", "HWIO", "NHWC")


def _random(shape, seed):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# (input shape, features, kernel, strides, dilation, groups = input channels or 1)
_CASES = [
    ((2, 16, 16, 8), 8, 3, 1, 1, True),    # depthwise 3x3
    ((2, 16, 12, 8), 8, 5, 2, 1, True),    # depthwise 5x5 / 2, non-square
    ((1, 8, 8, 6), 6, 3, 1, 2, True),      # depthwise dilated (MobileNetV3 at output stride 16)
    ((1, 4, 4, 4), 4, 5, 1, 1, True),      # kernel larger than the map (32x32 input at stride 8)
    ((2, 16, 16, 1), 16, 3, 2, 1, False),  # grayscale stem
    ((1, 16, 16, 3), 8, 3, 2, 1, False),   # RGB stem
]


@pytest.mark.parametrize("case", _CASES, ids=str)
def test_shift_add_equals_xla_conv_with_gradients(case):
  shape, features, k, stride, dilation, depthwise = case
  kwargs = dict(features=features, kernel_size=(k, k), strides=(stride, stride),
                padding=layers.conv_padding(k, dilation), kernel_dilation=(dilation, dilation),
                feature_group_count=shape[-1] if depthwise else 1)
  x = _random(shape, 0)
  fast = light_layers.make_conv()(**kwargs)
  plain = nn.Conv(use_bias=False, **kwargs)
  variables = jax.jit(fast.init)(jax.random.key(1), x)

  def loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply({"params": params}, x)))

  jaxpr = str(jax.make_jaxpr(functools.partial(fast.apply, variables))(x))
  assert "conv_general_dilated" not in jaxpr  # The CPU path is taken.

  @jax.jit
  def run(params, x):
    """Both modules' outputs and gradients (w.r.t. kernel and input), in one compilation."""
    outs = [m.apply({"params": params}, x) for m in (fast, plain)]
    grads = [jax.grad(functools.partial(loss, m), argnums=(0, 1))(params, x) for m in (fast, plain)]
    return outs, grads

  (out_fast, out_plain), (grads_fast, grads_plain) = run(variables["params"], x)
  np.testing.assert_allclose(out_fast, out_plain, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_lax_convolutions_context_counts_the_real_grouped_conv():
  """FLOP counting (cost.py) sees a depthwise conv, not the CPU workaround's slices."""
  x = _random((1, 16, 16, 8), 0)
  conv = light_layers.make_conv()(8, (3, 3), padding=layers.conv_padding(3), feature_group_count=8)
  variables = conv.init(jax.random.key(1), x)
  with layers.lax_convolutions():
    jaxpr = str(jax.make_jaxpr(functools.partial(conv.apply, variables))(x))
  assert re.search(r"conv_general_dilated\[[^\]]*feature_group_count=8", jaxpr)


def test_shift_add_in_bfloat16_returns_bfloat16():
  x = _random((1, 8, 8, 4), 0).astype(jnp.bfloat16)
  kernel = _random((3, 3, 1, 4), 1).astype(jnp.bfloat16)
  dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _DN)
  out = light_layers.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn,
                                          feature_group_count=4)
  reference = jax.lax.conv_general_dilated(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1),
                                           ((1, 1), (1, 1)), dimension_numbers=dn, feature_group_count=4)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), reference, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("factor", [2, 4, 3])
def test_upsample_bilinear_equals_resize(factor):
  x = _random((2, 5, 7, 3), 0)
  fast = jax.jit(light_layers.upsample_bilinear, static_argnums=1)(x, factor)
  np.testing.assert_allclose(fast, layers.resize_bilinear(x, 5 * factor, 7 * factor), rtol=1e-5, atol=1e-5)


def test_depthwise_separable_over_two_inputs_equals_it_over_their_concatenation():
  a, b = _random((2, 8, 8, 3), 0), _random((2, 8, 8, 5), 1)
  conv, norm = light_layers.make_conv(), layers.make_norm(train=False)
  split = light_layers.DepthwiseSeparable(4, conv, norm)
  joint = light_layers.DepthwiseSeparable(4, conv, norm)
  variables = jax.jit(split.init)(jax.random.key(2), a, b)
  noise = jax.tree.map(lambda v: 0.1 * np.random.default_rng(3).standard_normal(v.shape), variables)
  variables = jax.tree.map(lambda v, n: v + n.astype(v.dtype), variables, noise)  # Non-trivial BN.
  p, s = variables["params"], variables["batch_stats"]
  cat = lambda x, y: jnp.concatenate([x, y], axis=-1)  # noqa: E731
  joint_vars = {
      "params": {"dw_conv0": {"kernel": cat(p["dw_conv0"]["kernel"], p["dw_conv1"]["kernel"])},
                 "dw_bn0": jax.tree.map(cat, p["dw_bn0"], p["dw_bn1"]),
                 "pw_conv0": {"kernel": jnp.concatenate([p["pw_conv0"]["kernel"], p["pw_conv1"]["kernel"]],
                                                        axis=2)},
                 "pw_bn": p["pw_bn"]},
      "batch_stats": {"dw_bn0": jax.tree.map(cat, s["dw_bn0"], s["dw_bn1"]), "pw_bn": s["pw_bn"]},
  }
  np.testing.assert_allclose(jax.jit(split.apply)(variables, a, b),
                             jax.jit(joint.apply)(joint_vars, cat(a, b)), rtol=1e-5, atol=1e-5)
