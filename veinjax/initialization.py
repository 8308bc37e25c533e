"""Where a fresh run's variables come from, and the input normalisation that goes with them.

  config = with_input_normalization(config)         # fills input_mean / input_std (fresh start)
  variables = initial_variables(config, model)       # random init, then encoder_weights or init_from
  config = with_recorded_normalization(config, dir)  # resume / evaluation: the run's own config.json

A fresh run starts from (config fields, see configs/default.py):

- random initialisation (the default; `init_variables` seeded by `config.seed`);
- `encoder_weights`: a torchvision / timm ResNet state dict (.safetensors / .npz) loaded into the encoder
  by `veinjax.models.pretrained.load_encoder_weights`; the decoder and head stay random;
- `init_from`: another veinjax run's variables (`init_from_checkpoint` best | latest), all of them or
  only the encoder's (`init_from_scope`); the model, encoder and input channels must be the source's,
  `num_classes` may differ (the head is then re-initialised). The optimizer state is fresh, the step 0.

The input normalisation is part of the run's config (`input_mean`, `input_std`: one value per input channel,
empty = the plain [0, 1] input): the pipeline applies it after augmentation (`veinjax.data.pipeline`),
and because config.json records it, evaluation and inference (`pipeline.preprocess_for_model`) apply
the same. Unless given explicitly it is ImageNet's (`pretrained.imagenet_normalization(in_channels)`)
with `encoder_weights`, and the source run's with `init_from`.

Nothing here runs on a resumed run: a checkpoint already holds the variables, and config.json the
normalisation it was trained with. This module imports without TensorFlow.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from veinjax import checkpoint as checkpoint_lib
from veinjax import models
from veinjax import steps
from veinjax import workdir as workdir_lib
from veinjax.models import pretrained
from veinjax.models import resnet

INIT_SCOPES = ("all", "encoder")
INIT_CHECKPOINTS = checkpoint_lib.CHECKPOINT_CHOICES  # best, latest
# The fingerprint fields an init_from source must share (num_classes may differ: the head is re-initialised).
# unet_widths: `unet` runs only (the fingerprint has it for them).
_SHARED_WITH_SOURCE = ("model", "encoder", "unet_widths", "in_channels")
# The subtree of params and batch_stats that init_from_scope=encoder copies (every model names it so).
ENCODER_MODULE = "encoder"

__all__ = ["INIT_CHECKPOINTS", "INIT_SCOPES", "check_config", "check_sources", "copy_variables",
           "initial_variables", "with_input_normalization", "with_recorded_normalization"]


def _field(config, name: str, default: Any) -> Any:
  """A config field that configs written before it existed (an old config.json) lack."""
  return config.get(name, default)


def _normalization(config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  return (tuple(float(v) for v in _field(config, "input_mean", ()) or ()),
          tuple(float(v) for v in _field(config, "input_std", ()) or ()))


def _with_normalization(config, mean, std) -> ml_collections.ConfigDict:
  """A copy of `config` with input_mean / input_std set (the caller's config is left as it is)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.input_mean = tuple(float(v) for v in mean)
    config.input_std = tuple(float(v) for v in std)
  return config


# ---- Checks ----


def check_config(config) -> None:
  """The initialisation fields, without touching any file: choices, and what fits the model.

  Raises:
    ValueError: naming the flag (an unknown scope or checkpoint name, encoder_weights and init_from both
      set, encoder_weights for a model without a ResNet encoder).
  """
  weights, init_from = _field(config, "encoder_weights", ""), _field(config, "init_from", "")
  steps.check_choice(_field(config, "init_from_scope", "all"), INIT_SCOPES, "--config.init_from_scope")
  steps.check_choice(_field(config, "init_from_checkpoint", "best"), INIT_CHECKPOINTS,
                     "--config.init_from_checkpoint")
  if weights and init_from:
    raise ValueError(
        f"--config.encoder_weights={weights!r} and --config.init_from={init_from!r} both initialise the "
        "model; set one. To fine-tune a run, drop --config.encoder_weights (the source run's encoder "
        "is used); to start a new run from the pretrained encoder, drop --config.init_from.")
  if weights:
    if config.model in models.FIXED_ENCODERS or config.encoder not in resnet.RESNET_ENCODERS:
      what = (f"--config.model={config.model!r} has its own encoder ({models.FIXED_ENCODERS[config.model]})"
              if config.model in models.FIXED_ENCODERS else f"--config.encoder={config.encoder!r}")
      raise ValueError(
          f"--config.encoder_weights={weights!r} holds a ResNet encoder, but {what}: pretrained weights fit "
          f"a model with a ResNet encoder (--config.encoder={' | '.join(resnet.RESNET_ENCODERS)}, e.g. "
          "--config.model=resnet34_unet or deeplabv3plus). Drop --config.encoder_weights otherwise.")


def _source_config(config) -> ml_collections.ConfigDict:
  """init_from's config.json, checked to be a run this config can start from."""
  init_from = config.init_from
  if not os.path.isdir(init_from):
    raise FileNotFoundError(f"--config.init_from={init_from}: no such directory; give a train.py workdir.")
  if not os.path.exists(os.path.join(init_from, workdir_lib.CONFIG_FILE)):
    raise FileNotFoundError(f"--config.init_from={init_from} has no {workdir_lib.CONFIG_FILE}: it is not a "
                            "train.py workdir.")
  source = workdir_lib.load_config(init_from)
  theirs, ours = steps.fingerprint(source), steps.fingerprint(config)
  differ = [f"{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in _SHARED_WITH_SOURCE
            if k in ours and theirs.get(k) != ours[k]]
  if differ:
    raise ValueError(
        f"--config.init_from={init_from} is a run of another network ({'; '.join(differ)}); init_from needs "
        f"the same {', '.join(_SHARED_WITH_SOURCE)} (--config.num_classes may differ: the head is then "
        "re-initialised). Set those fields to the source run's, or use --config.encoder_weights.")
  return source


def check_sources(config) -> None:
  """The files a fresh start reads exist and fit, before any data is prepared: encoder_weights is read and
  checked against the model's shapes; init_from is a workdir of the same network with the checkpoint.

  Raises:
    FileNotFoundError, ValueError (pretrained.WeightsError for a pickle, an unknown format, a file of
      another depth or shape): naming the flag and the path.
  """
  check_config(config)
  weights = _field(config, "encoder_weights", "")
  if weights:
    suffix = os.path.splitext(weights)[1].lower()
    if suffix not in pretrained.WEIGHT_SUFFIXES:
      try:
        pretrained.read_state_dict(weights)  # raises the format error (with the convert command) unread
      except pretrained.WeightsError as e:
        raise pretrained.WeightsError(f"--config.encoder_weights: {e}") from None
    if not os.path.isfile(weights):
      raise FileNotFoundError(f"--config.encoder_weights={weights}: no such file (a .safetensors or .npz "
                              "ResNet state dict; convert a .pth with "
                              f"{pretrained.CONVERT_COMMAND} IN.pth OUT.safetensors).")
    # Depth, names, shapes, channels: against the model's shapes only (nothing is initialised).
    _load_encoder_weights(config, steps.abstract_variables(steps.create_model(config), config), log=False)
  if _field(config, "init_from", ""):
    _source_config(config)
    which = _field(config, "init_from_checkpoint", "best")
    path = os.path.join(config.init_from, checkpoint_lib.BEST_DIR if which == "best" else
                        checkpoint_lib.LATEST_DIR)
    if not os.path.isdir(path) or not any(d.isdigit() for d in os.listdir(path)):
      other = "latest" if which == "best" else "best"
      raise FileNotFoundError(f"--config.init_from={config.init_from} has no {which} checkpoint ({path}); "
                              f"train that run first or set --config.init_from_checkpoint={other}.")


# ---- The input normalisation ----


def with_input_normalization(config) -> ml_collections.ConfigDict:
  """A copy of `config` with the input normalisation of a fresh start filled in.

  input_mean / input_std given (non-empty): kept (checked by `veinjax.data.pipeline.input_normalization`).
  Otherwise: ImageNet's for `encoder_weights` (`pretrained.imagenet_normalization(in_channels)`), the
  source run's (its config.json) for `init_from`, else empty (the plain [0, 1] input). Idempotent.
  """
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow: the reader checks)
  check_config(config)
  mean, std = _normalization(config)
  if not mean and not std:
    if _field(config, "encoder_weights", ""):
      if config.in_channels not in (1, 3):
        raise ValueError(f"--config.encoder_weights: ImageNet weights take 1 (gray, folded) or 3 (RGB) input "
                         f"channels, not --config.in_channels={config.in_channels}.")
      mean, std = pretrained.imagenet_normalization(config.in_channels)
    elif _field(config, "init_from", ""):
      mean, std = _normalization(_source_config(config))
  config = _with_normalization(config, mean, std)
  pipeline.input_normalization(config)
  return config


