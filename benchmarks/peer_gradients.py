r"""How exact are veinjax's float32 gradients? Both frameworks from the same weights on the same batch (issue 18).

  python -m benchmarks.peer_gradients --config=configs/usgra_seg_best.py --config.image_size=128 [--batches=3]
  python -m benchmarks.peer_gradients --config=... --weights_from=runs/peer_usgra_best128/veinjax/seed_0

smp's `Unet(config.encoder)` is built with `torch.manual_seed(config.seed)`, its weights are mapped one to
one onto veinjax's `resnet34_unet` (`variables_from_smp`: every leaf of veinjax's tree filled once), and the
first `--batches` training batches of epoch 0 (veinjax's pipeline, as `peer_accuracy` feeds both) give each
framework's gradient of the config's loss in train mode, at those same initial weights (or, with
`--weights_from=WORKDIR`, at a trained veinjax run's best state, copied into smp's model the same way: where
training has taken the activations, which may not be where they start). The reference is
PyTorch in float64 (model and loss); against it, per parameter tensor, the relative error
max|g - g_ref| / max|g_ref|, summarised over the tensors (median, 90th percentile, max and the worst tensor):

- veinjax float32 (as it trains), and with flax's one-pass batch variance (mean(x^2) - mean(x)^2, flax's
  default and veinjax's before issue 18: `layers.one_pass_batch_variance()`);
- PyTorch float32 (as the reference trains);
- veinjax float64 (a check of the mathematics: it should agree with the reference to ~1e-7, the float32
  loss veinjax always computes being the only float32 left in it).

A float32 gradient's error is float rounding amplified by the network; where one framework's is larger, its
training follows a noisier gradient. Prints a Markdown table per batch and one over all batches (the
median of the per-batch figures). torch and segmentation-models-pytorch are optional (never in
requirements.txt): without them the command says how to install them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ROWS = (
    ("veinjax_fp32", "veinjax float32 (two-pass batch variance, as it trains)"),
    ("veinjax_fp32_one_pass", "veinjax float32 with flax's one-pass batch variance"),
    ("pytorch_fp32", "PyTorch float32 (as the reference trains)"),
    ("veinjax_fp64", "veinjax float64 (the mathematics: should be ~1e-7)"),
)


def smp_name(path: Sequence[str]) -> str:
  """smp's state-dict name of a veinjax `resnet34_unet` variable, given by its path without the collection:
  ('decoder', 'block1', 'conv2', 'bn', 'scale') -> 'decoder.blocks.0.conv2.1.weight'."""
  from veinjax.models import pretrained  # pylint: disable=g-import-not-at-top
  leaf_names = pretrained._LEAF_TO_TORCH  # pylint: disable=protected-access  (torchvision's leaf names, as smp's)
  *modules, leaf = path
  if modules[:1] == ["encoder"]:
    return "encoder." + pretrained.torch_name(modules[1:], leaf)
  if modules == ["head"] and leaf in ("kernel", "bias"):
    return f"segmentation_head.0.{leaf_names[leaf]}"
  if (len(modules) == 4 and modules[0] == "decoder" and re.fullmatch(r"block\d+", modules[1])
      and modules[3] in ("conv", "bn") and leaf in leaf_names):
    block = int(modules[1][len("block"):]) - 1
    return f"decoder.blocks.{block}.{modules[2]}.{0 if modules[3] == 'conv' else 1}.{leaf_names[leaf]}"
  raise ValueError(f"No smp name for veinjax variable {'/'.join(path)}: not a resnet34_unet (EncoderUNet) variable")


def _path_keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(key, "key", key)) for key in path)


def variables_from_smp(state_dict: Mapping[str, np.ndarray], abstract_variables) -> dict[str, Any]:
  """veinjax {'params', 'batch_stats'} (numpy float32) filled from smp's state dict, each leaf once.

  Kernels go from PyTorch's OIHW to flax's HWIO; a missing name, a shape that does not match or a tensor used
  twice is a ValueError naming it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  used: dict[str, str] = {}

  def fill(path, leaf):
    keys = _path_keys(path)
    name = smp_name(keys[1:])
    if name not in state_dict:
      raise ValueError(f"smp's state dict has no {name!r} for veinjax's {'/'.join(keys)}")
    if name in used:
      raise ValueError(f"{name!r} would fill both {used[name]} and {'/'.join(keys)}")
    used[name] = "/".join(keys)
    array = np.asarray(state_dict[name], np.float32)
    if keys[-1] == "kernel":
      array = np.transpose(array, (2, 3, 1, 0))
    if array.shape != tuple(leaf.shape):
      raise ValueError(f"{name!r} has shape {array.shape} (as HWIO), veinjax's {'/'.join(keys)} {tuple(leaf.shape)}")
    return array

  return jax.tree_util.tree_map_with_path(fill, dict(abstract_variables))


