"""Tests for veinjax.data.pipeline: resizing, train batches (determinism, shards, resume), padded eval."""

import numpy as np
import pytest
import tensorflow as tf

from veinjax.data import pipeline

from conftest import load_config, override

_SIZE = 32


def _config(**overrides):
  config = load_config("default")
  config.image_size = _SIZE
  config.batch_size = 4
  config.eval_batch_size = 4
  config.augment.projective = 0.05
  config.augment.vflip = True
  config.augment.gamma = 0.2
  config.augment.speckle = 0.1
  return override(config, **overrides)


def _raw(n, *, sizes=None, labels=(0, 1), seed=0, constant_images=False, channels=1):
  """A raw split of n examples; `sizes` [(h, w), ...] varies the frame size; `constant_images` makes image
  k the constant value k + 1, so an example can be recognised after augmentation-free processing."""
  rng = np.random.default_rng(seed)
  sizes = sizes or [(40, 48)] * n
  examples = []
  for k in range(n):
    h, w = sizes[k % len(sizes)]
    if constant_images:
      image = np.full((h, w, channels), k + 1, np.uint8)
    else:
      image = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    mask = rng.choice(np.array(labels, np.uint8), size=(h, w))
    examples.append({"image": image, "mask": mask, "id": f"ex{k:02d}".encode()})
  signature = {"image": tf.TensorSpec([None, None, channels], tf.uint8),
               "mask": tf.TensorSpec([None, None], tf.uint8), "id": tf.TensorSpec([], tf.string)}
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature), examples


def _batches(ds):
  return list(ds.as_numpy_iterator())


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def _example_numbers(batches):
  """The k + 1 values of constant images (augmentation off), per batch row."""
  return [int(round(float(image.max()) * 255)) for b in batches for image in b["image"]]


# ---- resize_example ----