def with_recorded_normalization(config, workdir: str) -> ml_collections.ConfigDict:
  """A copy of `config` with the normalisation that the run in `workdir` was trained with (its config.json;
  empty for runs from before the field existed). A config giving other non-empty values is an error: the
  checkpoint only works on inputs normalised as in training. Without a config.json, `config` as it is."""
  if not os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    return _with_normalization(config, *_normalization(config))
  recorded = _normalization(workdir_lib.load_config(workdir))
  given = _normalization(config)
  if given != ((), ()) and given != recorded:
    raise ValueError(
        f"{workdir} was trained with input_mean={recorded[0]} input_std={recorded[1]} (its "
        f"{workdir_lib.CONFIG_FILE}), but this config sets input_mean={given[0]} input_std={given[1]}: the "
        "checkpoint works only on inputs normalised as in training. Drop --config.input_mean / input_std "
        "(the recorded values are used) or use the run's config.json.")
  return _with_normalization(config, *recorded)


# ---- Variables ----


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(flax.core.unfreeze(tree)) if tree else {}


def head_modules(params) -> list[str]:
  """The top-level modules of a model's params that produce its logits (`layers.segmentation_head`: 'head';
  FCN-8s: 'score_fr', 'score_pool4', 'score_pool3'): the convs whose output channels are num_classes."""
  return sorted(name for name in params if name == "head" or name.startswith("score_"))


