"""The tf.data input pipeline: model-size examples, augmented training batches, padded eval batches.

Flow for one process:

  raw split (veinjax.data.sources.load_raw_split, or any dataset of {'image', 'mask', 'id'})
    -> enumerate, shard by process (before any shuffling, so shards are disjoint)
    -> resize_example to config.image_size (uint8 kept), validated, held in memory once per process
    -> train: per-epoch permutation from (config.seed, epoch); uint8 -> [0, 1]; per-example augmentation
       seeded by (config.seed, epoch, example index); input normalisation; batch; prefetch (tf.data's
       autotuner off: see _without_autotuner).
       eval: raw order; uint8 -> [0, 1]; input normalisation; the last batch padded with valid=False;
       prefetch.

Input normalisation (`input_normalization`): (x - config.input_mean) / config.input_std per channel after
the [0, 1] conversion (and after augmentation, which works on [0, 1] images), or nothing when both are
empty (the default; the numbers are then bit-identical to having no such step). `preprocess_for_model`
(inference) applies the same.

The resized split is decoded and resized once and kept in memory (the "cache"), keyed by the config fields
that shape it, so each epoch's dataset starts from it at no cost. Because the whole shard is in memory, each
epoch is a full uniform permutation of it.

Determinism: every random number comes from a stateless op seeded by (config.seed, epoch, example index), and
all parallel maps keep their order, so the same (seed, epoch) gives the same batches whatever the thread
count, and `dataset.skip(k)` resumes an epoch exactly.
"""

import collections
import copy
import dataclasses
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from veinjax import labels as labels_lib
from veinjax.data import augment

RESIZE_METHODS = ("resize", "letterbox", "crop")
_AUTOTUNE = tf.data.AUTOTUNE
# Prepared (resized, in-memory) shards kept across calls, so each epoch's dataset starts from memory; a few:
# train, validation and test of one run. A config-loaded split is keyed by the config fields that shape it; a
# raw dataset passed in by the Dataset object itself (datasets are immutable graphs: a caller whose source
# files changed passes a new one), which its _Prepared holds so that its id() stays unique while cached.
_MAX_PREPARED = 6
_PREPARED: "collections.OrderedDict[tuple, _Prepared]" = collections.OrderedDict()


# ---------------------------------------------------------------------------------------------------------
# Resizing and normalisation.
# ---------------------------------------------------------------------------------------------------------


def _no_autograph(fn: Callable) -> Callable:
  """`fn` traced as written: the pipeline branches on Python values only (config fields, dtypes), never on a
  tensor, so AutoGraph's source conversion (seconds of CPU at every fresh start) would change nothing."""
  return tf.autograph.experimental.do_not_convert(fn)


