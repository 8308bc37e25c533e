"""The ignore label end to end: the constant, resizing and augmentation keep it, the pipeline lets it through
only where the source may have it, the train and eval steps (one sigmoid logit and softmax) honour it."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

from veinjax import labels
from veinjax import losses
from veinjax import metrics
from veinjax import steps
from veinjax import viz
from veinjax.data import augment
from veinjax.data import pipeline

from conftest import augment_config, load_config

IGNORE = labels.IGNORE_LABEL


def test_one_reserved_value_shared_everywhere():
  from veinjax.data import folder, labelme  # pylint: disable=g-import-not-at-top
  assert IGNORE == 255 and labels.MAX_CLASS == 254 and labels.MAX_LABELS == 255
  assert metrics.IGNORE_LABEL is losses.IGNORE_LABEL is folder.IGNORE_LABEL is labelme.IGNORE_LABEL is IGNORE
  assert labels.parse_class("ignore", "--f", "x") == labels.parse_class(" Ignore ", "--f", "x") == IGNORE
  assert labels.parse_class(3, "--f", "x") == labels.parse_class("3", "--f", "x") == labels.parse_class(
      np.int64(3), "--f", "x") == 3
  for bad in (255, -1, True, 2.0, "vein", None):
    with pytest.raises(ValueError, match="--f maps x to"):
      labels.parse_class(bad, "--f", "x")


def test_only_the_folder_source_may_have_ignored_pixels():
  config = load_config("default")
  assert not labels.may_have_ignored_pixels(config)  # vein_phantom: the quickstart's plain loss
  config.dataset.name = "folder"
  assert labels.may_have_ignored_pixels(config)


def test_viz_shows_ignored_pixels_gray():
  label = np.array([[0, 1], [2, IGNORE]])
  colors = viz.colorize(label)
  np.testing.assert_array_equal(colors[1, 1], viz.IGNORE_COLOR)
  np.testing.assert_array_equal(colors[:1], viz.PALETTE[[0, 1]][None])
  assert colors.dtype == np.uint8


# ---- Resizing and augmentation keep ignored pixels ignored ----


def _mask_with_ignore(size=(40, 56)):
  h, w = size
  ys, xs = np.mgrid[0:h, 0:w]
  mask = np.zeros(size, np.uint8)
  mask[((ys - 0.45 * h) / (0.2 * h)) ** 2 + ((xs - 0.4 * w) / (0.2 * w)) ** 2 < 1] = 1
  mask[int(0.6 * h):int(0.85 * h), int(0.55 * w):int(0.8 * w)] = IGNORE
  mask[int(0.1 * h):int(0.3 * h), int(0.3 * w):int(0.5 * w)] = IGNORE  # touching the vein
  return mask


@pytest.mark.parametrize("method", pipeline.RESIZE_METHODS)
def test_resizing_keeps_ignored_pixels_exactly_where_nearest_puts_them(method):
  mask = _mask_with_ignore()
  image = np.zeros(mask.shape + (1,), np.uint8)
  _, resized = pipeline.resize_example(image, mask, 32, method)
  _, indicator = pipeline.resize_example(image, (mask == IGNORE).astype(np.uint8), 32, method)
  resized = resized.numpy()
  assert resized.dtype == np.uint8 and set(np.unique(resized)) <= {0, 1, IGNORE}
  np.testing.assert_array_equal(resized == IGNORE, indicator.numpy() == 1)  # neither grows nor shrinks
  assert (resized == IGNORE).any()


def test_augmentation_moves_ignored_pixels_with_the_mask_and_brings_in_background():
  mask = _mask_with_ignore((48, 48)).astype(np.int32)
  image = np.zeros((48, 48, 1), np.float32)
  cfg = augment_config(rotation_degrees=30.0, hflip=True, shift_fraction=0.25, scale_range=(0.7, 1.3),
                        projective=0.08, gamma=0.3, speckle=0.2)
  brought_in = 0
  for k in range(8):
    seed = tf.constant([7, k], tf.int32)
    _, out = augment.augment_example(image, mask, seed, cfg)
    _, indicator = augment.augment_example(image, (mask == IGNORE).astype(np.int32), seed, cfg)
    _, frame = augment.augment_example(image, np.ones_like(mask), seed, cfg)  # 0 where from outside the frame
    out, indicator, frame = out.numpy(), indicator.numpy(), frame.numpy()
    assert set(np.unique(out)) <= {0, 1, IGNORE}  # never an interpolated, new value
    np.testing.assert_array_equal(out == IGNORE, indicator == 1)  # the same warp, pixel for pixel
    assert np.all(out[frame == 0] == 0)  # outside the frame: background, as before
    brought_in += int((frame == 0).sum())
  assert brought_in > 0


# ---- The pipeline's label check ----


def _raw_with_ignore(n=4, size=(40, 48)):
  examples = []
  for k in range(n):
    mask = _mask_with_ignore(size)
    examples.append({"image": np.full(size + (1,), 10 * k, np.uint8), "mask": mask, "id": f"ex{k}".encode()})
  signature = {"image": tf.TensorSpec([None, None, 1], tf.uint8), "mask": tf.TensorSpec([None, None], tf.uint8),
               "id": tf.TensorSpec([], tf.string)}
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)


def _pipeline_config(name):
  config = load_config("default")
  config.dataset.name = name
  config.image_size = 32
  config.batch_size = config.eval_batch_size = 2
  return config


def test_pipeline_lets_ignored_pixels_through_for_the_folder_source():
  config = _pipeline_config("folder")
  for batch in pipeline.create_eval_dataset(config, "test", raw=_raw_with_ignore()).as_numpy_iterator():
    assert set(np.unique(batch["label"])) == {0, 1, IGNORE}
  for batch in pipeline.create_train_dataset(config, epoch=0, raw=_raw_with_ignore()).as_numpy_iterator():
    assert set(np.unique(batch["label"])) <= {0, 1, IGNORE} and (batch["label"] == IGNORE).any()
  # A real class beyond num_classes is still an error, ignore pixels or not.
  config.num_classes = 1
  bad = _raw_with_ignore().map(lambda ex: {**ex, "mask": tf.where(ex["mask"] == 1, tf.constant(2, tf.uint8),
                                                                  ex["mask"])})
  with pytest.raises(ValueError, match=r"mask label 2 .*num_classes=1"):
    pipeline.create_eval_dataset(config, "test", raw=bad)


def test_pipeline_rejects_the_ignore_label_where_the_source_cannot_have_it():
  with pytest.raises(ValueError, match=r"mask label 255 .*num_classes=1.*255 marks ignored pixels only in the "
                                       r"folder dataset"):
    pipeline.create_eval_dataset(_pipeline_config("vein_phantom"), "test", raw=_raw_with_ignore())


# ---- The steps: loss and metrics of the one-logit (sigmoid) and softmax paths ----


class _Tiny(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Conv(self.num_classes, (1, 1))(nn.relu(x))


def _batch(num_classes, n=3, size=16, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((n, size, size, 1)).astype(np.float32)
  label = rng.integers(0, max(num_classes, 2), (n, size, size))
  label = np.where(rng.random(label.shape) < 0.3, IGNORE, label).astype(np.int32)
  return images, label


@pytest.mark.parametrize("num_classes", [1, 3])
def test_train_and_eval_steps_honour_ignored_pixels(num_classes):
  model = _Tiny(num_classes)
  images, label = _batch(num_classes)
  variables = model.init(jax.random.key(0), jnp.asarray(images))
  state = steps.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.sgd(0.1),
                                  batch_stats=variables["batch_stats"])
  loss_fn = losses.get_loss_fn("bce_dice", num_classes)
  num_labels = metrics.num_labels_for_classes(num_classes)
  keep = label != IGNORE

  train = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, learning_rate_fn=lambda _: 0.1,
                                    num_classes=num_classes))
  new_state, out = train(state, {"image": images, "label": label})
  logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
  pred = np.asarray(metrics.predictions(logits, num_classes))
  np.testing.assert_allclose(float(out["loss"]), float(loss_fn(logits, label, np.ones(3, np.float32))),
                             rtol=1e-5)
  want = np.bincount(label[keep] * num_labels + pred[keep], minlength=num_labels**2)
  np.testing.assert_array_equal(out["confusion"], want.reshape(num_labels, num_labels))

  # The step is the gradient of that loss (ignored pixels contribute nothing) ...
  grads = jax.grad(lambda p: loss_fn(model.apply({"params": p, "batch_stats": variables["batch_stats"]}, images,
                                                 train=True, mutable=["batch_stats"])[0], label,
                                     np.ones(3, np.float32)))(variables["params"])
  want_params = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7), new_state.params,
               want_params)
  # ... and differs from a step that takes the ignored pixels for background.
  as_background, _ = train(state, {"image": images, "label": np.where(keep, label, 0).astype(np.int32)})
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new_state.params),
                                                   jax.tree.leaves(as_background.params)))

  evaluate = jax.jit(functools.partial(steps.eval_step, apply_fn=model.apply, loss_fn=loss_fn,
                                       num_classes=num_classes))
  valid = np.array([True, True, False])
  out = evaluate(variables, {"image": images, "label": label, "valid": valid})
  logits = model.apply(variables, images, train=False)
  pred = np.asarray(metrics.predictions(logits, num_classes))
  np.testing.assert_allclose(float(out["loss_sum"]) / float(out["count"]),
                             float(loss_fn(logits, label, valid.astype(np.float32))), rtol=1e-5)
  kept = keep & valid[:, None, None]
  want = np.bincount(label[kept] * num_labels + pred[kept], minlength=num_labels**2)
  np.testing.assert_array_equal(out["confusion"], want.reshape(num_labels, num_labels))
  np.testing.assert_array_equal(out["prediction"], pred.astype(np.uint8))


def test_the_steps_build_the_plain_loss_unless_the_source_may_have_ignored_pixels():
  config = load_config("default")
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
  label, weights = jnp.zeros((2, 8, 8), jnp.int32), jnp.ones(2, jnp.float32)
  plain = str(jax.make_jaxpr(losses.get_loss_fn("bce", 1, ignore_label=False))(logits, label, weights))
  aware = str(jax.make_jaxpr(losses.get_loss_fn("bce", 1, ignore_label=True))(logits, label, weights))
  assert plain != aware
  assert str(jax.make_jaxpr(steps.config_loss_fn(config))(logits, label, weights)) == plain
  config.dataset.name = "folder"
  assert str(jax.make_jaxpr(steps.config_loss_fn(config))(logits, label, weights)) == aware
