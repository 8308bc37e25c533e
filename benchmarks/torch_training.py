"""The PyTorch reference, trained on veinjax's own batches: segmentation_models_pytorch's `Unet(encoder)`.

Used by `python -m benchmarks.peer_accuracy` (see its docstring). torch and segmentation-models-pytorch are
optional benchmark dependencies, never veinjax requirements: they are imported only here, and a missing one
is a `MissingPeerError` that says how to install it.

Equal to a veinjax run of the same config by construction:
- data: veinjax's own tf.data pipeline feeds both frameworks, so they see the same splits and, for the same
  seed, the same augmented training batches in the same order (`pipeline.create_train_dataset`), the same
  validation and test images, the same input normalisation;
- the loss: veinjax's formulas (`veinjax.losses`: bce, dice, bce_dice, focal, ignored pixels) written in
  torch (tests/peer_accuracy_test.py checks them equal to veinjax's on random logits);
- the optimizer: Adam (AdamW with weight_decay > 0) or SGD with Nesterov momentum 0.9, with optax's
  defaults (which are PyTorch's), the learning rate of every step from veinjax's own schedule function,
  global-norm clipping;
- the checkpoint rule: evaluate `config.eval_split` every `eval_every_epochs` epochs and after the last, keep
  the strictly best `config.best_metric` (ties go to the earliest, as veinjax's checkpointer does);
- the metrics: `veinjax.metrics` on the torch logits (the same confusion matrix, Dice, IoU, HD95).

What differs is the framework itself (`DIFFERENCES`): the network's initialisation (smp's), PyTorch's
BatchNorm (unbiased running variance), the convolution algorithms and their float rounding.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import time
from typing import Any

import numpy as np

# What a PyTorch run does differently from a veinjax run of the same config (printed with every table).
DIFFERENCES = (
    "initialisation: smp's (encoder: torchvision's kaiming-normal fan-out as veinjax's, but a gray or "
    "other non-RGB first conv gets PyTorch's default uniform ±1/sqrt(fan_in); decoder: kaiming-uniform "
    "fan-in; head: xavier-uniform, zero bias) vs veinjax's config.model_init",
    "BatchNorm running variance: PyTorch's unbiased estimate (n/(n-1)) vs veinjax's "
    "config.bn_running_variance",
    "random numbers of the initialisation (torch.manual_seed(seed) vs jax.random.key(seed))",
    "convolution algorithms and float rounding (ATen/oneDNN vs XLA)",
)
# Encoders whose smp U-Net is veinjax's `resnet34_unet` (the same layers and parameter count).
SUPPORTED_ENCODERS = ("resnet18", "resnet34", "resnet50")
# Config fields that only veinjax reads: a finished reference run stays valid whatever they are.
VEINJAX_ONLY_FIELDS = ("model_init", "bn_running_variance", "final_fit", "parallelism")
_PEER_MODULES = ("torch", "torchvision", "segmentation_models_pytorch")
RESULT_FILE = "result.json"
HISTORY_FILE = "history.jsonl"


class MissingPeerError(RuntimeError):
  """torch or segmentation-models-pytorch is not installed."""


def import_torch():
  """(torch, segmentation_models_pytorch), or a MissingPeerError that says how to install them.

  torchvision (which smp imports) crashes the interpreter when imported after TensorFlow (seen with torch
  2.14.1 + torchvision 0.29.1 and TensorFlow 2.21: a segmentation fault), so a program that uses both
  imports this first: `preload()`.
  """
  missing = [name for name in _PEER_MODULES if _missing(name)]
  if missing:
    raise MissingPeerError(
        f"The PyTorch reference needs torch and segmentation-models-pytorch ({', '.join(missing)} not "
        "installed). They are optional, not in requirements.txt: `pip install torch==2.14.1 "
        "torchvision==0.29.1 segmentation-models-pytorch` (or --frameworks=veinjax to train veinjax only).")
  if "tensorflow" in sys.modules and "torchvision" not in sys.modules:
    raise RuntimeError("TensorFlow is imported already, and importing torchvision after it crashes Python: "
                       "call benchmarks.torch_training.preload() before anything imports veinjax.data.")
  import segmentation_models_pytorch as smp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  return torch, smp


def peer_main(argv, main_file: str, body) -> None:
  """A peer benchmark's absl main: no positional arguments, quiet library logs, then `body()` (which prints
  its result); a missing torch is one line on stderr and exit status 1."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from veinjax import cli  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs(main_file)
  try:
    body()
  except MissingPeerError as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(1)