def _without_autotuner(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`ds` with tf.data's autotuner off: parallel maps run min(16, cores) calls (the autotuner's own starting
  value), prefetch buffers tune themselves as before.

  Why: with the autotuner on, each iterator runs a background thread that re-tunes on a period growing up to a
  minute, and deleting the iterator (at every epoch's end here) waits for that thread. Measured at 128x128,
  batch 4 on a 2-core CPU: in some epochs the trainer then sat idle for ~50 s after the last step (epochs of
  142 s against 90 s, stack in RootDataset::Iterator's destructor); these pipelines are a fixed map and batch,
  so tuning buys nothing.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


def _check_resize_method(method: str) -> None:
  if method not in RESIZE_METHODS:
    raise ValueError(f"Unknown resize method {method!r}: set --config.resize_method to one of "
                     f"{', '.join(RESIZE_METHODS)}.")


def _resize_image(image: tf.Tensor, height, width) -> tf.Tensor:
  """Bilinear (antialiased when shrinking); uint8 in -> uint8 out (rounded), float in -> float32 out."""
  out = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
  if image.dtype == tf.uint8:
    out = tf.saturate_cast(tf.round(out), tf.uint8)
  return out


def _resize_mask(mask: tf.Tensor, height, width) -> tf.Tensor:
  """Nearest neighbour, so labels stay labels (an ignored pixel stays IGNORE_LABEL); the dtype is kept."""
  return tf.image.resize(mask[..., None], tf.stack([height, width]), method="nearest")[..., 0]


def resize_example(image, mask, size: int, method: str):
  """Brings an (image, mask) pair to size x size.

  Args:
    image: [H, W, C] uint8 (returned uint8, rounded) or float (returned float32).
    mask: [H, W] integer class indices (dtype kept), or None.
    size: the output height and width.
    method: "resize" (stretch to size x size), "letterbox" (scale the longer side to size, keep the aspect
      ratio, pad the rest equally on both sides with 0 = black image / background mask) or "crop" (take the
      central square, then scale it to size).

  Returns:
    (image [size, size, C], mask [size, size] or None). Bilinear for the image, nearest for the mask, both
    with the same half-pixel geometry, so they stay aligned.

  Raises:
    ValueError: unknown `method` (names --config.resize_method).
  """
  _check_resize_method(method)
  image = tf.convert_to_tensor(image)
  mask = None if mask is None else tf.convert_to_tensor(mask)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  if method == "crop":
    side = tf.minimum(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top:top + side, left:left + side]
    if mask is not None:
      mask = mask[top:top + side, left:left + side]
  if method == "letterbox":
    scale = size / tf.cast(tf.maximum(height, width), tf.float32)
    new_h = tf.clip_by_value(tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32), 1, size)
    new_w = tf.clip_by_value(tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32), 1, size)
  else:
    new_h = new_w = tf.constant(size, tf.int32)
  image = _resize_image(image, new_h, new_w)
  if mask is not None:
    mask = _resize_mask(mask, new_h, new_w)
  if method == "letterbox":
    top, left = (size - new_h) // 2, (size - new_w) // 2
    pads = tf.stack([[top, size - new_h - top], [left, size - new_w - left]])
    image = tf.pad(image, tf.concat([pads, [[0, 0]]], axis=0))
    if mask is not None:
      mask = tf.pad(mask, pads)
  image = tf.ensure_shape(image, [size, size, image.shape[-1]])
  if mask is not None:
    mask = tf.ensure_shape(mask, [size, size])
  return image, mask


def input_normalization(config) -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
  """(mean, std) per input channel of the run's input normalisation, or None: the plain [0, 1] input.

  Reads config.input_mean and config.input_std (absent in configs from before they existed: None). Both
  empty: None. Otherwise each must hold one value per input channel (config.in_channels), std > 0.
  `veinjax.initialization.with_input_normalization` fills them for pretrained weights and init_from.

  Raises:
    ValueError: naming --config.input_mean / --config.input_std.
  """
  mean = tuple(float(v) for v in (config.get("input_mean", ()) or ()))
  std = tuple(float(v) for v in (config.get("input_std", ()) or ()))
  if not mean and not std:
    return None
  channels = int(config.in_channels)
  if len(mean) != channels or len(std) != channels:
    raise ValueError(f"--config.input_mean={mean} and --config.input_std={std} must each hold one value per "
                     f"input channel (--config.in_channels={channels}), e.g. "
                     f"--config.input_mean=\"({', '.join(['0.5'] * channels)},)\", or both be empty (the "
                     "plain [0, 1] input).")
  if not all(np.isfinite(mean)) or not all(np.isfinite(s) and s > 0 for s in std):
    raise ValueError(f"--config.input_mean={mean} / --config.input_std={std}: the means must be finite and "
                     "the standard deviations finite and > 0.")
  return mean, std


