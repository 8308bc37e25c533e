"""Train-time augmentation of one (image, mask) pair with stateless TF random ops.

Every random draw comes from `tf.random.stateless_*` with a seed derived from the example's own seed, so the
result depends only on (seed, config): the same inside `tf.data` (any number of parallel map threads) as
eagerly, on every process and after a resume.

Geometric parts (rotation, flips, shift, scale, projective warp) are composed into ONE 3x3 projective matrix
and applied once with `ImageProjectiveTransformV3`: bilinear for the image, nearest for the mask, so image
and mask move identically, the image is interpolated once (not blurred once per part), and the mask stays
integer labels: each output pixel takes the label of one input pixel, so an ignored pixel
(`veinjax.labels.IGNORE_LABEL`) stays ignored and never becomes a class, nor a class ignored. Pixels the
transform brings in from outside the frame are background (0) in the mask, black (0) in the image.
Intensity parts (gamma, contrast, brightness, speckle) touch only the image, which is clipped back to [0, 1].

Each part draws from its own sub-seed (a fixed slot), so switching one part on or off does not change what
the others draw.

Per-example parameters (angles, scales, the transform matrix, gamma, ...) are computed in float64 and only
then cast to float32. TF's graph optimiser (Grappler) reorders constant arithmetic inside tf.data functions,
which changes float32 rounding; in float64 that change vanishes in the cast, so eager and tf.data results are
bit-identical.
"""

import math
from typing import Any

import tensorflow as tf

# Fixed sub-seed slot per random part (see the module docstring).
_SLOTS = ("rotation", "hflip", "vflip", "shift", "scale", "projective", "gamma", "contrast", "brightness",
          "speckle")


def check_config(aug_config: Any) -> None:
  """Raises ValueError naming the --config.augment field whose value cannot work."""
  def bad(field, value, why):
    raise ValueError(f"--config.augment.{field}={value!r}: {why}.")

  for field in ("rotation_degrees", "shift_fraction", "projective", "brightness", "speckle"):
    if aug_config[field] < 0:
      bad(field, aug_config[field], "must be >= 0 (0 switches it off)")
  for field in ("contrast", "gamma"):
    if not 0 <= aug_config[field] < 1:
      bad(field, aug_config[field], "must be in [0, 1): the factor is drawn from [1 - v, 1 + v]")
  scale_range = tuple(aug_config.scale_range)
  if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
    bad("scale_range", scale_range, "must be (low, high) with 0 < low <= high; (1.0, 1.0) switches it off")
  if aug_config.projective >= 0.25:
    bad("projective", aug_config.projective, "must be < 0.25 (from 0.25 the warped frame can fold over)")


def _geometric_parts_on(aug_config: Any) -> bool:
  lo, hi = aug_config.scale_range
  return bool(aug_config.rotation_degrees or aug_config.hflip or aug_config.vflip or
              aug_config.shift_fraction or (lo, hi) != (1.0, 1.0) or aug_config.projective)


def _uniform(seed: tf.Tensor, low: float, high: float, shape=()) -> tf.Tensor:
  """A float64 parameter (see the module docstring for why float64)."""
  return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high, dtype=tf.float64)


def _coin(seed: tf.Tensor) -> tf.Tensor:
  """+-1 with probability 1/2 each (float64); -1 means "flip"."""
  return tf.where(_uniform(seed, 0.0, 1.0) < 0.5, tf.constant(-1.0, tf.float64), 1.0)


def _homography(src: tf.Tensor, dst: tf.Tensor) -> tf.Tensor:
  """The 3x3 projective matrix mapping four points `src` [4, 2] onto `dst` [4, 2] (x, y order)."""
  x, y = src[:, 0], src[:, 1]
  u, v = dst[:, 0], dst[:, 1]
  zeros, ones = tf.zeros_like(x), tf.ones_like(x)
  rows_u = tf.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], axis=1)
  rows_v = tf.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], axis=1)
  a = tf.concat([rows_u, rows_v], axis=0)
  b = tf.concat([u, v], axis=0)[:, None]
  h = tf.linalg.solve(a, b)[:, 0]
  return tf.reshape(tf.concat([h, tf.ones([1], h.dtype)], axis=0), [3, 3])