def _missing(name: str) -> bool:
  if name in sys.modules:
    return sys.modules[name] is None  # None: the import is blocked
  return importlib.util.find_spec(name) is None


def peer_installed() -> bool:
  """Whether torch, torchvision and segmentation-models-pytorch can be imported (without importing them)."""
  return not any(_missing(name) for name in _PEER_MODULES)


def preload() -> bool:
  """Imports torch, torchvision and smp now, before TensorFlow (see `import_torch`); False if missing."""
  try:
    import_torch()
  except MissingPeerError:
    return False
  return True


def check_config(config) -> None:
  """Refuses, naming the flag, what the reference cannot train as veinjax would."""
  if config.model != "resnet34_unet" or config.encoder not in SUPPORTED_ENCODERS:
    raise ValueError(
        f"The PyTorch reference is smp's Unet(encoder), veinjax's resnet34_unet; got --config.model="
        f"{config.model!r} --config.encoder={config.encoder!r}. Use --config.model=resnet34_unet with "
        f"--config.encoder one of {', '.join(SUPPORTED_ENCODERS)}.")
  if config.encoder_weights or config.init_from:
    raise ValueError("The PyTorch reference trains from scratch: unset --config.encoder_weights and "
                     "--config.init_from (both frameworks must start the same way).")
  if config.optimizer not in ("adam", "sgd"):
    raise ValueError(f"--config.optimizer={config.optimizer!r}: the reference knows adam and sgd.")


# ---------------------------------------------------------------------------------------------------------
# veinjax's losses in torch (see veinjax/losses.py for the formulas and why each is so).
# ---------------------------------------------------------------------------------------------------------


def loss_fn(name: str, num_classes: int, dtype=None):
  """`loss(logits [N, C, H, W], labels int64 [N, H, W]) -> scalar`: veinjax's `config.loss` in torch.

  Every image is real (weight 1), as in training. Pixels labelled IGNORE_LABEL count in no term. Computed in
  float32 as veinjax's losses are, or in `dtype` (torch.float64: a reference for `peer_gradients`).
  """
  from veinjax import losses  # pylint: disable=g-import-not-at-top
  from veinjax.labels import IGNORE_LABEL  # pylint: disable=g-import-not-at-top
  torch, _ = import_torch()
  functional = torch.nn.functional
  if name not in losses.LOSS_NAMES:
    raise ValueError(f"Unknown loss {name!r} (--config.loss); choose one of {', '.join(losses.LOSS_NAMES)}.")

  def pixel_mean(per_pixel, keep):
    total = torch.where(keep, per_pixel, torch.zeros_like(per_pixel)).sum(dim=(1, 2))
    return total / keep.sum(dim=(1, 2)).clamp(min=1).to(per_pixel.dtype)

  def cross_entropy(logits, labels):
    if num_classes == 1:
      return functional.binary_cross_entropy_with_logits(logits[:, 0], (labels == 1).to(logits.dtype),
                                                         reduction="none")
    return functional.cross_entropy(logits, labels, reduction="none")

  def dice(logits, labels, keep):
    if num_classes == 1:
      probs, targets = torch.sigmoid(logits), (labels == 1).to(logits.dtype)[:, None]
    else:
      probs = torch.softmax(logits, dim=1)[:, 1:]
      targets = functional.one_hot(labels, num_classes).permute(0, 3, 1, 2)[:, 1:].to(logits.dtype)
    keep = keep[:, None]
    probs, targets = probs * keep, targets * keep
    intersection = (probs * targets).sum(dim=(2, 3))
    denominator = probs.sum(dim=(2, 3)) + targets.sum(dim=(2, 3))
    score = (2.0 * intersection + losses.DICE_SMOOTH) / (denominator + losses.DICE_SMOOTH)
    return 1.0 - score.mean(dim=1)

  def focal(logits, labels):
    ce = cross_entropy(logits, labels)
    if num_classes == 1:
      t, p = (labels == 1).to(logits.dtype), torch.sigmoid(logits[:, 0])
      p_t = t * p + (1.0 - t) * (1.0 - p)
      alpha_t = t * losses.FOCAL_ALPHA + (1.0 - t) * (1.0 - losses.FOCAL_ALPHA)
      return alpha_t * (1.0 - p_t) ** losses.FOCAL_GAMMA * ce
    return (1.0 - torch.exp(-ce)) ** losses.FOCAL_GAMMA * ce

  def loss(logits, labels):
    logits = logits.to(dtype or torch.float32)
    keep = labels != IGNORE_LABEL
    labels = torch.where(keep, labels, torch.zeros_like(labels))
    per_example = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    if name in ("bce", "bce_dice"):
      per_example = per_example + pixel_mean(cross_entropy(logits, labels), keep)
    if name in ("dice", "bce_dice"):
      per_example = per_example + dice(logits, labels, keep)
    if name == "focal":
      per_example = per_example + pixel_mean(focal(logits, labels), keep)
    return per_example.mean()

  return loss


