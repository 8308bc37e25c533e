"""Layer-level tests of the model zoo's bricks: pure `init_with_output` calls on tiny inputs."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from veinjax.models import fcn
from veinjax.models import layers
from veinjax.models import resnet
from veinjax.models import unet

jax.config.update("jax_disable_most_optimizations", True)

CONV = layers.make_conv(jnp.float32)
EVAL_NORM = layers.make_norm(train=False)


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _shapes(module, *args, **kwargs):
  """(output, variables) shapes without computing anything."""
  return jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), *args, **kwargs))


# ---- Input size check ----


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (100, 130, "input 100x130 is not divisible by 32: use 96x128 or 128x160 (resize, pad or crop)"),
        (512, 500, "input 512x500 is not divisible by 32: use 512x480 or 512x512 (resize, pad or crop)"),
        (20, 40, "input 20x40 is not divisible by 32: use 32x64 (resize, pad or crop)"),
        (0, 64, "input 0x64 is not divisible by 32: use 32x64 (resize, pad or crop)"),
    ],
)
def test_invalid_size_names_size_and_nearest_valid_sizes(height, width, message):
  with pytest.raises(ValueError) as error:
    layers.check_input_size(height, width)
  assert str(error.value) == message


@pytest.mark.parametrize(("height", "width"), [(32, 32), (512, 512), (96, 640)])
def test_valid_sizes_pass(height, width):
  layers.check_input_size(height, width)


# ---- Convolution padding, upsampling, parameter count ----


def test_stride2_conv_samples_like_pytorch():
  """A 7x7/2 conv whose kernel is a centred delta picks x[::2, ::2] (PyTorch's padding 3).

  XLA's "SAME" would pad (2, 3) and pick x[1::2, 1::2]: ported PyTorch weights would see a shifted image.
  """
  x = _x((1, 16, 16, 1))
  conv = CONV(1, (7, 7), strides=(2, 2), padding=layers.conv_padding(7))
  kernel = jnp.zeros((7, 7, 1, 1)).at[3, 3, 0, 0].set(1.0)
  y = conv.apply({"params": {"kernel": kernel}}, x)
  np.testing.assert_allclose(y, x[:, ::2, ::2], atol=1e-6)


_NHWC = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def _uses_matmul(fn, *args):
  return "dot_general" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("map_size, kernel, stride, dilation", [
    (4, 7, 1, 1),  # FCN-8s's fc6 on pool5 of a 128x128 input
    (2, 3, 1, 1),  # a ResNet 3x3 conv on a 2x2 map (64x64 input)
    (2, 3, 2, 1),  # strided
    (1, 3, 1, 2),  # dilated, on a 1x1 map
    (3, 5, 1, 1),  # odd map size
])
def test_small_map_matmul_equals_the_convolution_with_its_gradients(map_size, kernel, stride, dilation):
  x = _x((2, map_size, map_size, 8))
  w = _x((kernel, kernel, 8, 16), seed=1)
  padding = layers.conv_padding(kernel, dilation)

  def loss(conv_fn, x, w):
    y = conv_fn(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation), dimension_numbers=_NHWC)
    return jnp.sum(jnp.sin(y)), y

  ours = functools.partial(loss, layers.conv_general_dilated)
  reference = functools.partial(loss, jax.lax.conv_general_dilated)
  assert _uses_matmul(ours, x, w)  # the CPU path is the one under test
  (_, y), grads = jax.value_and_grad(ours, argnums=(0, 1), has_aux=True)(x, w)
  (_, y_ref), grads_ref = jax.value_and_grad(reference, argnums=(0, 1), has_aux=True)(x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_small_map_matmul_only_where_the_kernel_exceeds_the_map():
  conv = functools.partial(layers.conv_general_dilated, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                           dimension_numbers=_NHWC)
  small, large, w = _x((1, 2, 2, 4)), _x((1, 8, 8, 4)), _x((3, 3, 4, 4))
  assert _uses_matmul(conv, small, w)
  assert not _uses_matmul(conv, large, w)
  dilated = functools.partial(conv, padding=((12, 12), (12, 12)), rhs_dilation=(12, 12))
  assert not _uses_matmul(dilated, large, w)  # a dilated ASPP conv on an 8x8 map: plain is faster
  # The path is chosen at trace time and traces are cached per function: a fresh function each time.
  with layers.lax_convolutions():
    assert not _uses_matmul(functools.partial(conv), small, w)
  assert _uses_matmul(functools.partial(conv), small, w)  # the context restores the default


@pytest.fixture
def ynn_convolutions(monkeypatch):
  """As if XLA:CPU ran YNNPACK's convolutions (jaxlib 0.10's default), where the matmul weight gradient
  applies; veinjax's import turns them off (veinjax/xla_cpu.py), so the suite runs without them."""
  monkeypatch.setattr(layers.xla_cpu, "ynn_convolutions_active", lambda *args: True)