def smp_state_dict_from(variables) -> dict[str, np.ndarray]:
  """The inverse of `variables_from_smp`: {smp name: array in PyTorch's layout} of veinjax variables."""
  import jax  # pylint: disable=g-import-not-at-top
  state_dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
    keys = _path_keys(path)
    array = np.asarray(leaf, np.float32)
    state_dict[smp_name(keys[1:])] = np.transpose(array, (3, 2, 0, 1)) if keys[-1] == "kernel" else array
  return state_dict


def relative_errors(gradients: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Per tensor: max|g - g_ref| / max|g_ref| (inf where the reference is all zero and g is not, else 0)."""
  if set(gradients) != set(reference):
    raise ValueError(f"The gradients name different tensors: {sorted(set(gradients) ^ set(reference))[:5]}")
  errors = {}
  for name, ref in reference.items():
    ref = np.asarray(ref, np.float64)
    diff = np.abs(np.asarray(gradients[name], np.float64) - ref).max()
    scale = np.abs(ref).max()
    errors[name] = float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))
  return errors


def summarize(errors: Mapping[str, float]) -> dict[str, Any]:
  """{'median', 'p90', 'max', 'worst' (the tensor with the max)} of per-tensor relative errors."""
  values = np.asarray(list(errors.values()), np.float64)
  worst = max(errors, key=errors.get)
  return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "max": float(values.max()),
          "worst": worst, "tensors": len(values)}


def table_markdown(summaries: Mapping[str, Mapping[str, Any]], title: str) -> str:
  """One row per gradient (the `ROWS` present in `summaries`), errors against PyTorch float64."""
  lines = [f"### {title}", "",
           "| gradient | tensors | median rel. error | 90th percentile | max | worst tensor |",
           "|---|---:|---:|---:|---:|---|"]
  for key, label in ROWS:
    if key in summaries:
      s = summaries[key]
      lines.append(f"| {label} | {s['tensors']} | {s['median']:.2e} | {s['p90']:.2e} | {s['max']:.2e} | "
                   f"{s['worst']} |")
  return "\n".join(lines) + "\n"


def veinjax_gradient_fn(config, dtype: str, one_pass_variance: bool = False):
  """`gradients(variables, batch) -> {smp name: gradient}`: the config's loss at `variables`, train mode,
  computed in `dtype`, jitted as veinjax's train step is (the rounding of the compiled program)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from veinjax import models  # pylint: disable=g-import-not-at-top
  from veinjax import steps  # pylint: disable=g-import-not-at-top
  from veinjax.models import layers  # pylint: disable=g-import-not-at-top
  compute = jnp.dtype(dtype)
  if compute == jnp.float32:
    model = steps.create_model(config)
  else:  # a float64 model (jax_enable_x64): parameters and computation in float64
    model = models.create_model(config.model, num_classes=config.num_classes, dtype=compute, encoder=config.encoder)
  loss_fn = steps.config_loss_fn(config)

  @jax.jit
  def grad_fn(variables, images, labels):
    def loss(params):
      logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images, train=True,
                              mutable=["batch_stats"])
      return loss_fn(logits, labels, jnp.ones(images.shape[:1], jnp.float32))
    return jax.grad(loss)(variables["params"])

  def gradients(variables, batch):
    cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, compute), variables)
    # The patch is read when the model is traced (the first call).
    with layers.one_pass_batch_variance() if one_pass_variance else contextlib.nullcontext():
      grads = grad_fn(cast, jnp.asarray(batch["image"], compute), jnp.asarray(batch["label"]))
    return {smp_name(_path_keys(path)): np.asarray(g, np.float64)
            for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}

  return gradients


def pytorch_gradients(torch, model, config, batch, dtype) -> dict[str, np.ndarray]:
  """{smp name: gradient} of the config's loss (computed in `dtype`), train mode, of a copy of `model`."""
  import copy  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top
  model = copy.deepcopy(model).to(dtype)
  model.train()
  logits = model(torch_training._to_torch(torch, batch["image"]).to(dtype))  # pylint: disable=protected-access
  loss = torch_training.loss_fn(config.loss, config.num_classes, dtype=dtype)
  loss(logits, torch.from_numpy(np.asarray(batch["label"])).long()).backward()
  return {name: p.grad.detach().double().numpy() for name, p in model.named_parameters()}


