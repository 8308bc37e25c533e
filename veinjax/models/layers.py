"""Shared bricks of the veinjax model zoo.

Everything every architecture needs in one place: the conv and BatchNorm factories (so computation dtype
and cross-replica BatchNorm are one argument away), ConvBNReLU, the two upsampling operators, the input
size check and the parameter counter.

Conventions, all layers:
- NHWC tensors; parameters always float32 (`param_dtype`), computation in the module's `dtype`.
- Convolutions use explicit symmetric padding `dilation * (kernel // 2)` (PyTorch's), not XLA's "SAME":
  for stride 2 on an even size "SAME" pads (2, 3) where PyTorch pads (3, 3), which shifts the sampling
  grid by one pixel and would make ported PyTorch weights see a different image.
- A conv followed by BatchNorm has no bias (the BN bias makes it redundant).
- BatchNorm uses PyTorch's defaults (momentum 0.1, i.e. flax momentum 0.9; epsilon 1e-5) and PyTorch's
  two-pass batch variance (flax's one-pass formula loses float32 precision, see `make_norm`). Its running
  variance is flax's (the biased batch variance) unless `make_norm(running_variance="unbiased")` asks for
  PyTorch's (`BatchNorm`).

Initialisation (`conv_kernel_init` and the `smp_*` initialisers below, chosen by `config.model_init`):
- veinjax's own, the default: every conv before a BatchNorm He-normal on fan-out (`conv_kernel_init`), as
  torchvision initialises its ResNets; heads (conv with bias) flax's default, LeCun normal on fan-in
  truncated at 2 std, zero bias; BatchNorm scale 1, bias 0.
- segmentation_models_pytorch's (issue 18: train like the PyTorch reference, smp `Unet("resnet34")`):
  the encoder as torchvision initialises it, except a first conv re-created for an input channel count
  other than 3 (PyTorch's default conv init); the decoder's convs kaiming-uniform on fan-in
  (`smp_decoder_kernel_init`), its BatchNorms 1 / 0; the head xavier-uniform, zero bias
  (`smp_head_kernel_init`).
- jax's "normal" in `variance_scaling` is the plain (untruncated) normal, which is what torch's
  `kaiming_normal_` draws; "truncated_normal" (flax's default LeCun init) is cut at 2 std and rescaled so
  that the variance is still scale / fan.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import flax.linen as nn
from flax.linen import normalization as flax_normalization
import jax
import jax.numpy as jnp

from veinjax import xla_cpu

ModuleDef = Any
Dtype = Any
Initializer = Any  # (key, shape, dtype) -> array, as jax.nn.initializers

# Every architecture accepts the same input sizes (the deepest encoder stride), so that training several
# models on one data set never fails for one of them only.
SIZE_DIVISOR = 32

# He-normal on fan-out, as torchvision initialises ResNet/VGG convolutions before a ReLU
# (`kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`: an untruncated normal, std sqrt(2 / fan_out)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# segmentation_models_pytorch's initialisation (`config.model_init = "smp"`; smp's
# base/initialization.py, initialize_decoder / initialize_head). Fans as torch counts them: a kxk conv
# from C to F channels has fan_in k*k*C and fan_out k*k*F, in flax's HWIO kernels too.
# Decoder convs: `kaiming_uniform_(w, mode="fan_in", nonlinearity="relu")`, uniform in +-sqrt(6 / fan_in).
smp_decoder_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
# Head (conv with bias): `xavier_uniform_(w)`, uniform in +-sqrt(6 / (fan_in + fan_out)); bias 0.
smp_head_kernel_init = nn.initializers.xavier_uniform()
# PyTorch's default conv init (`Conv2d.reset_parameters`: `kaiming_uniform_(w, a=sqrt(5))`), uniform in
# +-1 / sqrt(fan_in).
torch_default_conv_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def smp_stem_kernel_init(key: jax.Array, shape, dtype: Dtype = jnp.float32) -> jax.Array:
  """The first conv of an smp ResNet encoder initialised from scratch (`encoder_weights=None`).

  With 3 input channels it is torchvision's conv (`conv_kernel_init`). For any other count smp's
  `set_in_channels(in_channels, pretrained=False)` replaces the weight and calls the conv's
  `reset_parameters()`: PyTorch's default init, uniform in +-1 / sqrt(fan_in) (+-1/7 for a 7x7 gray stem).
  """
  if shape[-2] == 3:
    return conv_kernel_init(key, shape, dtype)
  return torch_default_conv_kernel_init(key, shape, dtype)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with two workarounds for slow XLA:CPU convolutions (NHWC, ungrouped).

  1. A kernel larger than its input becomes a matmul. XLA's CPU convolution is pathologically slow when
     the kernel is larger than the feature map, as in the deepest layers of small training images: FCN-8s's
     7x7 fc6 on a 4x4 pool5 map (128x128 input), ResNet's 3x3 convs on 2x2 maps (64x64 input). There the
     convolution is computed as im2col + one matmul: `python benchmarks/small_map_conv.py` measured an
     FCN-8s training step at 128x128 11.8x faster and a ResNet34-UNet step at 64x64 3.5x faster on a
     2-core CPU.
  2. Where XLA:CPU runs convolutions through YNNPACK (jaxlib 0.10's default, which veinjax turns off at
     import: `veinjax/xla_cpu.py`), on a map of 16x16 or more the weight gradient is computed by matmuls
     (`_conv_with_matmul_weight_grad`): YNNPACK's weight-gradient ("backward filter") convolution runs up
     to ~10x below its forward convolution on large maps, ~1.6x on 16x16 ones and ~4x in a gray image's
     7x7 stem. XLA's Eigen convolutions need no such help (the matmuls made the resnet34_unet step at
     512x512, batch 4, ~6% slower there), so with them this is XLA's convolution.

  Everywhere else (GPU, TPU, grouped convs, inside `lax_convolutions()`) this is exactly
  `lax.conv_general_dilated`. Same parameters either way; results equal up to float rounding.
  """
  nhwc = (lhs.ndim == 4 and dimension_numbers is not None
          and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
          and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
          and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
  eligible = (cpu_workarounds_active() and nhwc
              and feature_group_count == 1 and batch_group_count == 1
              and all(d == 1 for d in (lhs_dilation or (1, 1))))
  plain = functools.partial(
      jax.lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  if not eligible:
    return plain(lhs, rhs)
  # The kernel itself, not its dilated extent: dilated ASPP convs on 8x8 maps are fine (and slower as
  # matmuls), 3x3 convs on 2x2 maps are not.
  if any(k > size for k, size in zip(rhs.shape[:2], lhs.shape[1:3])):
    return _small_map_matmul(lhs, rhs, window_strides, padding, rhs_dilation, precision,
                             preferred_element_type)
  strides = tuple(window_strides)
  dilation = tuple(rhs_dilation or (1, 1))
  pads = _explicit_padding(lhs.shape[1:3], rhs.shape[:2], strides, padding, dilation)
  out_height, out_width = _conv_output_size(lhs.shape[1:3], rhs.shape[:2], strides, pads, dilation)
  cin, cout = rhs.shape[2:]
  if (xla_cpu.ynn_convolutions_active() and out_height * out_width >= MATMUL_WEIGHT_GRAD_MIN_PIXELS
      and (cin * cout >= MATMUL_WEIGHT_GRAD_MIN_CHANNEL_PRODUCT or cin <= MATMUL_WEIGHT_GRAD_MAX_STEM_CHANNELS)):
    return _conv_with_matmul_weight_grad(lhs, rhs, strides, pads, dilation, precision, preferred_element_type)
  return plain(lhs, rhs)


def _small_map_matmul(lhs, rhs, window_strides, padding, rhs_dilation, precision, preferred_element_type):
  """The convolution as im2col + one matmul (for a kernel larger than its map; see conv_general_dilated)."""
  kh, kw, cin, cout = rhs.shape
  # [N, H', W', cin * kh * kw], features ordered (cin, kh, kw).
  patches = jax.lax.conv_general_dilated_patches(
      lhs, (kh, kw), window_strides, padding, rhs_dilation=rhs_dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
  kernel = jnp.transpose(rhs, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)
  return jax.lax.dot_general(patches, kernel, (((3,), (0,)), ((), ())), precision=precision,
                             preferred_element_type=preferred_element_type)


# Where the weight gradient is computed by matmuls (workaround 2 of conv_general_dilated): an output map of
# at least 16x16 pixels and either input x output channels of at least 32 x 32, or an input of at most 4
# channels (a gray or RGB stem). Chosen by measurement: XLA's weight-gradient conv vs the matmuls, batch 4,
# 2-core AMD EPYC, jit, medians of 3-5 in one-off probes, ms. 3x3 convs: 16x16 512->512 142 vs 87,
# 16x16 256->256 34 vs 28, 32x32 256->256 187 vs 90, 128x128 64->64 1073 vs 183, 256x256 32->32 827 vs 241;
# the 7x7 stride-2 stem at 512x512, 1 -> 64 channels 467 vs 109, 3 -> 64 1181 vs 382. XLA's conv stays
# where it is faster: 8x8 maps (512->512: 24 vs 36) and thin channels at high resolution (512x512 32->16:
# 332 vs 916, the kh*kw shifted copies of the input cost more than they save). The whole resnet34_unet step
# (batch 4, 512x512) ran 2.0-2.2x faster than with XLA's convs when this covered maps of 32x32 and more, and
# 1.06-1.11x faster again with 16x16 maps and the stem (and 1.09-1.24x at 128x128, batch 8).
MATMUL_WEIGHT_GRAD_MIN_PIXELS = 16 * 16
MATMUL_WEIGHT_GRAD_MIN_CHANNEL_PRODUCT = 32 * 32
MATMUL_WEIGHT_GRAD_MAX_STEM_CHANNELS = 4
# A stem's kh*kw shifted windows are put side by side (im2col, one matmul) where together they take at most
# this many bytes, else taken one after another as other convs' are (memory).
IM2COL_WEIGHT_GRAD_MAX_BYTES = 64 * 2**20
# Below this input x output channel product the contraction is split in two halves (see
# _weight_grad_by_matmuls); above it one matmul per tap is faster (16x16 512->512, batch 4: 87 ms vs 160).
HALVES_BELOW_CHANNEL_PRODUCT = 256 * 256


def _explicit_padding(in_size, kernel_size, strides, padding, dilation):
  """((top, bottom), (left, right)) of `padding` ("SAME", "VALID" or explicit pairs)."""
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    return tuple(map(tuple, jax.lax.padtype_to_pads(in_size, dilated, strides, padding)))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _conv_output_size(in_size, kernel_size, strides, pads, dilation):
  return tuple((size + lo + hi - (k - 1) * d - 1) // s + 1
               for size, k, s, (lo, hi), d in zip(in_size, kernel_size, strides, pads, dilation))


def _nhwc_conv(lhs, rhs, strides, pads, dilation, precision, preferred_element_type):
  return jax.lax.conv_general_dilated(
      lhs, rhs, strides, pads, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=precision, preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_with_matmul_weight_grad(lhs, rhs, strides, pads, dilation, precision, preferred_element_type):
  """An NHWC convolution whose kernel gradient is kh * kw matmuls (its input gradient is XLA's)."""
  return _nhwc_conv(lhs, rhs, strides, pads, dilation, precision, preferred_element_type)


def _conv_with_matmul_weight_grad_fwd(lhs, rhs, strides, pads, dilation, precision, preferred_element_type):
  out = _nhwc_conv(lhs, rhs, strides, pads, dilation, precision, preferred_element_type)
  return out, (lhs, rhs)


def _conv_with_matmul_weight_grad_bwd(strides, pads, dilation, precision, preferred_element_type, residuals,
                                      out_grad):
  lhs, rhs = residuals
  # The input gradient as JAX transposes the convolution (XLA:CPU runs it as fast as the forward conv).
  _, input_vjp = jax.vjp(
      lambda x: _nhwc_conv(x, rhs, strides, pads, dilation, precision, preferred_element_type), lhs)
  (lhs_grad,) = input_vjp(out_grad)
  return lhs_grad, _weight_grad_by_matmuls(lhs, out_grad, rhs.shape, strides, pads, dilation,
                                           precision).astype(rhs.dtype)


_conv_with_matmul_weight_grad.defvjp(_conv_with_matmul_weight_grad_fwd, _conv_with_matmul_weight_grad_bwd)


def _weight_grad_by_matmuls(lhs, out_grad, kernel_shape, strides, pads, dilation, precision):
  """d(loss)/d(kernel) of an NHWC conv: kernel[i, j] = sum over n, p, q of
  x_padded[n, p * stride + i * dilation, q * stride + j * dilation, :]^T out_grad[n, p, q, :], a matmul
  over the strided window of the padded input that each kernel tap sees, accumulated in float32. A stem's
  few input channels: all windows side by side (im2col) and one matmul instead of kh*kw thin ones."""
  kh, kw, cin, cout = kernel_shape
  n, out_height, out_width, _ = out_grad.shape
  # lax.pad, not jnp.pad: explicit convolution padding may be negative (a crop).
  x = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  span = ((out_height - 1) * strides[0] + 1, (out_width - 1) * strides[1] + 1)
  offsets = [(i * dilation[0], j * dilation[1]) for i in range(kh) for j in range(kw)]

  def window(offset):  # [rows = n * out_height * out_width, cin]
    w = jax.lax.dynamic_slice(x, (0, offset[0], offset[1], 0), (n, *span, cin))
    return w[:, ::strides[0], ::strides[1], :].reshape(-1, cin)

  def matmul(a, b):  # a^T b over the rows; leading dimensions (the halves below) batched
    batch = tuple(range(a.ndim - 2))
    return jax.lax.dot_general(a, b, (((a.ndim - 2,), (b.ndim - 2,)), (batch, batch)), precision=precision,
                               preferred_element_type=jnp.float32)

  grad = out_grad.reshape(-1, cout)
  if (cin <= MATMUL_WEIGHT_GRAD_MAX_STEM_CHANNELS
      and kh * kw * grad.shape[0] * cin * lhs.dtype.itemsize <= IM2COL_WEIGHT_GRAD_MAX_BYTES):
    columns = jnp.concatenate([window(offset) for offset in offsets], axis=1)
    return matmul(columns, grad).reshape(kh, kw, cin, cout)

  # Independent halves of the contraction (batched, then added): XLA:CPU does not spread one matmul with a
  # small cin x cout output and a huge contraction well over cores (256x256 64->64, batch 4: 1717 ms as
  # one matmul per tap, 704 ms in 8 parts; 128x128 64->64: 183 ms in 2 parts, 170 ms in 8).
  halves = 2 if cin * cout < HALVES_BELOW_CHANNEL_PRODUCT and grad.shape[0] % 2 == 0 else 1
  grad = grad.reshape(halves, -1, cout)

  def one_tap(_, offset):
    return None, matmul(window(offset).reshape(halves, -1, cin), grad).sum(axis=0)

  # One tap after another (a scan): unrolled, XLA keeps all kh * kw input-sized windows alive at once.
  _, taps = jax.lax.scan(one_tap, None, jnp.array(offsets, jnp.int32))
  return taps.reshape(kh, kw, cin, cout)


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
  """`nn.max_pool(x, window, strides, padding="VALID")` on NHWC input.

  On CPU (outside `lax_convolutions()`) the maximum over the window's kh*kw strided slices: XLA:CPU runs
  max-pooling's gradient (select-and-scatter) slowly, ResNet's 3x3 stride-2 pool on a [4, 258, 258, 64] map
  forward + backward 401 ms against 145 (probe, 2-core AMD EPYC). Ties go to the first element of the window
  in row-major order, as select-and-scatter does, so values and gradients are the same; a NaN in a window
  gives NaN, as `nn.max_pool` does.
  """
  if not cpu_workarounds_active():
    return nn.max_pool(x, window, strides=strides, padding="VALID")
  out_size = tuple((size - k) // s + 1 for size, k, s in zip(x.shape[1:3], window, strides))
  result = None
  for i in range(window[0]):
    for j in range(window[1]):
      tap = tap_slice(x, (i, j), out_size, strides)
      # Strict: the first maximum wins. A NaN is taken and then kept (nothing compares greater).
      result = tap if result is None else jnp.where((tap > result) | jnp.isnan(tap), tap, result)
  return result


def tap_slice(x: jax.Array, offset: tuple[int, int], out_size: tuple[int, int],
              strides: tuple[int, int]) -> jax.Array:
  """What the kernel (or pooling window) tap at `offset` = (top, left) sees of NHWC `x` for each of the
  out_size output pixels: x[:, top + p * stride_h, left + q * stride_w, :]."""
  (top, left), (out_height, out_width), (stride_h, stride_w) = offset, out_size, strides
  n, _, _, channels = x.shape
  return jax.lax.slice(x, (0, top, left, 0),
                       (n, top + (out_height - 1) * stride_h + 1, left + (out_width - 1) * stride_w + 1, channels),
                       (1, stride_h, stride_w, 1))


_cpu_workarounds = True  # see lax_convolutions()


def cpu_workarounds_active() -> bool:
  """Whether a model traced now takes the CPU workarounds (on CPU, outside `lax_convolutions()`)."""
  return _cpu_workarounds and jax.default_backend() == "cpu"


@contextlib.contextmanager
def lax_convolutions():
  """Within this context, models traced use `lax.conv_general_dilated` and `nn.max_pool` everywhere, CPU
  included.

  For FLOP counts (the model's arithmetic, not the CPU workarounds'), for exported graphs (the same on every
  machine) and for benchmarking the workarounds.
  The choice is made when a function is traced, and JAX caches traces per function: trace (jit) a new
  function inside the context, not one already traced outside it.
  """
  global _cpu_workarounds
  previous, _cpu_workarounds = _cpu_workarounds, False
  try:
    yield
  finally:
    _cpu_workarounds = previous


def make_conv(
    dtype: Dtype = jnp.float32, conv: ModuleDef = nn.Conv, kernel_init: Any = conv_kernel_init
) -> ModuleDef:
  """The convolution every block uses: no bias, He init (or `kernel_init`), float32 parameters,
  computation in `dtype`."""
  # nn.ConvTranspose has no conv_general_dilated field (and never meets the small-map case).
  small_map = {"conv_general_dilated": conv_general_dilated} if conv is nn.Conv else {}
  return functools.partial(
      conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, **small_map
  )


# The running variance BatchNorm keeps in training (`config.bn_running_variance`): flax's biased batch
# variance, or PyTorch's unbiased one.
BN_RUNNING_VARIANCES = ("biased", "unbiased")


def check_running_variance(running_variance: str) -> None:
  if running_variance not in BN_RUNNING_VARIANCES:
    raise ValueError(f"unknown bn_running_variance {running_variance!r}; choose one of "
                     f"{', '.join(BN_RUNNING_VARIANCES)}")


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` whose running variance may be PyTorch's: the unbiased batch variance.

  In training both frameworks normalise with the biased batch variance (the mean of squared deviations
  over the n = N*H*W values of a channel); they differ in the estimate they fold into the running
  variance used in evaluation: flax the biased one, PyTorch's BatchNorm2d the unbiased one, n / (n - 1)
  times it. `running_variance="unbiased"` does as PyTorch, with n counted over the whole cross-replica
  batch under `axis_name` (PyTorch's SyncBatchNorm counts the global batch too). Everything else
  (outputs, the running mean, parameters and their names, bf16 `dtype`, `axis_name`) is nn.BatchNorm's.

  Named `BatchNorm`, as flax's, so that flax's automatic names (`BatchNorm_0`, ...) and with them the
  variable tree are the same whichever variant a model uses. `__call__` is flax 0.12's
  `nn.BatchNorm.__call__` with the running-variance update scaled (tests/torch_parity_options_test.py
  holds it to nn.BatchNorm's outputs and statistics).
  """

  running_variance: str = "biased"

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask: jax.Array | None = None):
    check_running_variance(self.running_variance)
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    feature_axes = flax_normalization._canonicalize_axes(x.ndim, self.axis)  # pylint: disable=protected-access
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    feature_shape = [x.shape[ax] for ax in feature_axes]
    stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stats_dtype), feature_shape)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stats_dtype), feature_shape)

    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
      if not self.force_float32_reductions:
        mean, var = jnp.asarray(mean, self.param_dtype), jnp.asarray(var, self.param_dtype)
    else:
      axis_name = self.axis_name if not self.is_initializing() else None
      mean, var = flax_normalization._compute_stats(  # pylint: disable=protected-access
          x,
          reduction_axes,
          dtype=self.dtype,
          axis_name=axis_name,
          axis_index_groups=self.axis_index_groups,
          use_fast_variance=self.use_fast_variance,
          mask=mask,
          force_float32_reductions=self.force_float32_reductions,
      )
      if not self.is_initializing():
        running_var = var
        if self.running_variance == "unbiased":
          running_var = var * self._bessel_correction(x, reduction_axes, axis_name, mask).astype(var.dtype)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * running_var

    return flax_normalization._normalize(  # pylint: disable=protected-access
        self, x, mean, var, reduction_axes, feature_axes, self.dtype, self.param_dtype, self.epsilon,
        self.use_bias, self.use_scale, self.bias_init, self.scale_init, self.force_float32_reductions,
    )

  def _bessel_correction(self, x, reduction_axes, axis_name, mask) -> jax.Array:
    """n / (n - 1), n the number of values each channel's statistics were computed over (all replicas)."""
    if mask is None:
      n = jnp.asarray(math.prod(x.shape[a] for a in reduction_axes), jnp.float32)
    else:
      n = jnp.sum(jnp.broadcast_to(jnp.asarray(mask, bool), x.shape), axis=reduction_axes, dtype=jnp.float32)
    if axis_name is not None:
      n = jax.lax.psum(n, axis_name, axis_index_groups=self.axis_index_groups)
    # One value per channel has no unbiased variance (PyTorch refuses it); its biased variance, 0, stays.
    return n / jnp.maximum(n - 1.0, 1.0)


_two_pass_batch_variance = True  # see one_pass_batch_variance()


@contextlib.contextmanager
def one_pass_batch_variance():
  """Within this context, models traced compute BatchNorm's batch variance with flax's one-pass formula,
  mean(x^2) - mean(x)^2 (veinjax's before issue 18), rather than in two passes.

  For measuring the difference (`benchmarks.peer_gradients`, `benchmarks.speed --one_pass_variance`). As with
  `lax_convolutions`, the choice is made when a function is traced: trace a new function inside the context.
  """
  global _two_pass_batch_variance
  previous, _two_pass_batch_variance = _two_pass_batch_variance, False
  try:
    yield
  finally:
    _two_pass_batch_variance = previous


def make_norm(
    train: bool,
    dtype: Dtype = jnp.float32,
    axis_name: str | None = None,
    norm: ModuleDef = nn.BatchNorm,
    running_variance: str = "biased",
) -> ModuleDef:
  """BatchNorm in train (batch statistics, updates `batch_stats`) or eval (running statistics) mode.

  `axis_name` averages the batch statistics over that pmap / shard_map axis (cross-replica BatchNorm).
  `running_variance`: "biased" (flax's, `norm` as given) or "unbiased" (PyTorch's: `BatchNorm`, which
  then replaces a plain `nn.BatchNorm`); the variables are the same either way. The batch variance is
  computed in two passes either way (`use_fast_variance=False`; outside `one_pass_batch_variance()`).
  """
  check_running_variance(running_variance)
  variant = {}
  if running_variance != "biased":
    norm = BatchNorm if norm is nn.BatchNorm else norm
    if not (isinstance(norm, type) and issubclass(norm, BatchNorm)):
      raise ValueError(f"running_variance={running_variance!r} needs veinjax's layers.BatchNorm (or a subclass) "
                       f"as the norm, got {norm!r}")
    variant["running_variance"] = running_variance
  return functools.partial(
      norm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      axis_name=axis_name,
      # The batch variance in two passes, mean((x - mean)^2), as PyTorch computes it: flax's default one-pass
      # mean(x^2) - mean(x)^2 cancels in float32 on channels whose mean is large against their spread; with it
      # ResNet34-UNet trained behind PyTorch on the same batches (tests/batchnorm_variance_test.py).
      use_fast_variance=not _two_pass_batch_variance,
      **variant,
  )


def conv_padding(kernel_size: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch-style symmetric padding that keeps H, W for stride 1 and halves them for stride 2."""
  pad = dilation * (kernel_size // 2)
  return ((pad, pad), (pad, pad))


class ConvBNReLU(nn.Module):
  """kxk convolution (no bias) -> BatchNorm -> ReLU (ReLU skipped when `act` is False)."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  kernel_size: int = 3
  strides: int = 1
  dilation: int = 1
  act: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(
        self.features,
        (self.kernel_size, self.kernel_size),
        strides=(self.strides, self.strides),
        padding=conv_padding(self.kernel_size, self.dilation),
        kernel_dilation=(self.dilation, self.dilation),
        name="conv",
    )(x)
    x = self.norm(name="bn")(x)
    return nn.relu(x) if self.act else x


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """x2 nearest-neighbour upsampling of NHWC (PyTorch's `interpolate(scale_factor=2, mode="nearest")`)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize of NHWC to (height, width), half-pixel centres (PyTorch's align_corners=False)."""
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, height, width, c), method="bilinear").astype(x.dtype)


def check_input_size(height: int, width: int, divisor: int = SIZE_DIVISOR) -> None:
  """Raises ValueError unless height and width are positive multiples of `divisor` (32 by default).

  The message names the size and the nearest valid sizes below and above, e.g.
  "input 100x130 is not divisible by 32: use 96x128 or 128x160 (resize, pad or crop)".
  """
  height, width = int(height), int(width)
  if height > 0 and width > 0 and height % divisor == 0 and width % divisor == 0:
    return
  below = (height // divisor * divisor, width // divisor * divisor)
  above = (-(-height // divisor) * divisor, -(-width // divisor) * divisor)
  above = (max(above[0], divisor), max(above[1], divisor))
  choices = [f"{h}x{w}" for h, w in (below, above) if h > 0 and w > 0]
  choices = list(dict.fromkeys(choices))  # One choice when both round to the same size.
  raise ValueError(
      f"input {height}x{width} is not divisible by {divisor}: use {' or '.join(choices)} "
      "(resize, pad or crop)"
  )


def check_input(x: jax.Array) -> None:
  """Validates a model input: NHWC with H and W divisible by 32."""
  if x.ndim != 4:
    raise ValueError(
        f"expected an NHWC batch [N, H, W, C], got shape {tuple(x.shape)}; add a batch axis "
        "(x[None]) and/or a channel axis (x[..., None]) for grayscale"
    )
  check_input_size(x.shape[1], x.shape[2])


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (pass `variables["params"]`, not the BN running statistics)."""
  return int(sum(leaf.size for leaf in jax.tree.leaves(params)))


def segmentation_head(
    x: jax.Array, num_classes: int, kernel_size: int, dtype: Dtype, name: str = "head",
    kernel_init: Any = None,
) -> jax.Array:
  """Final conv with bias to `num_classes` logits, returned as float32 whatever the computation dtype.

  `kernel_init` None: flax's default (LeCun normal on fan-in, truncated at 2 std); the bias starts at 0.
  """
  init = {} if kernel_init is None else {"kernel_init": kernel_init}
  logits = nn.Conv(
      num_classes,
      (kernel_size, kernel_size),
      padding=conv_padding(kernel_size),
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
      **init,
  )(x)
  return logits.astype(jnp.float32)