def _weight_grad_jaxpr(conv_fn, x, w):
  return str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(conv_fn(x, w))))(w))


def _uses_matmul_weight_grad(conv_fn, x, w):
  """Whether the kernel gradient of `conv_fn` is computed by matmuls (XLA's would be a second conv)."""
  return "dot_general" in _weight_grad_jaxpr(conv_fn, x, w)


def _weight_grad_way(conv_fn, x, w):
  """Which way of _weight_grad_by_matmuls a conv's kernel gradient takes."""
  jaxpr = _weight_grad_jaxpr(conv_fn, x, w)
  assert "dot_general" in jaxpr
  if "scan" not in jaxpr:
    return "im2col"
  return "scan in halves" if re.search(r"f32\[2,\d+,\d+\] = dot_general", jaxpr) else "scan"


@pytest.mark.parametrize("size, kernel, stride, dilation, padding", [
    ((16, 16), 3, 1, 1, "pytorch"),  # the smallest map of the rule: 16x16 outputs
    ((34, 32), 3, 2, 1, "pytorch"),  # strided, non-square: 17x16 outputs
    ((64, 64), 1, 2, 1, "pytorch"),  # a ResNet downsampling shortcut
    ((64, 64), 3, 1, 2, "pytorch"),  # dilated
    ((64, 64), 3, 1, 1, "SAME"),
    ((64, 64), 3, 2, 1, "SAME"),  # XLA's (0, 1) padding
    ((64, 64), 3, 1, 1, "VALID"),
    ((64, 64), 5, 1, 1, ((2, 1), (-1, 3))),  # uneven, and a negative (cropping) pad
    ((33, 35), 3, 1, 1, "pytorch"),  # odd sizes: N * H' * W' not even, one contraction
])
@pytest.mark.parametrize("way, channels", [("scan in halves", (32, 32)), ("scan", (32, 32)), ("im2col", (1, 8)),
                                           ("im2col", (3, 16)), ("scan in halves", (1, 8))])
def test_matmul_weight_gradient_equals_the_convolution_gradients(size, kernel, stride, dilation, padding, way,
                                                                 channels, monkeypatch, ynn_convolutions):
  if way == "scan":  # one matmul per tap, as for channels of 256 x 256 and more
    monkeypatch.setattr(layers, "HALVES_BELOW_CHANNEL_PRODUCT", 0)
  if way == "scan in halves" and channels[0] == 1:  # a stem whose side-by-side windows would be too large
    monkeypatch.setattr(layers, "IM2COL_WEIGHT_GRAD_MAX_BYTES", 0)
  cin, cout = channels
  x = _x((2 if size != (33, 35) else 1, *size, cin))
  w = _x((kernel, kernel, cin, cout), seed=1) * 0.1
  padding = layers.conv_padding(kernel, dilation) if padding == "pytorch" else padding

  def loss(conv_fn, x, w):
    y = conv_fn(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation), dimension_numbers=_NHWC)
    return jnp.sum(jnp.sin(y)), y

  ours = functools.partial(loss, layers.conv_general_dilated)
  reference = functools.partial(loss, jax.lax.conv_general_dilated)
  expected = "scan" if way == "scan in halves" and size == (33, 35) else way  # odd rows: no halves
  assert _weight_grad_way(lambda x, w: ours(x, w)[1], x, w) == expected  # the CPU path is the one under test
  (_, y), grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1), has_aux=True))(x, w)
  (_, y_ref), grads_ref = jax.jit(jax.value_and_grad(reference, argnums=(0, 1), has_aux=True))(x, w)
  np.testing.assert_array_equal(y, y_ref)  # the forward pass and the input gradient are XLA's own convs
  np.testing.assert_array_equal(grads[0], grads_ref[0])
  # Each entry sums up to 2 x 64 x 64 products: float32 rounding relative to the gradient's scale.
  np.testing.assert_allclose(grads[1], grads_ref[1], rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(grads_ref[1]))))