def _to_unit_interval(image_uint8: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1] (what augmentation works on)."""
  return tf.cast(image_uint8, tf.float32) / 255.0


def _normalize(image: tf.Tensor, normalization) -> tf.Tensor:
  """[0, 1] float32 -> the model's input: (x - mean) / std per channel, or `image` itself (bit for bit)
  when `normalization` (from `input_normalization`) is None. The one place the pipeline normalises."""
  if normalization is None:
    return image
  mean, std = normalization
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def preprocess_for_model(image_uint8, config):
  """One decoded frame -> the model's input, exactly as the training and eval pipelines make it.

  Args:
    image_uint8: uint8 [H, W, C] (or [H, W] when config.in_channels == 1), numpy or tf.
    config: reads image_size, resize_method, in_channels, input_mean, input_std.

  Returns:
    float32 [image_size, image_size, in_channels]: in [0, 1], or (x / 255 - input_mean) / input_std when
    the config records a normalisation; a numpy array for a numpy input run eagerly, else a tf.Tensor.
  """
  normalization = input_normalization(config)
  as_numpy = isinstance(image_uint8, np.ndarray) and tf.executing_eagerly()
  image = tf.convert_to_tensor(image_uint8)
  if image.dtype != tf.uint8:
    raise ValueError(f"preprocess_for_model expects a uint8 image, got {image.dtype.name}; decode frames "
                     "with veinjax.data.decode (which brings 16-bit and RGB images to 8-bit).")
  if image.shape.rank == 2 and config.in_channels == 1:
    image = image[..., None]
  if image.shape.rank != 3 or image.shape[-1] not in (None, config.in_channels):
    raise ValueError(f"Image of shape {image.shape} does not match --config.in_channels="
                     f"{config.in_channels}: expected [H, W, {config.in_channels}].")
  image, _ = resize_example(image, None, config.image_size, config.resize_method)
  image = _normalize(_to_unit_interval(image), normalization)
  return image.numpy() if as_numpy else image


# ---------------------------------------------------------------------------------------------------------
# Batch sizes and epoch length.
# ---------------------------------------------------------------------------------------------------------


def _per_process_batch(batch_size: int, process_count: int, field: str) -> int:
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"--config.{field}={batch_size} must be a positive multiple of the process count "
                     f"({process_count}): each process feeds {field} / process_count examples.")
  return batch_size // process_count


def _steps(num_train: int, config) -> int:
  steps = num_train // config.batch_size
  if steps == 0:
    raise ValueError(f"The train split has {num_train} examples, fewer than --config.batch_size="
                     f"{config.batch_size}: lower the batch size or add data.")
  return steps


def steps_per_epoch(config, process_count: int = 1) -> int:
  """Training steps per epoch: train examples // global batch size (the remainder is dropped)."""
  _per_process_batch(config.batch_size, process_count, "batch_size")
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top
  return _steps(sources.num_examples(config, "train"), config)


# ---------------------------------------------------------------------------------------------------------
# The resized, in-memory shard of one split.
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Prepared:
  """One process's shard of a split at model size."""
  images: tf.Tensor  # uint8 [m, S, S, C]
  masks: tf.Tensor  # uint8 (or the raw mask dtype) [m, S, S]
  ids: tf.Tensor  # string [m]
  indices: tf.Tensor  # int64 [m]: position in the whole split (seeds augmentation)
  num_total: int  # examples in the whole split, all processes together
  raw: Optional[tf.data.Dataset] = None  # a caller's raw dataset, kept alive while its id() keys the cache
  # Traced train-example loaders by augment config, reused by every epoch's dataset (see _train_loader).
  loaders: dict = dataclasses.field(default_factory=dict)

  @property
  def size(self) -> int:
    return int(self.images.shape[0])


def _count(raw: tf.data.Dataset) -> int:
  n = int(raw.cardinality())
  if n == tf.data.INFINITE_CARDINALITY:
    raise ValueError("The raw dataset is infinite; pass one pass over the split (no .repeat()).")
  if n == tf.data.UNKNOWN_CARDINALITY:
    n = int(raw.reduce(np.int64(0), lambda count, _: count + 1))
  return n


def _check_spec(raw: tf.data.Dataset, config) -> None:
  spec = raw.element_spec
  if not isinstance(spec, dict) or not {"image", "mask", "id"} <= set(spec):
    raise ValueError(f"A raw split must yield dicts with 'image', 'mask' and 'id'; got {spec}.")
  image, mask = spec["image"], spec["mask"]
  if image.dtype != tf.uint8 or image.shape.rank != 3:
    raise ValueError(f"Raw images must be uint8 [H, W, C]; got {image.dtype.name} {image.shape}.")
  if image.shape[-1] not in (None, config.in_channels):
    raise ValueError(f"The dataset's images have {image.shape[-1]} channels but --config.in_channels="
                     f"{config.in_channels}: set it to {image.shape[-1]}.")
  if not mask.dtype.is_integer or mask.shape.rank != 2:
    raise ValueError(f"Raw masks must be integer class indices [H, W]; got {mask.dtype.name} {mask.shape}.")