def _forward_matrix(seeds: dict[str, tf.Tensor], aug_config: Any, height: tf.Tensor,
                    width: tf.Tensor) -> tf.Tensor:
  """The random 3x3 float64 map from input to output pixel coordinates (x = column, y = row)."""
  # Pixel centres sit at integer coordinates, so the centre is (size - 1) / 2: a flip about it maps pixel
  # x exactly onto pixel width - 1 - x.
  cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
  to_centre = tf.stack([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
  from_centre = tf.stack([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])

  # Built in centred coordinates, applied right to left: flip, scale, rotate, projective warp, shift.
  m = tf.eye(3, dtype=tf.float64)
  one = tf.constant(1.0, tf.float64)
  fx = _coin(seeds["hflip"]) if aug_config.hflip else one
  fy = _coin(seeds["vflip"]) if aug_config.vflip else one
  if aug_config.hflip or aug_config.vflip:
    m = tf.linalg.diag(tf.stack([fx, fy, 1.0])) @ m
  lo, hi = aug_config.scale_range
  if (lo, hi) != (1.0, 1.0):
    s = _uniform(seeds["scale"], lo, hi)
    m = tf.linalg.diag(tf.stack([s, s, 1.0])) @ m
  if aug_config.rotation_degrees:
    r = aug_config.rotation_degrees * math.pi / 180.0
    theta = _uniform(seeds["rotation"], -r, r)
    c, s = tf.cos(theta), tf.sin(theta)
    m = tf.stack([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ m
  if aug_config.projective:
    # Each corner moves independently by up to `projective` x the image size along each axis; the warp is
    # the homography through the moved corners. In coordinates normalised to [-1, 1] the size is 2.
    corners = tf.constant([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], tf.float64)
    moved = corners + _uniform(seeds["projective"], -2.0 * aug_config.projective,
                               2.0 * aug_config.projective, shape=(4, 2))
    half_x, half_y = tf.maximum(cx, 0.5), tf.maximum(cy, 0.5)  # centred pixels -> [-1, 1]
    normalise = tf.linalg.diag(tf.stack([1.0 / half_x, 1.0 / half_y, 1.0]))
    denormalise = tf.linalg.diag(tf.stack([half_x, half_y, 1.0]))
    m = denormalise @ _homography(corners, moved) @ normalise @ m
  if aug_config.shift_fraction:
    f = aug_config.shift_fraction
    t = _uniform(seeds["shift"], -f, f, shape=(2,)) * tf.stack([width, height])
    m = tf.stack([[1.0, 0.0, t[0]], [0.0, 1.0, t[1]], [0.0, 0.0, 1.0]]) @ m
  return from_centre @ m @ to_centre


def _warp(x: tf.Tensor, transform: tf.Tensor, interpolation: str) -> tf.Tensor:
  """Applies one flattened output->input transform [8] to x [H, W, C]."""
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=transform[None], output_shape=tf.shape(x)[:2],
      fill_value=tf.constant(0.0, tf.float32), interpolation=interpolation, fill_mode="CONSTANT")
  return out[0]


def _intensity(image: tf.Tensor, seeds: dict[str, tf.Tensor], aug_config: Any) -> tf.Tensor:
  """Gamma, contrast, brightness and speckle on an image in [0, 1]; the result is clipped to [0, 1]."""
  def scalar(part, low, high):
    return tf.cast(_uniform(seeds[part], low, high), tf.float32)

  if aug_config.gamma:
    g = scalar("gamma", 1.0 - aug_config.gamma, 1.0 + aug_config.gamma)
    # x ** g as exp(g log x): several times faster than tf.pow on CPU; log(0) = -inf gives exp(-inf) = 0.
    image = tf.exp(g * tf.math.log(tf.clip_by_value(image, 0.0, 1.0)))
  if aug_config.contrast or aug_config.brightness:
    # Contrast and brightness together are one affine map, image * scale + offset: one pass over the pixels,
    # and no chain of additions for Grappler to reassociate (see the module docstring).
    scale, offset = tf.constant(1.0), tf.constant(0.0)
    if aug_config.contrast:
      # About the image mean (as tf.image.adjust_contrast), so contrast does not also change brightness.
      scale = scalar("contrast", 1.0 - aug_config.contrast, 1.0 + aug_config.contrast)
      offset = tf.reduce_mean(image, axis=(0, 1), keepdims=True) * (1.0 - scale)
    if aug_config.brightness:
      offset = offset + scalar("brightness", -aug_config.brightness, aug_config.brightness)
    image = image * scale + offset
  if aug_config.speckle:
    # Multiplicative, as ultrasound speckle is: zero stays zero, bright tissue gets the most noise. Zero-mean
    # uniform noise with std `speckle` (half-width sqrt(3) std): a third of the CPU time of a normal draw,
    # which matters at 512x512 on a few cores; the distribution's shape hardly matters for augmentation.
    # The factor 1 + U(-w, w) is written as u * 2w + (1 - w) with u in [0, 1): one multiply-add whose
    # constants Grappler has nothing to reorder (see the module docstring).
    half_width = math.sqrt(3.0) * aug_config.speckle
    u = tf.random.stateless_uniform(tf.shape(image), seed=seeds["speckle"], dtype=tf.float32)
    image = image * (u * (2.0 * half_width) + (1.0 - half_width))
  return tf.clip_by_value(image, 0.0, 1.0)


def augment_example(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor,
                    aug_config: Any) -> tuple[tf.Tensor, tf.Tensor]:
  """Randomly augments one example; identical eagerly and inside `tf.data` for the same seed.

  Args:
    image: float32 [S, S, C] (any H, W works) in [0, 1].
    mask: int32 [S, S] class indices.
    seed: [2] int32 (or int64) stateless seed, e.g. derived from (config.seed, epoch, example index).
    aug_config: `config.augment` (enabled, rotation_degrees, hflip, vflip, shift_fraction, scale_range,
      projective, brightness, contrast, gamma, speckle); a part with a zero / False / (1, 1) value is off.

  Returns:
    (image float32 [S, S, C] in [0, 1], mask int32 [S, S] with labels from the input mask, ignored pixels
    included, or 0 where the geometric transform brought in pixels from outside the frame).

  Raises:
    ValueError: an augmentation setting out of range (names its --config.augment field).
  """
  image = tf.convert_to_tensor(image, tf.float32)
  mask = tf.convert_to_tensor(mask, tf.int32)
  if not aug_config.enabled:
    return image, mask
  check_config(aug_config)
  seeds = dict(zip(_SLOTS, tf.unstack(tf.random.experimental.stateless_split(seed, num=len(_SLOTS)))))
  if _geometric_parts_on(aug_config):
    shape = tf.cast(tf.shape(image), tf.float64)
    forward = _forward_matrix(seeds, aug_config, shape[0], shape[1])
    # The op wants the output->input map, flattened row-major and normalised so that its [2, 2] entry is 1.
    inverse = tf.linalg.inv(forward)
    transform = tf.cast(tf.reshape(inverse / inverse[2, 2], [9])[:8], tf.float32)
    image = _warp(image, transform, "BILINEAR")
    mask = _warp(mask[..., None], transform, "NEAREST")[..., 0]
  image = _intensity(image, seeds, aug_config)
  return image, mask