def _kernels_as_hwio(gradients: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {n: np.transpose(g, (2, 3, 1, 0)) if g.ndim == 4 else g for n, g in gradients.items()}


def run(config, num_batches: int, weights_from: str = "") -> dict[str, Any]:
  """The per-batch summaries and the Markdown; see the module doc."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top
  from veinjax import steps  # pylint: disable=g-import-not-at-top
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top
  torch, _ = torch_training.import_torch()
  torch_training.check_config(config)
  if num_batches < 1:
    raise ValueError(f"--batches={num_batches}: give 1 or more.")
  jax.config.update("jax_enable_x64", True)  # for the float64 check; float32 arrays stay float32
  torch.use_deterministic_algorithms(True, warn_only=True)
  smp_model = torch_training.create_model(config, int(config.seed))
  state_dict = {k: v.detach().numpy() for k, v in smp_model.state_dict().items()}
  model = steps.create_model(config)
  abstract = jax.eval_shape(lambda: steps.init_variables(model, config, jax.random.key(0)))
  variables = variables_from_smp(state_dict, abstract)
  if weights_from:  # a trained veinjax state, in both frameworks
    variables = jax.tree_util.tree_map(np.asarray, steps.restore_variables(config, model, weights_from)[0])
    missing, unexpected = smp_model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in smp_state_dict_from(variables).items()}, strict=False)
    if unexpected or any(not name.endswith("num_batches_tracked") for name in missing):
      raise ValueError(f"{weights_from}: its state does not fill smp's model (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
  batches = pipeline.create_train_dataset(config, epoch=0).take(num_batches).as_numpy_iterator()
  per_batch, markdown = [], []
  start = f"the weights of {weights_from}" if weights_from else f"smp's initialisation, seed {config.seed}"
  title = (f"{config.dataset.name} {config.image_size}x{config.image_size}, {config.model} ({config.encoder}), "
           f"loss {config.loss}, batch {config.batch_size}, {start}")
  veinjax_fns = {"veinjax_fp32": veinjax_gradient_fn(config, "float32"),
                 "veinjax_fp32_one_pass": veinjax_gradient_fn(config, "float32", one_pass_variance=True),
                 "veinjax_fp64": veinjax_gradient_fn(config, "float64")}
  for index, batch in enumerate(batches):
    reference = _kernels_as_hwio(pytorch_gradients(torch, smp_model, config, batch, torch.float64))
    gradients = {key: fn(variables, batch) for key, fn in veinjax_fns.items()}
    gradients["pytorch_fp32"] = _kernels_as_hwio(pytorch_gradients(torch, smp_model, config, batch, torch.float32))
    summaries = {key: summarize(relative_errors(g, reference)) for key, g in gradients.items()}
    per_batch.append(summaries)
    markdown.append(table_markdown(summaries, f"{title}: training batch {index + 1}"))
  overall = {key: {"median": float(np.median([b[key]["median"] for b in per_batch])),
                   "p90": float(np.median([b[key]["p90"] for b in per_batch])),
                   "max": float(np.median([b[key]["max"] for b in per_batch])),
                   "worst": per_batch[0][key]["worst"], "tensors": per_batch[0][key]["tensors"]}
             for key in per_batch[0]}
  markdown.append(table_markdown(overall, f"{title}: median over {len(per_batch)} batches (worst tensor: batch 1's)"))
  return {"per_batch": per_batch, "overall": overall, "markdown": "\n".join(markdown)}


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top
  torch_training.peer_main(argv, __file__, lambda: print(
      run(flags.FLAGS.config, flags.FLAGS.batches, flags.FLAGS.weights_from)["markdown"]))


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  from benchmarks import torch_training  # pylint: disable=g-import-not-at-top
  torch_training.preload()  # torch before TensorFlow (see torch_training.import_torch); a no-op without it
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from veinjax import cli  # pylint: disable=g-import-not-at-top
  config_flag = config_flags.DEFINE_config_file("config", None, "Training config file, e.g. "
                                                "configs/usgra_seg_best.py.", lock_config=True)
  flags.DEFINE_integer("batches", 3, "How many training batches of epoch 0 to take the gradients on.")
  flags.DEFINE_string("weights_from", "", "A veinjax run's workdir: take the gradients at its best state "
                      "(both frameworks) instead of smp's initialisation.")
  flags.mark_flags_as_required(["config"])
  cli.run(main, config_flag=config_flag)