def _prepare_uncached(config, raw: tf.data.Dataset, num_total: int, process_index: int,
                      process_count: int) -> _Prepared:
  """Resizes and validates this process's shard of `raw` and holds it in memory."""
  _check_spec(raw, config)
  size, method = config.image_size, config.resize_method
  max_label = max(config.num_classes, 2) - 1  # num_classes == 1 is one sigmoid logit over labels {0, 1}
  # IGNORE_LABEL (no loss, no metric) is allowed where the source may produce it; the steps then build the
  # ignore-aware loss (veinjax.labels.may_have_ignored_pixels). Elsewhere it is out of range, as before.
  allow_ignore = labels_lib.may_have_ignored_pixels(config)

  def largest_class(mask):
    if allow_ignore:
      mask = tf.where(tf.equal(mask, tf.cast(labels_lib.IGNORE_LABEL, mask.dtype)), tf.zeros_like(mask), mask)
    return tf.reduce_max(mask)

  def prepare(index, example):
    image, mask = resize_example(example["image"], example["mask"], size, method)
    return {"index": index, "image": image, "mask": mask, "id": example["id"],
            "image_hw": tf.shape(example["image"])[:2], "mask_hw": tf.shape(example["mask"]),
            "channels": tf.shape(example["image"])[2], "max_label": largest_class(example["mask"])}

  shard = raw.enumerate().shard(process_count, process_index)
  shard = shard.map(_no_autograph(prepare), num_parallel_calls=_AUTOTUNE, deterministic=True)
  shard = _without_autotuner(shard.batch(32).prefetch(1))
  m = len(range(process_index, num_total, process_count))
  channels = config.in_channels
  images = np.zeros((m, size, size, channels), np.uint8)
  masks = np.zeros((m, size, size), raw.element_spec["mask"].dtype.as_numpy_dtype)
  ids = np.zeros((m,), object)
  indices = np.zeros((m,), np.int64)
  i = 0
  for batch in shard.as_numpy_iterator():
    for j in range(len(batch["index"])):
      name = batch["id"][j].decode("utf-8", "replace")
      if i >= m:
        raise RuntimeError(f"The raw split has more examples than the {num_total} its source reported.")
      if batch["channels"][j] != channels:
        raise ValueError(f"{name}: {batch['channels'][j]} channels but --config.in_channels={channels}.")
      if tuple(batch["image_hw"][j]) != tuple(batch["mask_hw"][j]):
        raise ValueError(f"{name}: image size {tuple(batch['image_hw'][j])} differs from mask size "
                         f"{tuple(batch['mask_hw'][j])}; fix the mask or its image.")
      if batch["max_label"][j] > max_label:
        ignore_note = ""
        if batch["max_label"][j] == labels_lib.IGNORE_LABEL:  # only where the source may not ignore pixels
          ignore_note = (f"; {labels_lib.IGNORE_LABEL} marks ignored pixels only in the "
                         f"{', '.join(labels_lib.SOURCES_WITH_IGNORE)} dataset")
        raise ValueError(f"{name}: mask label {batch['max_label'][j]} but --config.num_classes="
                         f"{config.num_classes} allows labels 0..{max_label}; set num_classes to match "
                         f"the dataset (background included){ignore_note}.")
      images[i], masks[i] = batch["image"][j], batch["mask"][j]
      ids[i], indices[i] = batch["id"][j], batch["index"][j]
      i += 1
  if i != m:
    raise RuntimeError(f"Process {process_index} got {i} examples, expected {m} of {num_total}.")
  return _Prepared(images=tf.constant(images), masks=tf.constant(masks), ids=tf.constant(ids.astype(bytes)),
                   indices=tf.constant(indices), num_total=num_total)