# ---------------------------------------------------------------------------------------------------------
# Model, optimizer, evaluation.
# ---------------------------------------------------------------------------------------------------------


def create_model(config, seed: int):
  """smp's Unet(config.encoder) for the config's channels and classes, initialised from `seed`."""
  torch, smp = import_torch()
  torch.manual_seed(seed)
  return smp.Unet(config.encoder, encoder_weights=None, in_channels=config.in_channels,
                  classes=config.num_classes)


def create_optimizer(config, model):
  """veinjax's `steps.create_optimizer` in torch (the learning rate is set every step from the schedule)."""
  torch, _ = import_torch()
  params = model.parameters()
  if config.optimizer == "sgd":
    # optax.sgd(momentum, nesterov) then add_decayed_weights before it: PyTorch's coupled weight decay.
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9, nesterov=True,
                           weight_decay=config.weight_decay)
  if config.weight_decay > 0:
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
  return torch.optim.Adam(params, lr=config.learning_rate)


def _to_torch(torch, images: np.ndarray):
  """float32 NHWC numpy -> NCHW torch (contiguous)."""
  return torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).copy())  # a writable copy: torch may write


def evaluate_split(model, config, split: str) -> dict:
  """Metrics of `split` by veinjax's own code, as `veinjax.evaluation.evaluate_split` computes them."""
  from veinjax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from veinjax import steps  # pylint: disable=g-import-not-at-top
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top
  torch, _ = import_torch()
  veinjax_loss = steps.config_loss_fn(config)
  num_labels = metrics_lib.num_labels_for_classes(config.num_classes)
  accumulator = metrics_lib.MetricsAccumulator(config.num_classes, config.pixel_spacing_mm)
  loss_sum = count = 0.0
  model.eval()
  with torch.inference_mode(), _autocast(torch, config):
    for batch in pipeline.create_eval_dataset(config, split).as_numpy_iterator():
      logits = model(_to_torch(torch, batch["image"])).float().permute(0, 2, 3, 1).numpy()
      weights = batch["valid"].astype(np.float32)
      pred = np.asarray(metrics_lib.predictions(logits, config.num_classes))
      accumulator.add(metrics_lib.confusion_matrix(pred, batch["label"], num_labels, weights))
      accumulator.add_hd95(pred, batch["label"], weights)
      loss_sum += float(veinjax_loss(logits, batch["label"], weights)) * weights.sum()
      count += weights.sum()
  result = accumulator.result()
  result["loss"] = loss_sum / count if count else float("nan")
  return result


def _autocast(torch, config):
  return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(config.half_precision))


# ---------------------------------------------------------------------------------------------------------
# One run.
# ---------------------------------------------------------------------------------------------------------


def _jsonable(value):
  from veinjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return workdir_lib.to_jsonable(value)