def test_matmul_weight_gradient_is_not_xlas_computation(ynn_convolutions):
  """Guards the equality test above against comparing XLA's gradient with itself."""
  x, w = _x((2, 32, 32, 32)), _x((3, 3, 32, 32), seed=1) * 0.1
  grad = lambda conv_fn: jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(conv_fn(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)))))(w)
  assert not np.array_equal(grad(layers.conv_general_dilated), grad(jax.lax.conv_general_dilated))


def test_matmul_weight_gradient_in_bfloat16_is_as_close_to_float32_as_the_convolutions(ynn_convolutions):
  x, w = _x((2, 32, 32, 32)), _x((3, 3, 32, 32), seed=1) * 0.1
  padding = layers.conv_padding(3)

  def weight_grad(conv_fn, dtype):
    loss = lambda w: jnp.sum(jnp.sin(conv_fn(x.astype(dtype), w, (1, 1), padding,
                                             dimension_numbers=_NHWC).astype(jnp.float32)))
    return jax.jit(jax.grad(loss))(w.astype(dtype))

  exact = weight_grad(jax.lax.conv_general_dilated, jnp.float32)
  ours, xla = weight_grad(layers.conv_general_dilated, jnp.bfloat16), weight_grad(
      jax.lax.conv_general_dilated, jnp.bfloat16)
  assert ours.dtype == jnp.bfloat16
  error = lambda g: float(jnp.max(jnp.abs(g.astype(jnp.float32) - exact)))
  assert error(ours) <= error(xla) * 1.5 + 1e-6  # float32 accumulation: no worse than XLA's bf16 conv


