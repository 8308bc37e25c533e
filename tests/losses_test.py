"""veinjax.losses against independent numpy references, and the properties the training step relies on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from veinjax import losses

jax.config.update("jax_disable_most_optimizations", True)

_N, _H, _W = 3, 8, 8


def _random_batch(num_classes, seed=0, n=_N, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.standard_normal((n, _H, _W, num_classes))).astype(np.float32)
  labels = rng.integers(0, max(num_classes, 2), size=(n, _H, _W)).astype(np.int32)
  return logits, labels, np.ones(n, np.float32)


# ---- numpy references (float64, straight from the formulas) ----

def _np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _np_pixel_ce(logits, labels):
  """Per-pixel cross-entropy: sigmoid BCE for one channel, softmax CE otherwise."""
  if logits.shape[-1] == 1:
    x, t = logits[..., 0].astype(np.float64), (labels == 1).astype(np.float64)
    return np.logaddexp(0.0, x) - t * x  # softplus(x) - t * x == -[t log s(x) + (1-t) log(1-s(x))]
  log_p = _np_log_softmax(logits)
  n, h, w = labels.shape
  out = np.zeros((n, h, w))
  for i in range(n):
    for r in range(h):
      for c in range(w):
        out[i, r, c] = -log_p[i, r, c, labels[i, r, c]]
  return out


def _np_probs_and_targets(logits, labels):
  """Foreground probabilities and one-hot targets [N, H, W, K] over the K foreground classes."""
  if logits.shape[-1] == 1:
    p = 1.0 / (1.0 + np.exp(-logits[..., 0].astype(np.float64)))
    return p[..., None], (labels == 1).astype(np.float64)[..., None]
  num_classes = logits.shape[-1]
  p = np.exp(_np_log_softmax(logits))
  t = np.stack([(labels == c) for c in range(num_classes)], axis=-1).astype(np.float64)
  return p[..., 1:], t[..., 1:]


def _np_dice_per_example(logits, labels, smooth=1.0):
  p, t = _np_probs_and_targets(logits, labels)
  out = []
  for i in range(len(labels)):
    per_class = [(2 * (p[i, ..., k] * t[i, ..., k]).sum() + smooth) / (p[i, ..., k].sum() + t[i, ..., k].sum()
                                                                       + smooth) for k in range(p.shape[-1])]
    out.append(1.0 - np.mean(per_class))
  return np.array(out)


def _np_focal_pixels(logits, labels, gamma=2.0, alpha=0.25):
  ce = _np_pixel_ce(logits, labels)
  if logits.shape[-1] == 1:
    p = 1.0 / (1.0 + np.exp(-logits[..., 0].astype(np.float64)))
    t = (labels == 1).astype(np.float64)
    p_t = np.where(t == 1, p, 1 - p)
    return np.where(t == 1, alpha, 1 - alpha) * (1 - p_t) ** gamma * ce
  return (1 - np.exp(-ce)) ** gamma * ce


def _np_loss(name, logits, labels, weights):
  per_example = {
      "bce": lambda: _np_pixel_ce(logits, labels).mean(axis=(1, 2)),
      "dice": lambda: _np_dice_per_example(logits, labels),
      "bce_dice": lambda: _np_pixel_ce(logits, labels).mean(axis=(1, 2)) + _np_dice_per_example(logits, labels),
      "focal": lambda: _np_focal_pixels(logits, labels).mean(axis=(1, 2)),
  }[name]()
  return (per_example * weights).sum() / weights.sum()


# ---- tests ----

@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_matches_numpy_reference(name, num_classes):
  logits, labels, _ = _random_batch(num_classes, seed=1)
  weights = np.array([1.0, 0.0, 1.0], np.float32)  # the middle example is padding
  got = jax.jit(losses.get_loss_fn(name, num_classes))(logits, labels, weights)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), _np_loss(name, logits, labels, weights), rtol=1e-5, atol=1e-6)


def test_bce_is_the_papers_binary_cross_entropy_on_a_known_value():
  # One pixel, logit 0 -> p = 0.5 -> BCE = log 2 whatever the label; logit log(3) on a vein pixel -> -log(3/4).
  fn = losses.get_loss_fn("bce", 1)
  weights = np.ones(1, np.float32)
  np.testing.assert_allclose(fn(np.zeros((1, 1, 1, 1)), np.ones((1, 1, 1), np.int32), weights), np.log(2),
                             rtol=1e-6)
  np.testing.assert_allclose(fn(np.full((1, 1, 1, 1), np.log(3.0)), np.ones((1, 1, 1), np.int32), weights),
                             -np.log(0.75), rtol=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_perfect_logits_give_near_zero_loss(name, num_classes):
  _, labels, weights = _random_batch(num_classes, seed=2)
  if num_classes == 1:
    logits = np.where(labels == 1, 20.0, -20.0)[..., None].astype(np.float32)
  else:
    logits = 40.0 * np.eye(num_classes, dtype=np.float32)[labels] - 20.0
  loss = float(losses.get_loss_fn(name, num_classes)(logits, labels, weights))
  assert 0.0 <= loss < 1e-6, loss
  # ... and confidently wrong logits give a large one.
  wrong = float(losses.get_loss_fn(name, num_classes)(-logits, labels, weights))
  assert wrong > 0.2, wrong


@pytest.mark.parametrize("num_classes", [1, 3])
def test_dice_loss_is_in_unit_interval(num_classes):
  fn = jax.jit(losses.get_loss_fn("dice", num_classes))
  for seed in range(5):
    logits, labels, weights = _random_batch(num_classes, seed=seed, scale=10.0 * seed + 0.1)
    loss = float(fn(logits, labels, weights))
    assert 0.0 <= loss <= 1.0, (seed, loss)


def test_dice_is_per_image_and_smooth_on_empty_images():
  # An image with no vein and a prediction of no vein scores Dice 1 (loss ~0), not 0/0.
  fn = losses.get_loss_fn("dice", 1)
  labels = np.zeros((1, _H, _W), np.int32)
  loss = float(fn(np.full((1, _H, _W, 1), -30.0, np.float32), labels, np.ones(1, np.float32)))
  assert np.isfinite(loss) and loss < 1e-6


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_padding_examples_do_not_change_the_loss(name, num_classes):
  fn = jax.jit(losses.get_loss_fn(name, num_classes))
  logits, labels, weights = _random_batch(num_classes, seed=3)
  pad_logits, pad_labels, _ = _random_batch(num_classes, seed=4, n=2, scale=50.0)
  padded = fn(np.concatenate([logits, pad_logits]), np.concatenate([labels, pad_labels]),
              np.concatenate([weights, np.zeros(2, np.float32)]))
  np.testing.assert_allclose(float(padded), float(fn(logits, labels, weights)), rtol=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_gradients_are_finite_even_for_extreme_logits(name, num_classes):
  fn = losses.get_loss_fn(name, num_classes)
  logits, labels, _ = _random_batch(num_classes, seed=5, scale=1e3)  # saturated sigmoid/softmax
  weights = np.array([1.0, 1.0, 0.0], np.float32)
  grad = jax.jit(jax.grad(fn))(logits, labels, weights)
  assert grad.dtype == jnp.float32
  assert np.all(np.isfinite(grad))
  assert np.all(grad[2] == 0)  # the padding example gets no gradient
  small_logits, _, _ = _random_batch(num_classes, seed=5, scale=1.0)
  assert np.abs(jax.grad(fn)(small_logits, labels, weights)).sum() > 0


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_bf16_logits_give_a_float32_loss(name):
  logits, labels, weights = _random_batch(1, seed=6)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  fn = losses.get_loss_fn(name, 1)
  loss = jax.jit(fn)(bf16, labels, weights)
  assert loss.dtype == jnp.float32
  # Computed in float32 from the bf16 values: equal to the float32 loss of the same (rounded) logits.
  np.testing.assert_allclose(float(loss), float(fn(np.asarray(bf16, np.float32), labels, weights)), rtol=1e-6)
  assert jax.grad(lambda x: fn(x, labels, weights))(bf16).dtype == jnp.bfloat16


def test_unknown_loss_names_the_flag_and_the_choices():
  with pytest.raises(ValueError, match="--config.loss") as info:
    losses.get_loss_fn("cross_entropy", 1)
  for name in losses.LOSS_NAMES:
    assert name in str(info.value)


def test_bad_shapes_are_clear_errors():
  logits, labels, weights = _random_batch(1)
  with pytest.raises(ValueError, match="num_classes"):
    losses.get_loss_fn("bce", 3)(logits, labels, weights)
  with pytest.raises(ValueError, match="labels"):
    losses.get_loss_fn("bce", 1)(logits, labels[:, :4], weights)
  with pytest.raises(ValueError, match="weights"):
    losses.get_loss_fn("bce", 1)(logits, labels, weights[:2])
  with pytest.raises(ValueError, match="num_classes"):
    losses.get_loss_fn("bce", 0)


# ---- ignored pixels (IGNORE_LABEL) ----

_IGNORE = losses.IGNORE_LABEL


def _with_ignored(labels, seed, fraction=0.3):
  rng = np.random.default_rng(seed)
  return np.where(rng.random(labels.shape) < fraction, _IGNORE, labels).astype(labels.dtype)


def _np_loss_with_ignored(name, logits, labels, weights):
  """The numpy reference over the kept (non-ignored) pixels only: per-pixel means over them, Dice sums."""
  keep = labels != _IGNORE
  safe = np.where(keep, labels, 0)
  count = np.maximum(keep.sum(axis=(1, 2)), 1)
  pixel_mean = lambda per_pixel: np.where(keep, per_pixel, 0.0).sum(axis=(1, 2)) / count

  def dice():
    p, t = _np_probs_and_targets(logits, safe)
    p, t = p * keep[..., None], t * keep[..., None]
    inter, denom = (p * t).sum(axis=(1, 2)), p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean(axis=-1)

  per_example = {
      "bce": lambda: pixel_mean(_np_pixel_ce(logits, safe)),
      "dice": dice,
      "bce_dice": lambda: pixel_mean(_np_pixel_ce(logits, safe)) + dice(),
      "focal": lambda: pixel_mean(_np_focal_pixels(logits, safe)),
  }[name]()
  return (per_example * weights).sum() / weights.sum()


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_ignored_pixels_count_in_no_term(name, num_classes):
  """Sigmoid (one logit) and softmax (3 classes) paths: the loss is the reference over the kept pixels."""
  logits, labels, _ = _random_batch(num_classes, seed=7)
  labels = _with_ignored(labels, seed=8)
  weights = np.array([1.0, 1.0, 0.0], np.float32)
  got = jax.jit(losses.get_loss_fn(name, num_classes))(logits, labels, weights)
  np.testing.assert_allclose(float(got), _np_loss_with_ignored(name, logits, labels, weights), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_ignored_pixels_get_no_gradient_and_their_logits_do_not_matter(name, num_classes):
  fn = losses.get_loss_fn(name, num_classes)
  logits, labels, weights = _random_batch(num_classes, seed=9)
  labels = _with_ignored(labels, seed=10)
  ignored = labels == _IGNORE
  wild = np.where(ignored[..., None], np.float32(1e4) * np.sign(logits), logits).astype(np.float32)
  value, grad = jax.jit(jax.value_and_grad(fn))(logits, labels, weights)
  wild_value, wild_grad = jax.jit(jax.value_and_grad(fn))(wild, labels, weights)
  assert float(value) == float(wild_value)  # exactly: ignored pixels are selected away, not multiplied by 0
  for g in (grad, wild_grad):
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[ignored] == 0)
  np.testing.assert_array_equal(np.asarray(grad)[~ignored], np.asarray(wild_grad)[~ignored])
  assert np.abs(np.asarray(grad)[~ignored]).sum() > 0


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_an_all_ignored_image_has_loss_zero(name, num_classes):
  fn = losses.get_loss_fn(name, num_classes)
  logits, labels, weights = _random_batch(num_classes, seed=11)
  labels[1] = _IGNORE
  per_image = [float(fn(logits[i:i + 1], labels[i:i + 1], weights[:1])) for i in range(3)]
  assert per_image[1] == 0.0
  np.testing.assert_allclose(float(fn(logits, labels, weights)), np.mean(per_image), rtol=1e-6)
  assert np.all(np.isfinite(jax.grad(fn)(logits, labels, weights)))


# A verbatim copy of the loss before ignored pixels existed (veinjax/losses.py at f88844d): with no ignored
# pixel, the loss must give exactly its value and gradient, so runs without ignore labels are unchanged.

def _old_loss_fn(name, num_classes):
  import optax  # pylint: disable=g-import-not-at-top

  def weighted_mean(per_example, weights):
    weights = weights.astype(jnp.float32)
    total = jnp.sum(jnp.where(weights > 0, per_example * weights, 0.0))
    return total / jnp.maximum(jnp.sum(weights), 1e-12)

  def binary_terms(logits, labels):
    return logits[..., 0], (labels == 1).astype(jnp.float32)

  def cross_entropy(logits, labels):
    if num_classes == 1:
      return optax.sigmoid_binary_cross_entropy(*binary_terms(logits, labels))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))

  def focal(logits, labels):
    ce = cross_entropy(logits, labels)
    if num_classes == 1:
      x, t = binary_terms(logits, labels)
      p = jax.nn.sigmoid(x)
      p_t = t * p + (1.0 - t) * (1.0 - p)
      alpha_t = t * 0.25 + (1.0 - t) * (1.0 - 0.25)
      return alpha_t * (1.0 - p_t) ** 2.0 * ce
    p_t = jnp.exp(-ce)
    return (1.0 - p_t) ** 2.0 * ce

  def dice_per_example(logits, labels):
    if num_classes == 1:
      x, t = binary_terms(logits, labels)
      probs, targets = jax.nn.sigmoid(x)[..., None], t[..., None]
    else:
      probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
      targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)[..., 1:]
    intersection = jnp.sum(probs * targets, axis=(1, 2))
    denominator = jnp.sum(probs, axis=(1, 2)) + jnp.sum(targets, axis=(1, 2))
    dice = (2.0 * intersection + 1.0) / (denominator + 1.0)
    return 1.0 - jnp.mean(dice, axis=-1)

  def loss_fn(logits, labels, weights):
    logits = jnp.asarray(logits).astype(jnp.float32)
    labels, weights = jnp.asarray(labels), jnp.asarray(weights)
    per_example = jnp.zeros(logits.shape[:1], jnp.float32)
    if name in ("bce", "bce_dice"):
      per_example += jnp.mean(cross_entropy(logits, labels), axis=(1, 2))
    if name in ("dice", "bce_dice"):
      per_example += dice_per_example(logits, labels)
    if name == "focal":
      per_example += jnp.mean(focal(logits, labels), axis=(1, 2))
    return weighted_mean(per_example, weights)

  return loss_fn


def _plain_batches(num_classes):
  for seed, (h, w), dtype in [(12, (_H, _W), np.int32), (13, (37, 19), np.uint8), (14, (64, 64), np.int32)]:
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.standard_normal((4, h, w, num_classes))).astype(np.float32)
    labels = rng.integers(0, max(num_classes, 2), size=(4, h, w)).astype(dtype)
    yield logits, labels, np.array([1.0, 1.0, 0.0, 1.0], np.float32)


@pytest.mark.parametrize("optimize", [False, True], ids=["tests_xla", "full_xla"])
@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_plain_loss_is_the_old_formula_op_for_op(name, num_classes, optimize):
  """ignore_label=False (what the steps build for data without ignore labels: the phantoms, the quickstart)
  traces to the same jaxpr as the old loss, so value and gradient are bit-identical, jitted or not."""
  # The suite compiles with most XLA optimisations off (conftest); training runs with them on: check both.
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", not optimize)
  try:
    new = jax.value_and_grad(losses.get_loss_fn(name, num_classes, ignore_label=False))
    old = jax.value_and_grad(_old_loss_fn(name, num_classes))
    for logits, labels, weights in _plain_batches(num_classes):
      assert str(jax.make_jaxpr(new)(logits, labels, weights)) == str(jax.make_jaxpr(old)(logits, labels, weights))
      for transform in (lambda f: f, jax.jit):
        got, want = transform(new)(logits, labels, weights), transform(old)(logits, labels, weights)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_ignore_aware_loss_without_ignored_pixels_is_the_old_formula_to_rounding(name, num_classes):
  new = jax.jit(jax.value_and_grad(losses.get_loss_fn(name, num_classes)))
  old = jax.jit(jax.value_and_grad(_old_loss_fn(name, num_classes)))
  for logits, labels, weights in _plain_batches(num_classes):
    (value, grad), (want_value, want_grad) = new(logits, labels, weights), old(logits, labels, weights)
    np.testing.assert_allclose(float(value), float(want_value), rtol=2e-7, atol=0)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-6, atol=1e-12)