def copy_variables(source: dict, target: dict, scope: str = "all") -> tuple[dict, list[str]]:
  """`target` ({'params', 'batch_stats'}) with the leaves of `source` copied in.

  scope "all": every leaf; leaves whose shapes differ must be those of the head (`head_modules`: another
  num_classes) and keep `target`'s values. scope "encoder": only the 'encoder' subtree of params and
  batch_stats. Returns (variables, the paths kept from `target` because their shapes differ).

  Raises:
    ValueError: a tree without an 'encoder' module (scope encoder), or leaves outside the head that are
      missing or differ in shape (not the same network).
  """
  steps.check_choice(scope, INIT_SCOPES, "--config.init_from_scope")
  out, kept, mismatched = {}, [], []
  heads = set(head_modules(target.get("params", {})))
  for collection in ("params", "batch_stats"):
    src, dst = _flat(source.get(collection)), _flat(target.get(collection))
    if scope == "encoder" and collection == "params" and not any(k[0] == ENCODER_MODULE for k in dst):
      raise ValueError(f"--config.init_from_scope=encoder: the model has no '{ENCODER_MODULE}' module; its "
                       f"modules are {', '.join(sorted({k[0] for k in dst}))}. Use init_from_scope=all.")
    new = {}
    for key, leaf in dst.items():
      name = "/".join((collection, *key))
      if scope == "encoder" and key[0] != ENCODER_MODULE:
        new[key] = leaf
      elif key in src and np.shape(src[key]) == np.shape(leaf):
        new[key] = jnp.asarray(src[key], dtype=leaf.dtype)
      elif key[0] in heads:
        new[key] = leaf
        kept.append(f"{name} {list(np.shape(leaf))}" + (f" (source {list(np.shape(src[key]))})"
                                                        if key in src else ""))
      else:
        mismatched.append(f"{name} {list(np.shape(leaf))}" + (f" vs {list(np.shape(src[key]))}"
                                                              if key in src else " (missing)"))
    if scope == "all":
      mismatched += [f"{'/'.join((collection, *key))} (not in this model)" for key in src
                     if key not in dst and key[0] not in heads]
    out[collection] = traverse_util.unflatten_dict(new) if new else {}
  if mismatched:
    raise ValueError(f"The init_from variables do not fit this model outside its head: "
                     f"{'; '.join(mismatched[:5])}{' ...' if len(mismatched) > 5 else ''}.")
  return out, kept