def test_matmul_weight_gradient_keeps_one_input_sized_window_at_a_time(ynn_convolutions):
  """The kh * kw shifted windows are made one after another: memory ~ the conv's own + two inputs (the
  padded copy and one window), not + kh * kw inputs. Temporaries here: XLA's conv 12 MiB, ours 18.5 MiB,
  the taps unrolled (before the scan) 76.5 MiB; the input is 8 MiB."""
  x = jax.ShapeDtypeStruct((4, 64, 64, 128), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 128, 32), jnp.float32)

  def temp_bytes(conv_fn):
    loss = lambda x, w: jnp.sum(jnp.sin(conv_fn(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return grad.lower(x, w).compile().memory_analysis().temp_size_in_bytes

  input_bytes = 4 * 64 * 64 * 128 * 4
  assert temp_bytes(layers.conv_general_dilated) <= temp_bytes(jax.lax.conv_general_dilated) + 3 * input_bytes


def test_matmul_weight_gradient_only_on_large_enough_maps_with_enough_channels_or_a_stem(ynn_convolutions):
  conv = functools.partial(layers.conv_general_dilated, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                           dimension_numbers=_NHWC)
  large, small, thin = _x((1, 16, 16, 32)), _x((1, 8, 8, 32)), _x((1, 32, 32, 8))
  w, thin_w = _x((3, 3, 32, 32)), _x((3, 3, 8, 32))
  assert _uses_matmul_weight_grad(conv, large, w)
  assert not _uses_matmul_weight_grad(conv, small, w)  # 8x8 outputs: XLA's conv is as fast there
  assert not _uses_matmul_weight_grad(conv, thin, thin_w)  # 8 x 32 channels: the shifted copies cost more
  assert _uses_matmul_weight_grad(conv, _x((1, 16, 16, 1)), _x((3, 3, 1, 8)))  # a gray stem: im2col
  assert not _uses_matmul_weight_grad(conv, _x((1, 8, 8, 1)), _x((3, 3, 1, 8)))
  depthwise = functools.partial(conv, feature_group_count=32)
  assert not _uses_matmul_weight_grad(depthwise, large, _x((3, 3, 1, 32)))  # grouped: XLA's conv
  with layers.lax_convolutions():  # FLOP counts and exports: XLA's convolutions only
    assert not _uses_matmul_weight_grad(functools.partial(conv), large, w)


def test_weight_gradient_is_xlas_convolution_with_eigen_convolutions(monkeypatch):
  """veinjax's import turns YNNPACK's convolutions off on jaxlib 0.10 (veinjax/xla_cpu.py): then XLA's own
  weight-gradient convolution is used, on maps of every size and on a stem."""
  conv = functools.partial(layers.conv_general_dilated, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                           dimension_numbers=_NHWC)
  eigen = "--xla_force_host_platform_device_count=1 " + layers.xla_cpu.EIGEN_CONVOLUTIONS
  assert not layers.xla_cpu.ynn_convolutions_active(eigen)
  monkeypatch.setenv("XLA_FLAGS", eigen)
  assert not _uses_matmul_weight_grad(conv, _x((1, 16, 16, 32)), _x((3, 3, 32, 32)))
  assert not _uses_matmul_weight_grad(conv, _x((1, 16, 16, 1)), _x((3, 3, 1, 8)))
  monkeypatch.setenv("XLA_FLAGS", "")  # XLA's default: YNNPACK's convolutions, the matmuls
  assert _uses_matmul_weight_grad(conv, _x((1, 16, 16, 32)), _x((3, 3, 32, 32)))


def test_unet_trains_with_the_same_gradients_with_and_without_the_cpu_workarounds(ynn_convolutions):
  model = unet.UNet(num_classes=1, widths=(32, 64))
  x = _x((2, 32, 32, 1))
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.sin(logits))

  ours = jax.jit(jax.grad(loss))(variables["params"])
  with layers.lax_convolutions():
    reference = jax.jit(jax.grad(loss))(variables["params"])
  leaves, leaves_ref = jax.tree.leaves(ours), jax.tree.leaves(reference)
  assert any(not np.array_equal(a, b) for a, b in zip(leaves, leaves_ref))  # the matmul path ran
  for a, b in zip(leaves, leaves_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fcn_gives_the_same_logits_with_and_without_the_small_map_matmul():
  model = fcn.FCN8s(fc_features=32, encoder=functools.partial(fcn.VGGEncoder, widths=(4, 4, 8, 8, 8)))
  x = _x((2, 64, 64, 1))  # pool5 is 2x2, fc6 is 7x7
  variables = model.init(jax.random.key(0), x)
  ours = model.apply(variables, x)
  with layers.lax_convolutions():
    reference = model.apply(variables, x)
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, window, strides", [
    ((2, 17, 17, 8), (3, 3), (2, 2)),  # ResNet's stem pool (on a zero-padded map: odd size)
    ((2, 16, 12, 8), (2, 2), (2, 2)),  # U-Net's and FCN-8s's
    ((1, 9, 11, 3), (3, 2), (1, 3)),
])
def test_max_pool_equals_flax_max_pool_with_its_gradient(shape, window, strides):
  # After a ReLU: many ties (zeros), where the gradient must go to the same element as select-and-scatter's.
  x = jnp.maximum(_x(shape), 0.0).at[:, ::2].set(0.5)
  cotangent = _x(nn.max_pool(x, window, strides=strides).shape, seed=1)
  ours = lambda x: layers.max_pool(x, window, strides)
  reference = lambda x: nn.max_pool(x, window, strides=strides, padding="VALID")
  assert "reduce_window" not in str(jax.make_jaxpr(ours)(x))  # the CPU path is the one under test
  (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x), jax.vjp(reference, x)
  np.testing.assert_array_equal(y, y_ref)
  # Overlapping windows add their gradients in another order: float rounding at most.
  np.testing.assert_allclose(vjp(cotangent)[0], vjp_ref(cotangent)[0], rtol=1e-6, atol=1e-6)
  with layers.lax_convolutions():  # exports: the pooling op itself
    assert "reduce_window" in str(jax.make_jaxpr(lambda x: layers.max_pool(x, window, strides))(x))


def test_max_pool_keeps_a_nan_as_flax_does():
  x = jnp.zeros((1, 4, 4, 2)).at[0, 1, 1, 0].set(jnp.nan).at[0, 3, 3, 1].set(jnp.nan)
  np.testing.assert_array_equal(layers.max_pool(x, (2, 2), (2, 2)), nn.max_pool(x, (2, 2), strides=(2, 2)))
  assert int(jnp.isnan(layers.max_pool(x, (2, 2), (2, 2))).sum()) == 2


def test_upsample_nearest2x_repeats_each_pixel():
  x = jnp.arange(6.0).reshape(1, 2, 3, 1)
  y = layers.upsample_nearest2x(x)
  assert y.shape == (1, 4, 6, 1)
  np.testing.assert_array_equal(y[0, :, :, 0], np.kron(np.arange(6.0).reshape(2, 3), np.ones((2, 2))))


def test_resize_bilinear_shape_dtype_and_constant():
  x = jnp.full((2, 4, 8, 3), 1.5, jnp.bfloat16)
  y = layers.resize_bilinear(x, 16, 32)
  assert y.shape == (2, 16, 32, 3) and y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), 1.5)


