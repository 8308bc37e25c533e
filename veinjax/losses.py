"""Segmentation losses: pure functions of (logits, labels, weights), always computed in float32.

Every loss has the signature `loss_fn(logits, labels, weights) -> scalar float32`:

- `logits`: [N, H, W, C], any float dtype (bf16 under `config.half_precision`); cast to float32 first, so the
  loss and its gradient are float32 whatever the computation dtype.
- `labels`: integer [N, H, W] class indices, 0 = background. With one logit (C == 1) the single foreground
  class is 1. Labels must lie in [0, max(C, 2)) or be `IGNORE_LABEL` (255, `veinjax.labels`); the input
  pipeline rejects anything else, because a traced function cannot raise on values.
- `weights`: float32 [N], 1 for a real example and 0 for padding. The loss is the weighted mean of the
  per-example losses, and each per-example loss is a mean over its pixels (every image has H * W pixels), so
  it is the mean over the real pixels and padding never contributes.

Ignored pixels (label `IGNORE_LABEL`, with `get_loss_fn(..., ignore_label=True)`, the default) count in no
term: the per-pixel losses (cross-entropy, focal) are averaged over the image's other pixels, and Dice sums
neither their probabilities nor their targets. Their logits get no gradient. An image whose pixels are all
ignored has loss 0 (a mean over no pixel is taken as 0, and its Dice is the smoothed 1). Without ignored
pixels the value equals the plain formula's to float rounding, not bit for bit: XLA divides by a constant
H * W as a multiplication by its reciprocal, and any extra op changes how it fuses (and rounds) the
gradient. `ignore_label=False` is the plain formula itself, op for op, for data that cannot hold the ignore
label: `veinjax.steps` picks it by `veinjax.labels.may_have_ignored_pixels(config)`, so a run on such data
(the phantoms, the quickstart) computes exactly what it computed before ignored pixels existed.

The names (`config.loss`):

- `bce`: with one logit, sigmoid binary cross-entropy (the paper's loss). With C > 1 logits it means softmax
  cross-entropy over the C classes (the multi-class generalisation of the same loss).
- `dice`: 1 - soft Dice of the foreground, per image, then averaged over the real images (per image, so an
  image's loss does not depend on what else is in its batch). Soft Dice of one image and class is
  (2 * sum(p * t) + s) / (sum(p) + sum(t) + s) with `DICE_SMOOTH` = s = 1 pixel, so an image without the
  structure and a prediction without it scores Dice 1 (loss 0) instead of 0/0. p is the sigmoid (one logit) or
  softmax (C > 1) probability; with C > 1 the Dice is averaged over the foreground classes 1..C-1.
- `bce_dice`: `bce` + `dice`, unweighted.
- `focal`: focal loss (Lin et al., 2017) with `FOCAL_GAMMA` = 2. With one logit it is the sigmoid focal loss
  with the paper's class balance `FOCAL_ALPHA` = 0.25 on the foreground (0.75 on background). With C > 1 it
  is the softmax focal loss -(1 - p_y)^gamma * log(p_y) without alpha (a scalar alpha has no meaning over
  more than two classes).
"""

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from veinjax import metrics as metrics_lib
from veinjax.labels import IGNORE_LABEL

LOSS_NAMES = ("bce", "dice", "bce_dice", "focal")

DICE_SMOOTH = 1.0
FOCAL_GAMMA = 2.0
FOCAL_ALPHA = 0.25

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _check_shapes(logits, labels, weights, num_classes: int) -> None:
  """Static (trace-time) shape checks; a wrong shape here is a wiring bug, so say which array is wrong."""
  if logits.ndim != 4:
    raise ValueError(f"logits must be [N, H, W, C]; got shape {logits.shape}.")
  if logits.shape[-1] != num_classes:
    raise ValueError(
        f"logits have {logits.shape[-1]} channels but the loss was built for num_classes={num_classes}; "
        "the model and the loss must both use --config.num_classes.")
  if labels.shape != logits.shape[:3]:
    raise ValueError(f"labels must be [N, H, W] = {logits.shape[:3]} to match the logits; got {labels.shape}.")
  if weights.shape != logits.shape[:1]:
    raise ValueError(f"weights must be [N] = {logits.shape[:1]} (one per example); got {weights.shape}.")