@pytest.mark.parametrize("method", pipeline.RESIZE_METHODS)
@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (20, 20), (32, 32)])
def test_resize_output_size_and_labels_preserved(method, shape):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
  mask = np.zeros(shape, np.uint8)
  mask[shape[0] // 4:shape[0] // 2, shape[1] // 4:3 * shape[1] // 4] = 7
  mask[shape[0] // 2:, :shape[1] // 3] = 3
  out_image, out_mask = pipeline.resize_example(image, mask, _SIZE, method)
  assert out_image.shape == (_SIZE, _SIZE, 3) and out_image.dtype == tf.uint8
  assert out_mask.shape == (_SIZE, _SIZE) and out_mask.dtype == tf.uint8
  assert set(np.unique(out_mask.numpy())) == {0, 3, 7}  # nearest: no new (interpolated) labels


def test_resize_to_the_same_size_is_identity():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (_SIZE, _SIZE, 1), dtype=np.uint8)
  mask = rng.integers(0, 3, (_SIZE, _SIZE), dtype=np.uint8)
  for method in pipeline.RESIZE_METHODS:
    out_image, out_mask = pipeline.resize_example(image, mask, _SIZE, method)
    np.testing.assert_array_equal(out_image.numpy(), image)
    np.testing.assert_array_equal(out_mask.numpy(), mask)


def test_resize_keeps_image_and_mask_aligned():
  mask = np.zeros((48, 80), np.uint8)
  mask[10:30, 20:50] = 1
  image = (mask * 255)[..., None]
  for method in pipeline.RESIZE_METHODS:
    out_image, out_mask = pipeline.resize_example(image, mask, _SIZE, method)
    thresholded = (out_image.numpy()[..., 0] > 127).astype(np.uint8)
    assert np.mean(thresholded != out_mask.numpy()) < 0.03, method


def test_letterbox_keeps_aspect_ratio_and_pads_with_background():
  # A 32 x 64 frame with a 16 x 16 square block of label 2: to 32 x 32 it becomes 16 x 32 with an 8 x 8 block.
  image = np.full((32, 64, 1), 200, np.uint8)
  mask = np.ones((32, 64), np.uint8)
  mask[8:24, 24:40] = 2
  out_image, out_mask = pipeline.resize_example(image, mask, _SIZE, "letterbox")
  out_image, out_mask = out_image.numpy()[..., 0], out_mask.numpy()
  np.testing.assert_array_equal(out_image[:8], 0)
  np.testing.assert_array_equal(out_image[24:], 0)
  np.testing.assert_array_equal(out_mask[:8], 0)
  np.testing.assert_array_equal(out_mask[24:], 0)
  np.testing.assert_array_equal(out_image[8:24], 200)
  rows, cols = np.nonzero(out_mask == 2)
  assert rows.max() - rows.min() + 1 == cols.max() - cols.min() + 1 == 8  # still square


def test_crop_takes_the_central_square():
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (_SIZE, 2 * _SIZE, 1), dtype=np.uint8)
  mask = rng.integers(0, 4, (_SIZE, 2 * _SIZE), dtype=np.uint8)
  out_image, out_mask = pipeline.resize_example(image, mask, _SIZE, "crop")
  np.testing.assert_array_equal(out_image.numpy(), image[:, _SIZE // 2:_SIZE // 2 + _SIZE])
  np.testing.assert_array_equal(out_mask.numpy(), mask[:, _SIZE // 2:_SIZE // 2 + _SIZE])


def test_unknown_resize_method_is_an_error():
  with pytest.raises(ValueError, match="--config.resize_method"):
    pipeline.resize_example(np.zeros((8, 8, 1), np.uint8), None, _SIZE, "stretch")
  raw, _ = _raw(4)
  with pytest.raises(ValueError, match="--config.resize_method"):
    pipeline.create_train_dataset(_config(resize_method="pad"), epoch=0, raw=raw)


def test_preprocess_for_model():
  config = _config(resize_method="letterbox")
  rng = np.random.default_rng(3)
  frame = rng.integers(0, 256, (40, 60), dtype=np.uint8)
  out = pipeline.preprocess_for_model(frame, config)
  assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (_SIZE, _SIZE, 1)
  assert 0.0 <= out.min() and out.max() <= 1.0 and out.max() > 0.5
  expected, _ = pipeline.resize_example(frame[..., None], None, _SIZE, "letterbox")
  np.testing.assert_array_equal(out, expected.numpy() / np.float32(255.0))
  as_tensor = pipeline.preprocess_for_model(tf.constant(frame[..., None]), config)
  assert isinstance(as_tensor, tf.Tensor)
  np.testing.assert_array_equal(as_tensor.numpy(), out)
  with pytest.raises(ValueError, match="uint8"):
    pipeline.preprocess_for_model(frame.astype(np.float32), config)
  with pytest.raises(ValueError, match="--config.in_channels"):
    pipeline.preprocess_for_model(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), config)


# ---- train ----


def test_train_batches_shapes_and_dtypes():
  raw, _ = _raw(10, sizes=[(40, 48), (30, 70), (64, 64)], labels=(0, 1))
  config = _config()
  batches = _batches(pipeline.create_train_dataset(config, epoch=0, raw=raw))
  assert len(batches) == 10 // 4
  for batch in batches:
    assert batch.keys() == {"image", "label"}
    assert batch["image"].shape == (4, _SIZE, _SIZE, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, _SIZE, _SIZE) and batch["label"].dtype == np.int32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert set(np.unique(batch["label"])) <= {0, 1}


def test_train_same_seed_and_epoch_identical_other_epoch_or_seed_differs():
  raw, _ = _raw(12)
  config = _config()
  first = _batches(pipeline.create_train_dataset(config, epoch=3, raw=raw))
  again = _batches(pipeline.create_train_dataset(_config(), epoch=3, raw=raw))
  _assert_same_batches(first, again)
  # One thread versus many: the parallel map must not change anything.
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  single = _batches(pipeline.create_train_dataset(config, epoch=3, raw=raw).with_options(options))
  _assert_same_batches(first, single)
  other_epoch = _batches(pipeline.create_train_dataset(config, epoch=4, raw=raw))
  other_seed = _batches(pipeline.create_train_dataset(_config(seed=1), epoch=3, raw=raw))
  assert not np.array_equal(first[0]["image"], other_epoch[0]["image"])
  assert not np.array_equal(first[0]["image"], other_seed[0]["image"])


def test_train_and_eval_datasets_run_without_the_autotuner():
  # Deleting an autotuned iterator waits for the autotuner's thread (up to a minute, see
  # pipeline._without_autotuner); the batches must be the same as with it on.
  raw, _ = _raw(12)
  config = _config()
  train = pipeline.create_train_dataset(config, epoch=2, raw=raw)
  assert train.options().autotune.enabled is False
  assert pipeline.create_eval_dataset(config, "validation", raw=raw).options().autotune.enabled is False
  autotuned = tf.data.Options()
  autotuned.autotune.enabled = True
  with_autotuner = train.with_options(autotuned)
  assert with_autotuner.options().autotune.enabled is True
  _assert_same_batches(_batches(train), _batches(with_autotuner))


def test_a_raw_dataset_is_prepared_once_for_every_epoch_and_split(monkeypatch):
  # A caller's own raw split is resized once and kept, as a config-loaded one is: re-preparing it every
  # epoch halved the input-pipeline benchmark's rate at 512x512.
  calls = []
  prepare = pipeline._prepare_uncached  # pylint: disable=protected-access
  monkeypatch.setattr(pipeline, "_prepare_uncached", lambda *a, **k: calls.append(1) or prepare(*a, **k))
  raw, _ = _raw(10)
  config = _config()
  first = _batches(pipeline.create_train_dataset(config, epoch=0, raw=raw))
  _batches(pipeline.create_train_dataset(config, epoch=1, raw=raw))
  assert len(calls) == 1
  _assert_same_batches(first, _batches(pipeline.create_train_dataset(_config(), epoch=0, raw=raw)))
  assert len(calls) == 1
  pipeline.create_train_dataset(_config(image_size=16), epoch=0, raw=raw)  # another size: prepared again
  assert len(calls) == 2
  # Another Dataset object is prepared afresh, even when it holds the same frames.
  again, _ = _raw(10)
  _assert_same_batches(first, _batches(pipeline.create_train_dataset(config, epoch=0, raw=again)))
  assert len(calls) == 3


def test_train_epoch_is_a_shuffled_subset_without_repeats():
  raw, _ = _raw(10, constant_images=True)
  config = _config(**{"augment.enabled": False})
  orders = []
  for epoch in range(3):
    seen = _example_numbers(_batches(pipeline.create_train_dataset(config, epoch=epoch, raw=raw)))
    assert len(seen) == 8 and len(set(seen)) == 8 and set(seen) <= set(range(1, 11))
    orders.append(seen)
  assert orders[0] != orders[1] or orders[1] != orders[2]


def test_train_skip_resumes_mid_epoch():
  raw, _ = _raw(16)
  config = _config()
  full = _batches(pipeline.create_train_dataset(config, epoch=1, raw=raw))
  resumed = _batches(pipeline.create_train_dataset(config, epoch=1, raw=raw).skip(2))
  _assert_same_batches(full[2:], resumed)


def test_train_process_shards_are_disjoint_with_equal_steps():
  raw, _ = _raw(11, constant_images=True)
  config = _config(batch_size=4, **{"augment.enabled": False})
  seen = []
  for process_index in range(2):
    batches = _batches(pipeline.create_train_dataset(config, epoch=0, process_index=process_index,
                                                     process_count=2, raw=raw))
    assert len(batches) == 11 // 4  # every process runs the global number of steps
    assert all(b["image"].shape[0] == 2 for b in batches)  # per-process batch
    numbers = _example_numbers(batches)
    # Shard i holds examples i, i + 2, ... (k + 1 encodes example k).
    assert all((n - 1) % 2 == process_index for n in numbers)
    seen.append(set(numbers))
  assert not seen[0] & seen[1]


def test_train_augmentation_of_an_example_does_not_depend_on_sharding():
  # The per-example seed comes from the example's index in the whole split, not its place in a shard.
  raw, _ = _raw(8)
  config = _config(batch_size=2, **{"augment.gamma": 0.0, "augment.speckle": 0.0})
  whole = _batches(pipeline.create_train_dataset(config, epoch=0, raw=raw))
  shard = _batches(pipeline.create_train_dataset(config, epoch=0, process_index=1, process_count=2, raw=raw))
  whole_images = [image for b in whole for image in b["image"]]
  for image in (image for b in shard for image in b["image"]):
    assert any(np.array_equal(image, other) for other in whole_images)


def test_batch_size_must_divide_by_process_count():
  raw, _ = _raw(8)
  with pytest.raises(ValueError, match="--config.batch_size"):
    pipeline.create_train_dataset(_config(batch_size=5), epoch=0, process_count=2, raw=raw)
  with pytest.raises(ValueError, match="--config.batch_size"):
    pipeline.steps_per_epoch(_config(batch_size=5), process_count=2)
  with pytest.raises(ValueError, match="--config.eval_batch_size"):
    pipeline.create_eval_dataset(_config(eval_batch_size=3), "test", process_count=2, raw=raw)


def test_batch_larger_than_the_train_split_is_an_error():
  raw, _ = _raw(3)
  with pytest.raises(ValueError, match="--config.batch_size"):
    pipeline.create_train_dataset(_config(batch_size=4), epoch=0, raw=raw)


# ---- eval ----


@pytest.mark.parametrize("batch_size", [2, 3, 7, 8])
def test_eval_counts_every_example_exactly_once(batch_size):
  raw, examples = _raw(7, sizes=[(40, 48), (50, 30)], labels=(0, 1, 2))
  config = _config(eval_batch_size=batch_size, num_classes=3)
  batches = _batches(pipeline.create_eval_dataset(config, "test", raw=raw))
  assert len(batches) == -(-7 // batch_size)
  valid_ids = []
  for batch in batches:
    assert batch["image"].shape == (batch_size, _SIZE, _SIZE, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (batch_size, _SIZE, _SIZE) and batch["label"].dtype == np.int32
    assert batch["valid"].dtype == bool and batch["id"].shape == (batch_size,)
    valid_ids += list(batch["id"][batch["valid"]])
    padding = ~batch["valid"]
    assert np.all(batch["image"][padding] == 0) and np.all(batch["label"][padding] == 0)
    assert all(i == b"" for i in batch["id"][padding])
  assert valid_ids == [e["id"] for e in examples]  # all, once, in order


def test_eval_images_are_preprocess_for_model_outputs_without_augmentation():
  raw, examples = _raw(5, sizes=[(40, 48), (64, 20)])
  config = _config(eval_batch_size=5, resize_method="letterbox")
  (batch,) = _batches(pipeline.create_eval_dataset(config, "test", raw=raw))
  for k, example in enumerate(examples):
    np.testing.assert_array_equal(batch["image"][k], pipeline.preprocess_for_model(example["image"], config))
    _, mask = pipeline.resize_example(example["image"], example["mask"], _SIZE, "letterbox")
    np.testing.assert_array_equal(batch["label"][k], mask.numpy().astype(np.int32))


@pytest.mark.parametrize("process_count,batch_size", [(2, 4), (3, 3)])
def test_eval_processes_get_equal_batches_and_together_every_example_once(process_count, batch_size):
  raw, examples = _raw(7)
  config = _config(eval_batch_size=batch_size)
  counts, valid_ids = set(), []
  for process_index in range(process_count):
    batches = _batches(pipeline.create_eval_dataset(config, "validation", process_index=process_index,
                                                    process_count=process_count, raw=raw))
    counts.add(len(batches))
    assert all(b["image"].shape[0] == batch_size // process_count for b in batches)
    valid_ids += [i for b in batches for i in b["id"][b["valid"]]]
  assert len(counts) == 1
  assert sorted(valid_ids) == sorted(e["id"] for e in examples)


# ---- bad input ----


def test_bad_raw_examples_are_named():
  config = _config(eval_batch_size=2)
  ok = {"image": np.zeros((8, 8, 1), np.uint8), "mask": np.zeros((8, 8), np.uint8), "id": b"good.png"}
  cases = {
      "label": ({**ok, "mask": np.full((8, 8), 3, np.uint8), "id": b"bad_label.png"}, "--config.num_classes"),
      "size": ({**ok, "mask": np.zeros((8, 9), np.uint8), "id": b"bad_size.png"}, "differs from mask size"),
  }
  signature = {"image": tf.TensorSpec([None, None, 1], tf.uint8), "mask": tf.TensorSpec([None, None], tf.uint8),
               "id": tf.TensorSpec([], tf.string)}
  for bad, message in cases.values():
    raw = tf.data.Dataset.from_generator(lambda bad=bad: iter([ok, bad]), output_signature=signature)
    with pytest.raises(ValueError, match=message) as error:
      pipeline.create_eval_dataset(config, "test", raw=raw)
    assert bad["id"].decode() in str(error.value)
  rgb, _ = _raw(2, channels=3)
  with pytest.raises(ValueError, match="--config.in_channels"):
    pipeline.create_eval_dataset(config, "test", raw=rgb)


# ---- with veinjax.data.sources (the default vein_phantom, tiny) ----


def test_wrappers_load_the_configured_dataset(tmp_path):
  sources = pytest.importorskip("veinjax.data.sources")
  config = _config(**{"dataset.name": "vein_phantom", "dataset.data_dir": str(tmp_path),
                      "dataset.phantom_num_train": 10, "dataset.phantom_num_test": 5,
                      "dataset.phantom_size": 48, "dataset.validation_fraction": 0.2})
  steps = pipeline.steps_per_epoch(config)
  assert steps == 8 // 4  # 10 train examples less 2 carved for validation
  train = _batches(pipeline.create_train_dataset(config, epoch=0))
  assert len(train) == steps and train[0]["image"].shape == (4, _SIZE, _SIZE, 1)
  test = _batches(pipeline.create_eval_dataset(config, "test"))
  expected_ids = [e["id"] for e in sources.load_raw_split(config, "test").as_numpy_iterator()]
  assert len(expected_ids) == 5
  assert [i for b in test for i in b["id"][b["valid"]]] == expected_ids
  validation = _batches(pipeline.create_eval_dataset(config, "validation"))
  assert sum(int(b["valid"].sum()) for b in validation) == 2


def test_no_veinjax_function_goes_through_autograph(tmp_path, monkeypatch):
  """The pipeline's map and filter functions branch on Python values only; AutoGraph's source conversion of
  them would cost about a second of CPU at every fresh start (every train.py, eval.py and test subprocess)."""
  from tensorflow.python.autograph.impl import api as autograph_api  # pylint: disable=g-import-not-at-top
  if not hasattr(autograph_api, "_convert_actual"):
    pytest.skip("this TensorFlow's AutoGraph has no _convert_actual to watch")
  converted = []
  convert = autograph_api._convert_actual  # pylint: disable=protected-access

  def watched(entity, program_ctx):
    converted.append(f"{getattr(entity, '__module__', '?')}.{getattr(entity, '__qualname__', entity)}")
    return convert(entity, program_ctx)

  monkeypatch.setattr(autograph_api, "_convert_actual", watched)
  config = _config(**{"dataset.name": "vein_phantom", "dataset.data_dir": str(tmp_path),
                      "dataset.phantom_num_train": 10, "dataset.phantom_num_test": 5,
                      "dataset.phantom_size": 48, "dataset.validation_fraction": 0.2})
  # Train (a carved split: the selection's filter and map), validation and test, each read once.
  assert _batches(pipeline.create_train_dataset(config, epoch=0))
  for split in ("validation", "test"):
    assert _batches(pipeline.create_eval_dataset(config, split))
  assert not [name for name in converted if name.startswith("veinjax")], converted
