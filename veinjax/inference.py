"""Running trained models on new frames: `Predictor`, at the frame's own size.

  predictor = Predictor.from_workdir("runs/quickstart")                 # or Predictor.from_workdirs([...])
  for p in predictor.predict(frames):                                  # uint8/uint16 frames of any size
    p.mask, p.probabilities                                            # [H, W] classes, [H, W, C] float32

Each frame is converted exactly as the training pipeline converts a decoded file (`decode.frame_to_uint8`,
`sources.to_channels`, `pipeline.preprocess_for_model`: the same code, so TensorFlow runs the resizing),
goes through one jitted, batched forward pass (flip TTA and ensemble members averaged in probability
space, as nnU-Net does), and its probabilities are mapped back onto the original frame by inverting the
run's `resize_method`: `resize` rescales back; `letterbox` drops the padding, then rescales; `crop` rescales
the central square back and marks every pixel outside it background (probability 1 for background, 0 for
every other class) since the model never saw them. Masks come from the mapped-back probabilities
(sigmoid > 0.5, or the argmax), then the optional post-processing (`veinjax.postprocess`).

This module imports without TensorFlow (the model-size forward pass `forward_probabilities` runs on numpy
batches); `Predictor.predict` needs it for the preprocessing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from veinjax import exported
from veinjax import metrics as metrics_lib
from veinjax import models
from veinjax import postprocess as postprocess_lib
from veinjax import steps
from veinjax import workdir as workdir_lib

TTA_CHOICES = ("hflip",)
# Fields every member of an ensemble must share: the same input and the same outputs.
_ENSEMBLE_FIELDS = ("image_size", "in_channels", "num_classes", "resize_method", "input_mean", "input_std")


def load_for_inference(workdir: str, checkpoint: str = "best") -> tuple[flax.linen.Module, dict,
                                                                        ml_collections.ConfigDict]:
  """(model, variables, config) of a trained run, for `steps.predict_logits` or `model.apply(..., train=False)`."""
  config = workdir_lib.load_config(workdir)
  model = steps.create_model(config)
  tree, _ = steps.restore_variables(config, model, workdir, checkpoint)
  return model, jax.tree.map(jnp.asarray, tree), config


@dataclasses.dataclass
class FramePrediction:
  """One frame's result at its original size."""
  probabilities: np.ndarray  # float32 [H, W, C]: the sigmoid of one logit (C = 1) or the softmax over classes
  mask: np.ndarray  # uint8 [H, W] class indices (0 = background), after post-processing


def probabilities_from_logits(logits: jax.Array) -> jax.Array:
  """Sigmoid of one logit, softmax over several."""
  return jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits, axis=-1)


def forward_probabilities(members: Sequence[tuple[flax.linen.Module, dict]], images: jax.Array,
                          tta: Sequence[str] = ()) -> jax.Array:
  """Mean probabilities [N, S, S, C] of preprocessed images over the members and the flip TTA views."""
  total, views = 0.0, 0
  for model, variables in members:
    total = total + probabilities_from_logits(steps.predict_logits(model, variables, images))
    views += 1
    if "hflip" in tta:  # the flipped view's prediction, flipped back (width is axis 2)
      flipped = steps.predict_logits(model, variables, images[:, :, ::-1])[:, :, ::-1]
      total = total + probabilities_from_logits(flipped)
      views += 1
  return total / views


_class_mask = exported.class_mask  # sigmoid > 0.5, or the argmax (numpy; the exports' helper uses the same)