def _weighted_mean(per_example: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean of per-example losses over the real (weight > 0) examples; 0 when there are none."""
  weights = weights.astype(jnp.float32)
  # `where` rather than a product, so that padding logits can never leak a NaN into the value.
  total = jnp.sum(jnp.where(weights > 0, per_example * weights, 0.0))
  return total / jnp.maximum(jnp.sum(weights), 1e-12)


def _binary_terms(logits, labels):
  """Foreground logit and 0/1 float target of a one-logit model."""
  return logits[..., 0], (labels == 1).astype(jnp.float32)


def _kept_pixels(labels):
  """(bool [N, H, W]: pixels that count, labels with ignored pixels set to 0 so every term stays finite)."""
  keep = labels != IGNORE_LABEL
  return keep, jnp.where(keep, labels, 0)


def _pixel_mean(per_pixel: jax.Array, keep: jax.Array) -> jax.Array:
  """Per-example mean [N] of a per-pixel loss over the kept pixels (0 for an image with none).

  `where` rather than a product, so an ignored pixel can leak no NaN; with every pixel kept this is
  the plain mean up to rounding (see the module docstring).
  """
  total = jnp.sum(jnp.where(keep, per_pixel, 0.0), axis=(1, 2))
  count = jnp.sum(keep, axis=(1, 2), dtype=jnp.int32).astype(jnp.float32)  # exact up to 2**24 pixels
  return total / jnp.maximum(count, 1.0)


def _cross_entropy(logits, labels, num_classes: int) -> jax.Array:
  """Per-pixel cross-entropy [N, H, W]: sigmoid BCE for one logit, softmax CE otherwise."""
  if num_classes == 1:
    # optax computes -(t log s(x) + (1 - t) log s(-x)) with log-sigmoid: large |x| neither overflows nor
    # gives log(0).
    return optax.sigmoid_binary_cross_entropy(*_binary_terms(logits, labels))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))


def _focal(logits, labels, num_classes: int) -> jax.Array:
  """Per-pixel focal loss [N, H, W] (see the module docstring for gamma and alpha)."""
  ce = _cross_entropy(logits, labels, num_classes)
  if num_classes == 1:
    x, t = _binary_terms(logits, labels)
    p = jax.nn.sigmoid(x)
    p_t = t * p + (1.0 - t) * (1.0 - p)
    alpha_t = t * FOCAL_ALPHA + (1.0 - t) * (1.0 - FOCAL_ALPHA)
    return alpha_t * (1.0 - p_t) ** FOCAL_GAMMA * ce
  p_t = jnp.exp(-ce)  # ce = -log p_y
  return (1.0 - p_t) ** FOCAL_GAMMA * ce


def _dice_per_example(logits, labels, num_classes: int, keep: Optional[jax.Array] = None) -> jax.Array:
  """Per-example soft Dice loss [N]: 1 - mean over foreground classes of the image's soft Dice.

  With `keep` (see `_kept_pixels`; `labels` then hold no ignore label), pixels where it is False add nothing.
  """
  if num_classes == 1:
    x, t = _binary_terms(logits, labels)
    probs, targets = jax.nn.sigmoid(x)[..., None], t[..., None]
  else:
    probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)[..., 1:]
  if keep is not None:
    probs, targets = jnp.where(keep[..., None], probs, 0.0), jnp.where(keep[..., None], targets, 0.0)
  intersection = jnp.sum(probs * targets, axis=(1, 2))  # [N, foreground classes]
  denominator = jnp.sum(probs, axis=(1, 2)) + jnp.sum(targets, axis=(1, 2))
  dice = (2.0 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
  return 1.0 - jnp.mean(dice, axis=-1)


def get_loss_fn(name: str, num_classes: int, ignore_label: bool = True) -> LossFn:
  """Returns `loss_fn(logits, labels, weights) -> float32 scalar` for `config.loss` = `name`.

  `ignore_label`: pixels labelled `IGNORE_LABEL` count in no term (see the module docstring). False builds
  the plain formula, for labels that never hold it (an ignore label would then be a wrong class).
  """
  if name not in LOSS_NAMES:
    raise ValueError(f"Unknown loss {name!r} (--config.loss); choose one of {', '.join(LOSS_NAMES)}.")
  metrics_lib.num_labels_for_classes(num_classes)  # validates num_classes

  def loss_fn(logits, labels, weights):
    logits = jnp.asarray(logits).astype(jnp.float32)
    labels, weights = jnp.asarray(labels), jnp.asarray(weights)
    _check_shapes(logits, labels, weights, num_classes)
    if ignore_label:
      keep, labels = _kept_pixels(labels)
      pixel_mean = functools.partial(_pixel_mean, keep=keep)
    else:  # the plain formula, op for op (see the module docstring)
      keep, pixel_mean = None, functools.partial(jnp.mean, axis=(1, 2))
    per_example = jnp.zeros(logits.shape[:1], jnp.float32)
    if name in ("bce", "bce_dice"):
      per_example += pixel_mean(_cross_entropy(logits, labels, num_classes))
    if name in ("dice", "bce_dice"):
      per_example += _dice_per_example(logits, labels, num_classes, keep)
    if name == "focal":
      per_example += pixel_mean(_focal(logits, labels, num_classes))
    return _weighted_mean(per_example, weights)

  loss_fn.__name__ = f"{name}_loss"
  return loss_fn