def train_and_evaluate(config, workdir: str, threads: int = 0) -> dict:
  """Trains the reference on `config` in `workdir` and evaluates its best state on the test split.

  Returns the record written to `workdir/result.json`: seed, config, test `metrics`, `selected` (the
  evaluation on `eval_split` that chose the kept state: epoch and metrics), `train_seconds`, `params`,
  `torch_version`. A finished run (result.json present) is returned as it is, with "status": "skipped" (the
  caller checks its config). An interrupted run starts again from scratch: the reference does not resume.
  `threads` > 0 sets torch's intra-op thread count.
  """
  from veinjax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from veinjax import steps  # pylint: disable=g-import-not-at-top
  from veinjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top
  torch, _ = import_torch()
  check_config(config)
  result_path = os.path.join(workdir, RESULT_FILE)
  if os.path.exists(result_path):
    with open(result_path) as f:
      return dict(json.load(f), status="skipped")
  os.makedirs(workdir, exist_ok=True)
  history_path = os.path.join(workdir, HISTORY_FILE)
  if os.path.exists(history_path):
    os.remove(history_path)  # an interrupted earlier attempt: this one starts from scratch
  if threads > 0:
    torch.set_num_threads(threads)
  torch.use_deterministic_algorithms(True, warn_only=True)

  steps_per_epoch = pipeline.steps_per_epoch(config)
  learning_rate_fn = steps.create_learning_rate_fn(config, steps_per_epoch)
  model = create_model(config, int(config.seed))
  optimizer = create_optimizer(config, model)
  loss = loss_fn(config.loss, config.num_classes)
  best_value, best = None, None
  step, start = 0, time.perf_counter()
  for epoch in range(config.num_epochs):
    model.train()
    loss_sum, train_confusion = 0.0, 0.0
    for batch in pipeline.create_train_dataset(config, epoch=epoch).as_numpy_iterator():
      for group in optimizer.param_groups:
        group["lr"] = float(learning_rate_fn(step))
      with _autocast(torch, config):
        logits = model(_to_torch(torch, batch["image"]))
      value = loss(logits, torch.from_numpy(batch["label"]).long())
      # The train-mode figures veinjax's history records too (train_dice, train_miou).
      train_pred = np.asarray(metrics_lib.predictions(logits.detach().float().permute(0, 2, 3, 1).numpy(),
                                                      config.num_classes))
      train_confusion = train_confusion + np.asarray(metrics_lib.confusion_matrix(
          train_pred, batch["label"], metrics_lib.num_labels_for_classes(config.num_classes)))
      optimizer.zero_grad(set_to_none=True)
      value.backward()
      if config.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
      optimizer.step()
      step += 1
      loss_value = value.item()  # .item() reads the scalar without torch's requires_grad warning
      loss_sum += loss_value
      if not np.isfinite(loss_value):
        raise FloatingPointError(f"The PyTorch reference's loss is {loss_value} at step {step} ({workdir}).")
    done = epoch + 1
    if done % config.eval_every_epochs and done != config.num_epochs:
      continue
    metrics = evaluate_split(model, config, config.eval_split)
    train = metrics_lib.summarize(train_confusion)
    record = {"epoch": done, "step": step, "eval_split": config.eval_split,
              "train_loss": loss_sum / steps_per_epoch, "train_acc": train["acc"], "train_miou": train["miou"],
              "train_dice": train["dice"], "val_loss": metrics.pop("loss"), **metrics,
              "train_seconds": time.perf_counter() - start}
    workdir_lib.append_history(workdir, _jsonable(record))
    value = metrics[config.best_metric]
    if best_value is None or value > best_value:  # strictly better: ties keep the earliest, as veinjax
      best_value, best = value, {"epoch": done, "metrics": metrics, "state": copy.deepcopy(model.state_dict())}
    print(f"  pytorch seed {config.seed} epoch {done}/{config.num_epochs}: {config.eval_split} "
          f"dice {metrics['dice']:.4f} iou {metrics['iou']:.4f} miou {metrics['miou']:.4f}", flush=True)
  train_seconds = time.perf_counter() - start
  model.load_state_dict(best["state"])
  test = evaluate_split(model, config, "test")
  record = _jsonable({
      "framework": "pytorch", "seed": int(config.seed), "config": json.loads(config.to_json_best_effort()),
      "metrics": test, "selected": {"epoch": best["epoch"], **best["metrics"]}, "train_seconds": train_seconds,
      "params": sum(p.numel() for p in model.parameters()), "torch_version": torch.__version__})
  workdir_lib.write_json(result_path, record)
  return dict(record, status="trained")