def test_count_params():
  tree = {"a": jnp.zeros((3, 4)), "b": {"c": jnp.zeros((5,))}}
  assert layers.count_params(tree) == 17


def test_conv_bn_relu_is_non_negative_and_has_no_conv_bias():
  (y, variables) = layers.ConvBNReLU(8, CONV, EVAL_NORM).init_with_output(jax.random.key(0), _x((1, 8, 8, 3)))
  assert y.shape == (1, 8, 8, 8) and float(y.min()) >= 0.0
  assert set(variables["params"]["conv"]) == {"kernel"}
  assert set(variables["params"]["bn"]) == {"scale", "bias"}


def test_cross_replica_batchnorm_uses_the_whole_batch():
  """make_norm(axis_name=...) under vmap gives the statistics of all replicas together."""
  x = _x((2, 3, 4, 4, 5))  # [replicas, per-replica batch, H, W, C]; replicas differ in distribution.
  x = x.at[1].multiply(3.0).at[1].add(2.0)
  synced = layers.ConvBNReLU(6, CONV, layers.make_norm(train=True, axis_name="batch"), act=False)
  local = layers.ConvBNReLU(6, CONV, layers.make_norm(train=True), act=False)
  variables = local.init(jax.random.key(0), x[0])

  def run(module, x):
    return module.apply(variables, x, mutable=["batch_stats"])

  y_synced, stats = jax.vmap(functools.partial(run, synced), axis_name="batch")(x)
  y_whole, whole_stats = run(local, x.reshape(6, 4, 4, 5))
  np.testing.assert_allclose(y_synced.reshape(y_whole.shape), y_whole, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      stats["batch_stats"]["bn"]["mean"][0], whole_stats["batch_stats"]["bn"]["mean"], rtol=1e-5, atol=1e-6
  )
  # And without the axis name each replica normalises with its own statistics: different outputs.
  y_local, _ = jax.vmap(functools.partial(run, local))(x)
  assert not np.allclose(y_local.reshape(y_whole.shape), y_whole, atol=1e-2)


# ---- Residual blocks ----


def _zero_last_bn_scale(params, bn_name):
  params = jax.tree.map(lambda p: p, params)  # Copy: keep the original intact.
  params[bn_name]["scale"] = jnp.zeros_like(params[bn_name]["scale"])
  return params


@pytest.mark.parametrize(
    ("block_cls", "features", "last_bn"),
    [(resnet.BasicBlock, 16, "bn2"), (resnet.Bottleneck, 4, "bn3")],
)
def test_residual_block_is_identity_when_last_bn_scale_is_zero(block_cls, features, last_bn):
  x = _x((2, 8, 8, 16))  # Has negative values: the output must be relu(x), not x.
  block = block_cls(features, CONV, EVAL_NORM)
  y, variables = block.init_with_output(jax.random.key(0), x)
  assert y.shape == x.shape
  assert "downsample_conv" not in variables["params"]  # Same shape: identity shortcut.
  assert not np.allclose(y, nn.relu(x), atol=1e-3)  # The residual branch does contribute...
  params = _zero_last_bn_scale(variables["params"], last_bn)
  y0 = block.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
  np.testing.assert_allclose(y0, nn.relu(x), atol=1e-6)  # ...until its last BN scale is zeroed.


@pytest.mark.parametrize(("block_cls", "out_channels"), [(resnet.BasicBlock, 32), (resnet.Bottleneck, 128)])
def test_residual_block_projects_when_the_shape_changes(block_cls, out_channels):
  block = block_cls(32, CONV, EVAL_NORM, strides=2)
  y, variables = _shapes(block, jnp.zeros((1, 16, 16, 16)))
  assert y.shape == (1, 8, 8, out_channels)
  assert variables["params"]["downsample_conv"]["kernel"].shape == (1, 1, 16, out_channels)
  assert "downsample_bn" in variables["params"]


def test_dilated_block_keeps_the_resolution():
  block = resnet.BasicBlock(16, CONV, EVAL_NORM, dilation=2)
  y, _ = _shapes(block, jnp.zeros((1, 8, 8, 16)))
  assert y.shape == (1, 8, 8, 16)


# ---- Encoders ----