def _prepare(config, split: str, raw: Optional[tf.data.Dataset], process_index: int,
             process_count: int) -> _Prepared:
  """This process's shard of `split` at model size, from the in-memory cache when it is there."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, process_count={process_count}).")
  # What preparing checks and produces depends on (the ignore label's validity too).
  shape = (split, config.image_size, config.resize_method, config.in_channels, config.num_classes,
           labels_lib.may_have_ignored_pixels(config), process_index, process_count)
  if raw is not None:  # the caller's own dataset, as one object
    key = ("raw", id(raw)) + shape
  else:
    key = ("config", config.seed, config.dataset.to_json_best_effort(sort_keys=True)) + shape
  if key in _PREPARED:
    _PREPARED.move_to_end(key)
    return _PREPARED[key]
  if raw is not None:
    num_total = _count(raw)
    if num_total == 0:
      raise ValueError(f"The {split!r} split of the given raw dataset is empty.")
    prepared = dataclasses.replace(_prepare_uncached(config, raw, num_total, process_index, process_count),
                                   raw=raw)
  else:
    from veinjax.data import sources  # pylint: disable=g-import-not-at-top
    raw = sources.load_raw_split(config, split)
    num_total = sources.num_examples(config, split)
    if num_total == 0:
      raise ValueError(f"The {split!r} split of {config.dataset.name!r} is empty.")
    prepared = _prepare_uncached(config, raw, num_total, process_index, process_count)
  _PREPARED[key] = prepared
  while len(_PREPARED) > _MAX_PREPARED:
    _PREPARED.popitem(last=False)
  return prepared


# ---------------------------------------------------------------------------------------------------------
# Train and eval datasets.
# ---------------------------------------------------------------------------------------------------------


def _train_loader(data: _Prepared, aug_config, normalization=None) -> Callable[[tf.Tensor, tf.Tensor], dict]:
  """(position in the shard, the epoch's augmentation seed) -> one augmented training example.

  Augmentation works on [0, 1] images; the input normalisation (`input_normalization`) comes after it, so
  what augmentation does is the same with or without one. Traced once per prepared shard, augment config
  and normalisation, not once per epoch: the epoch enters as an input, so each epoch's dataset reuses the
  traced function (tracing the augmentation costs ~0.1 s of CPU).
  """
  key = (aug_config.to_json_best_effort(sort_keys=True), normalization)
  if key not in data.loaders:
    aug_config = copy.deepcopy(aug_config)  # later edits to the caller's config get their own key
    images, masks, indices = data.images, data.masks, data.indices

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32)],
                 autograph=False)  # as _no_autograph
    def load(position, augment_seed):
      image = _to_unit_interval(tf.gather(images, position))
      label = tf.cast(tf.gather(masks, position), tf.int32)
      # Seeded by the example's index in the whole split: its augmentation does not depend on the shuffle,
      # the process count or the thread count.
      seed = tf.random.experimental.stateless_fold_in(augment_seed, tf.gather(indices, position))
      image, label = augment.augment_example(image, label, seed, aug_config)
      return {"image": _normalize(image, normalization), "label": label}

    data.loaders[key] = load
  return data.loaders[key]


def _epoch_seeds(seed: int, epoch: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(shuffle seed, augmentation base seed) for one epoch; both stateless [2] int32 seeds."""
  base = tf.constant([seed, epoch], tf.int64)
  fold_in = tf.random.experimental.stateless_fold_in
  return fold_in(base, 0), fold_in(base, 1)


def create_train_dataset(config, *, epoch: int, process_index: int = 0, process_count: int = 1,
                         raw: Optional[tf.data.Dataset] = None) -> tf.data.Dataset:
  """One epoch of this process's augmented training batches.

  Args:
    config: the run config (seed, batch_size, image_size, resize_method, in_channels, num_classes, augment,
      input_mean, input_std, dataset).
    epoch: which epoch; with config.seed it fixes the shuffle and every augmentation.
    process_index: this process (jax.process_index()).
    process_count: all processes (jax.process_count()).
    raw: the raw train split; None loads it with veinjax.data.sources.load_raw_split(config, "train"). Either
      way it is resized once and kept in memory: the same Dataset object in a later call (e.g. the next
      epoch) starts from there.

  Returns:
    steps_per_epoch(config, process_count) batches of {'image': float32 [b, S, S, C] in [0, 1] (augmented;
    then normalised when the config records input_mean / input_std), 'label': int32 [b, S, S]} with
    b = config.batch_size // process_count. Process i sees only the split's examples i, i + process_count,
    ...; the same (seed, epoch) gives identical batches; `.skip(k)` resumes.
  """
  b = _per_process_batch(config.batch_size, process_count, "batch_size")
  _check_resize_method(config.resize_method)
  normalization = input_normalization(config)
  if config.augment.enabled:
    augment.check_config(config.augment)  # fail here rather than while tf.data traces the map
  data = _prepare(config, "train", raw, process_index, process_count)
  # Every process runs the same number of steps, set by the global count (shards may differ by one).
  steps = _steps(data.num_total, config)
  shuffle_seed, augment_seed = _epoch_seeds(config.seed, epoch)
  order = tf.argsort(tf.random.stateless_uniform([data.size], seed=shuffle_seed), stable=True)
  count = steps * b
  ds = tf.data.Dataset.from_tensor_slices((order[:count], tf.tile(augment_seed[None], [count, 1])))
  loader = _train_loader(data, config.augment, normalization)
  ds = ds.map(loader, num_parallel_calls=_AUTOTUNE, deterministic=True)
  return _without_autotuner(ds.batch(b, drop_remainder=True).prefetch(_AUTOTUNE))


def create_eval_dataset(config, split: str, *, process_index: int = 0, process_count: int = 1,
                        raw: Optional[tf.data.Dataset] = None) -> tf.data.Dataset:
  """This process's eval batches of `split`, in the split's order, with no augmentation.

  Args:
    config: the run config (eval_batch_size, image_size, resize_method, in_channels, num_classes, input_mean,
      input_std, dataset).
    split: "train", "validation" or "test".
    process_index: this process (jax.process_index()).
    process_count: all processes (jax.process_count()).
    raw: the raw split; None loads it with veinjax.data.sources.load_raw_split(config, split) (either way
      resized once and kept in memory, as for create_train_dataset).

  Returns:
    batches of {'image': float32 [b, S, S, C] (`preprocess_for_model`'s values: [0, 1], or normalised
    as the config records), 'label': int32 [b, S, S], 'valid': bool [b], 'id': string [b]},
    b = config.eval_batch_size // process_count. Padding examples (zeros, id "", valid=False) fill the last
    batches, and every process gets ceil(ceil(n / process_count) / b) batches, so over all processes each
    example has valid=True exactly once, whatever the batch size.
  """
  b = _per_process_batch(config.eval_batch_size, process_count, "eval_batch_size")
  _check_resize_method(config.resize_method)
  normalization = input_normalization(config)
  data = _prepare(config, split, raw, process_index, process_count)
  per_process = -(-data.num_total // process_count)
  padded = -(-per_process // b) * b
  images, masks, ids = data.images, data.masks, data.ids

  def load(position):
    return {"image": _normalize(_to_unit_interval(tf.gather(images, position)), normalization),
            "label": tf.cast(tf.gather(masks, position), tf.int32),
            "valid": tf.constant(True), "id": tf.gather(ids, position)}

  size, channels = config.image_size, config.in_channels
  padding = {"image": tf.zeros([size, size, channels], tf.float32), "label": tf.zeros([size, size], tf.int32),
             "valid": tf.constant(False), "id": tf.constant(b"")}
  ds = tf.data.Dataset.range(data.size).map(_no_autograph(load), num_parallel_calls=_AUTOTUNE,
                                            deterministic=True)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(padded - data.size))
  return _without_autotuner(ds.batch(b, drop_remainder=True).prefetch(_AUTOTUNE))