def _load_encoder_weights(config, variables: dict, log: bool = True) -> dict:
  path = config.encoder_weights
  try:
    variables, report = pretrained.load_encoder_weights(path, config.encoder, variables, config.in_channels)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"--config.encoder_weights={path}: {e}") from None
  except pretrained.WeightsError as e:
    raise pretrained.WeightsError(f"--config.encoder_weights: {e}") from None
  if not log:
    return variables
  logging.info("Encoder weights: %s", report.summary())
  mean, std = _normalization(config)
  if report.mean is None:
    logging.warning("%s: its conv1 already takes %d channels, so the normalisation its weights expect is "
                    "unknown; this run normalises inputs with mean %s std %s (--config.input_mean / "
                    "input_std).", path, config.in_channels, mean or None, std or None)
  elif (tuple(report.mean), tuple(report.std)) != (mean, std):
    logging.warning("%s expects inputs normalised with mean %s std %s; this run uses mean %s std %s "
                    "(--config.input_mean / input_std).", path, report.mean, report.std, mean, std)
  return variables


def _init_from(config, variables: dict) -> dict:
  source_config = _source_config(config)
  which = _field(config, "init_from_checkpoint", "best")
  scope = _field(config, "init_from_scope", "all")
  source_model = steps.create_model(source_config)
  tree, meta = steps.restore_variables(source_config, source_model, config.init_from, which)
  variables, kept = copy_variables(tree, variables, scope)
  logging.info("Initialised %s from %s (%s checkpoint, step %s); fresh optimizer, step 0.",
               "all variables" if scope == "all" else "the encoder", meta.get("path"), which, meta.get("step"))
  if kept:
    logging.info("Head re-initialised (num_classes %d there, %d here): %s", int(source_config.num_classes),
                 int(config.num_classes), ", ".join(kept))
  if _normalization(source_config) != _normalization(config):
    logging.warning("%s was trained on inputs normalised with mean/std %s; this run uses %s "
                    "(--config.input_mean / input_std).", config.init_from, _normalization(source_config),
                    _normalization(config))
  return variables


def initial_variables(config, model: flax.linen.Module, rng: jax.Array | None = None) -> dict:
  """{'params', 'batch_stats'} a fresh run starts from: `steps.init_variables` (seeded by `config.seed`
  unless `rng` is given), then `encoder_weights` or `init_from` when set. Without either, exactly
  `steps.init_variables`. `config` should have passed `with_input_normalization`."""
  check_config(config)
  rng = jax.random.key(config.seed) if rng is None else rng
  variables = steps.init_variables(model, config, rng)
  if _field(config, "encoder_weights", ""):
    variables = _load_encoder_weights(config, variables)
  elif _field(config, "init_from", ""):
    variables = _init_from(config, variables)
  return variables