@pytest.mark.parametrize(
    ("encoder", "channels"),
    [
        (resnet.ResNet18, (64, 64, 128, 256, 512)),
        (resnet.ResNet34, (64, 64, 128, 256, 512)),
        (resnet.ResNet50, (64, 256, 512, 1024, 2048)),
        (fcn.VGG16, (64, 128, 256, 512, 512)),
    ],
)
def test_encoder_features_match_declared_strides_and_channels(encoder, channels):
  module = encoder()
  features, _ = _shapes(module, jnp.zeros((1, 64, 96, 1)))
  assert module.out_channels == channels
  assert module.reductions == (2, 4, 8, 16, 32)
  expected = [(1, 64 // s, 96 // s, c) for s, c in zip(module.reductions, channels)]
  assert [f.shape for f in features] == expected


@pytest.mark.parametrize(("output_stride", "reductions"), [(16, (2, 4, 8, 16, 16)), (8, (2, 4, 8, 8, 8))])
def test_dilated_resnet_output_stride(output_stride, reductions):
  module = resnet.ResNet34(output_stride=output_stride)
  features, variables = _shapes(module, jnp.zeros((1, 64, 64, 1)))
  assert module.reductions == reductions
  assert [f.shape[1] for f in features] == [64 // s for s in reductions]
  # Dilation replaces the stride without changing any parameter.
  _, plain = _shapes(resnet.ResNet34(), jnp.zeros((1, 64, 64, 1)))
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, plain)


def test_bad_output_stride():
  with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
    _shapes(resnet.ResNet34(output_stride=4), jnp.zeros((1, 64, 64, 1)))


def test_unet_encoder_strides_and_channels():
  module = unet.UNetEncoder()
  features, _ = _shapes(module, jnp.zeros((1, 32, 64, 1)))
  assert module.reductions == (1, 2, 4, 8, 16)
  assert [f.shape for f in features] == [
      (1, 32 // s, 64 // s, c) for s, c in zip(module.reductions, module.out_channels)
  ]


def test_encoder_computes_in_its_dtype():
  features, variables = _shapes(resnet.ResNet18(dtype=jnp.bfloat16), jnp.zeros((1, 32, 32, 1)))
  assert {f.dtype for f in features} == {jnp.dtype(jnp.bfloat16)}
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


# ---- Decoder blocks ----


def test_decoder_block_upsamples_and_concatenates_the_skip():
  block = unet.DecoderBlock(8, CONV, EVAL_NORM)
  y, variables = _shapes(block, jnp.zeros((1, 4, 6, 12)), jnp.zeros((1, 8, 12, 5)))
  assert y.shape == (1, 8, 12, 8)
  assert variables["params"]["conv1"]["conv"]["kernel"].shape == (3, 3, 12 + 5, 8)
  assert variables["params"]["conv2"]["conv"]["kernel"].shape == (3, 3, 8, 8)


def test_decoder_block_without_skip():
  y, variables = _shapes(unet.DecoderBlock(8, CONV, EVAL_NORM), jnp.zeros((1, 4, 6, 12)))
  assert y.shape == (1, 8, 12, 8)
  assert variables["params"]["conv1"]["conv"]["kernel"].shape == (3, 3, 12, 8)


def test_decoder_block_reads_the_skip():
  """The skip really enters the computation: changing it changes the output."""
  block = unet.DecoderBlock(8, CONV, EVAL_NORM)
  x, skip = _x((1, 4, 4, 6)), _x((1, 8, 8, 3), seed=1)
  y, variables = block.init_with_output(jax.random.key(0), x, skip)
  y2 = block.apply(variables, x, skip + 1.0)
  assert not np.allclose(y, y2)


def test_decoder_block_rejects_a_mismatched_skip():
  with pytest.raises(ValueError, match="does not match the upsampled input"):
    _shapes(unet.DecoderBlock(8, CONV, EVAL_NORM), jnp.zeros((1, 4, 4, 12)), jnp.zeros((1, 16, 16, 5)))


def test_unet_decoder_on_resnet34_features():
  features = [jnp.zeros((1, 64 // s, 64 // s, c)) for s, c in zip((2, 4, 8, 16, 32), (64, 64, 128, 256, 512))]
  y, variables = _shapes(unet.UNetDecoder(), features)
  assert y.shape == (1, 64, 64, 16)
  # Block 1 sees the deepest feature + the stride-16 skip; block 5 has no skip.
  assert variables["params"]["block1"]["conv1"]["conv"]["kernel"].shape == (3, 3, 512 + 256, 256)
  assert variables["params"]["block5"]["conv1"]["conv"]["kernel"].shape == (3, 3, 32, 16)