def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out, in] weights of a half-pixel-centred bilinear resize (TensorFlow's, without antialiasing)."""
  position = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  position = np.clip(position, 0, in_size - 1)
  low = np.floor(position).astype(int)
  high = np.minimum(low + 1, in_size - 1)
  frac = (position - low).astype(np.float32)
  weights = np.zeros((out_size, in_size), np.float32)
  np.add.at(weights, (np.arange(out_size), low), 1 - frac)
  np.add.at(weights, (np.arange(out_size), high), frac)
  return weights


def resize_probabilities(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
  """[h, w, C] -> [height, width, C], bilinear (identity at the same size)."""
  h, w = probabilities.shape[:2]
  if (h, w) == (height, width):
    return probabilities
  rows, cols = _bilinear_matrix(height, h), _bilinear_matrix(width, w)
  return np.einsum("yh,hwc,xw->yxc", rows, probabilities, cols, optimize=True).astype(np.float32)


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
  """(top, left, new_h, new_w) of a letterboxed frame inside size x size, as `pipeline.resize_example`."""
  scale = np.float32(size) / np.float32(max(height, width))
  new_h = int(np.clip(np.round(np.float32(height) * scale), 1, size))
  new_w = int(np.clip(np.round(np.float32(width) * scale), 1, size))
  return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def to_frame(probabilities: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
  """Model-size probabilities [S, S, C] -> the original frame's [height, width, C] (see the module doc)."""
  size = probabilities.shape[0]
  if method == "resize":
    return resize_probabilities(probabilities, height, width)
  if method == "letterbox":
    top, left, new_h, new_w = letterbox_box(height, width, size)
    return resize_probabilities(probabilities[top:top + new_h, left:left + new_w], height, width)
  if method == "crop":
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    out = np.zeros((height, width, probabilities.shape[-1]), np.float32)
    if probabilities.shape[-1] > 1:
      out[..., 0] = 1.0  # outside the crop: background, with certainty
    out[top:top + side, left:left + side] = resize_probabilities(probabilities, side, side)
    return out
  raise ValueError(f"Unknown resize method {method!r} (--config.resize_method).")


def _normal(value):
  """Config values as compared across runs: JSON lists and tuples alike, a missing field as empty."""
  return tuple(value) if isinstance(value, (list, tuple)) else (() if value is None else value)


def _check_ensemble(configs: Sequence[ml_collections.ConfigDict], names: Sequence[str]) -> None:
  first = configs[0]
  for config, name in zip(configs[1:], names[1:]):
    # .get: runs recorded before a field existed lack it (input_mean / input_std: no normalisation).
    differ = [f"{k}: {first.get(k)!r} in {names[0]} vs {config.get(k)!r} in {name}" for k in _ENSEMBLE_FIELDS
              if _normal(first.get(k)) != _normal(config.get(k))]
    if differ:
      raise ValueError(f"Runs of one ensemble must share {', '.join(_ENSEMBLE_FIELDS)}; they differ in "
                       f"{'; '.join(differ)}. Ensemble runs of the same recipe (e.g. the seeds of one compare run).")


class Predictor:
  """Batched inference of one model or an ensemble, returning results at each frame's own size.

  Args:
    members: (model, variables) pairs; more than one is an ensemble (probabilities averaged).
    config: the run config (image_size, resize_method, in_channels, num_classes).
    batch_size: frames per forward pass; the last batch is padded, so one compiled function serves all.
    tta: test-time augmentation views: () or ("hflip",) (vertical flips stay off: depth has meaning).
    postprocess: a `veinjax.postprocess.PostProcess` for the masks (default: none).
  """

  def __init__(self, members: Sequence[tuple[flax.linen.Module, dict]], config: ml_collections.ConfigDict, *,
               batch_size: int = 8, tta: Sequence[str] = (), postprocess: postprocess_lib.PostProcess | None = None):
    unknown = [t for t in tta if t not in TTA_CHOICES]
    if unknown:
      raise ValueError(f"Unknown --tta={','.join(tta)}; choose from {', '.join(TTA_CHOICES)} (or none).")
    if batch_size < 1:
      raise ValueError(f"--batch_size={batch_size} must be >= 1.")
    self.config, self.batch_size, self.tta = config, int(batch_size), tuple(tta)
    self.postprocess = postprocess or postprocess_lib.PostProcess()
    self.num_labels = metrics_lib.num_labels_for_classes(config.num_classes)
    self._models = [m for m, _ in members]
    self._variables = [jax.device_put(v) for _, v in members]
    models, tta = self._models, self.tta
    self._forward = jax.jit(lambda variables, images: forward_probabilities(list(zip(models, variables)), images,
                                                                           tta))

  def with_options(self, *, tta: Sequence[str] | None = None,
                   postprocess: postprocess_lib.PostProcess | None = None) -> "Predictor":
    """The same members with other TTA views or post-processing (the forward pass compiles anew for TTA)."""
    return Predictor(list(zip(self._models, self._variables)), self.config, batch_size=self.batch_size,
                     tta=self.tta if tta is None else tta,
                     postprocess=self.postprocess if postprocess is None else postprocess)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = "best", **kwargs) -> "Predictor":
    return cls.from_workdirs([workdir], checkpoint, **kwargs)

  @classmethod
  def from_workdirs(cls, workdirs: Sequence[str], checkpoint: str = "best", **kwargs) -> "Predictor":
    """An ensemble of train.py runs (one is a plain model); their configs must agree (see above)."""
    if not workdirs:
      raise ValueError("--workdir: give at least one train.py workdir.")
    loaded = [load_for_inference(w, checkpoint) for w in workdirs]
    _check_ensemble([config for _, _, config in loaded], list(workdirs))
    return cls([(model, variables) for model, variables, _ in loaded], loaded[0][2], **kwargs)

  def preprocess(self, frame: np.ndarray) -> np.ndarray:
    """One frame -> the model's input [S, S, C], by the training pipeline's own code."""
    from veinjax.data import decode, pipeline, sources  # pylint: disable=g-import-not-at-top  (TensorFlow)
    image = sources.to_channels(decode.frame_to_uint8(frame), self.config.in_channels)
    return pipeline.preprocess_for_model(np.asarray(image), self.config)

  @property
  def num_params(self) -> int:
    """Parameters of all members together."""
    return sum(models.count_params(v["params"]) for v in self._variables if "params" in v)

  def forward(self, images: jax.Array) -> jax.Array:
    """The jitted forward pass: probabilities [N, S, S, C] of preprocessed images (on the device)."""
    return self._forward(self._variables, images)

  def model_size_masks(self, images: np.ndarray) -> np.ndarray:
    """Class masks [N, S, S] of preprocessed images at the model's size (no mapping back, no post-processing)."""
    return np.stack([_class_mask(p) for p in self.model_size_probabilities(images)])

  def model_size_probabilities(self, images: np.ndarray) -> np.ndarray:
    """Probabilities [N, S, S, C] of preprocessed images, batch by batch (padded to `batch_size`)."""
    out = []
    for start in range(0, len(images), self.batch_size):
      batch = images[start:start + self.batch_size]
      padded = np.zeros((self.batch_size,) + batch.shape[1:], np.float32)
      padded[:len(batch)] = batch
      out.append(np.asarray(self.forward(jnp.asarray(padded)))[:len(batch)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def frame_probabilities(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Probabilities [H, W, C] of each frame, mapped back onto the frame (see the module docstring)."""
    if not frames:
      return []
    images = np.stack([self.preprocess(f) for f in frames])
    return [to_frame(probs, *np.asarray(frame).shape[:2], self.config.resize_method)
            for frame, probs in zip(frames, self.model_size_probabilities(images))]

  def mask(self, probabilities: np.ndarray, postprocess: postprocess_lib.PostProcess | None = None) -> np.ndarray:
    """The class mask [H, W] of a frame's probabilities, post-processed (default: this predictor's steps)."""
    steps_ = self.postprocess if postprocess is None else postprocess
    return postprocess_lib.postprocess(_class_mask(probabilities), self.num_labels, steps_)

  def predict(self, frames: Iterable[np.ndarray]) -> list[FramePrediction]:
    """Probabilities and masks of each frame at its own size (frames may differ in size and channels)."""
    return [FramePrediction(probabilities=p, mask=self.mask(p)) for p in self.frame_probabilities(list(frames))]
