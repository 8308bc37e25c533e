"""Pretrained ResNet encoders: torchvision / timm state dicts -> veinjax encoder variables.

  variables = model.init(key, x, train=False)            # any model with a ResNet encoder
  variables, report = load_encoder_weights("resnet34.safetensors", "resnet34", variables)
  mean, std = report.mean, report.std                    # == imagenet_normalization(in_channels)
  x = normalize(images_in_0_1, mean, std)                # at training and at inference alike

Files: `.safetensors` or `.npz` holding a torchvision (or timm, same names) ResNet-18/34/50 state dict
(`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, ...,
`fc.weight`), optionally under a prefix (`encoder.` of an smp checkpoint, `module.` of DataParallel),
found by itself. veinjax never unpickles (a pickle can run code): a `.pth` is refused with the command
that converts it once, `python -m veinjax.tools.convert_weights IN.pth OUT.safetensors`.

Mapping: conv kernels OIHW -> HWIO; BatchNorm weight/bias -> `params` scale/bias, running mean/var ->
`batch_stats` mean/var; the encoder is the `encoder` submodule of `resnet34_unet` and `deeplabv3plus`
(its dilation at output stride 16 changes no shape). Every tensor is used or reported: `fc.*` (veinjax
encoders have no classifier), `*.num_batches_tracked` (not needed) and anything else unmatched are listed
in `report.unused`; a missing or mis-shaped tensor, or a file of another depth, is a `WeightsError`.

Input channels (the weights expect ImageNet-normalised RGB, mean m_c / std s_c on [0, 1]):
- 3: used as is, normalise with (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).
- 1: the first conv's RGB kernels are folded into one, and the gray input normalised so that the gray
  path computes what the RGB path computes on the gray image replicated to RGB. Normalising gray g with
  y = mean_c (g - m_c) / s_c, i.e. std s = 1 / mean_c(1 / s_c) and mean m = s * mean_c(m_c / s_c)
  (0.2260, 0.4488), and using the kernel K = sum_c W_c * s / s_c (smp's plain sum, each channel weighted
  by s / s_c ~ 1) reproduces the RGB path's g-dependent term exactly. What is left is a constant per filter,
  delta = sum_c (m - m_c) / s_c * sum(W_c), zero when a filter's three kernels are equal (a "gray"
  filter), and folded into bn1's running mean (eval mode; in training BatchNorm subtracts it anyway).
  So the gray path equals the RGB path exactly wherever conv1 sees no zero padding; within 3 pixels of the
  border the padded taps miss their share of delta, and the difference spreads inward layer by layer.
  For bit-equal RGB behaviour on gray data, use in_channels=3 and replicate the gray image.
- Other counts are refused (smp repeats and rescales the kernels there; no principled normalisation).
A file whose conv1 already has the model's channel count is used as is (its normalisation is unknown).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from veinjax.models import resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Where the ResNet encoder sits in the variables of every model that has one (resnet34_unet, deeplabv3plus).
ENCODER_PATH = ("encoder",)
WEIGHT_SUFFIXES = (".safetensors", ".npz")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")
CONVERT_COMMAND = "python -m veinjax.tools.convert_weights"

# (block, stage sizes) -> torchvision name; all but the veinjax encoders are for clear error messages.
_KNOWN_LAYOUTS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}


class WeightsError(ValueError):
  """A weights file that cannot initialise the encoder; the message names the tensor or file and the fix."""


class ResNetLayout(NamedTuple):
  """The architecture a state dict holds, read from its names and shapes."""

  name: str  # torchvision's name, or a description such as "a bottleneck ResNet (3, 4, 23, 3)"
  block: str  # "basic" or "bottleneck"
  stage_sizes: tuple[int, ...]
  width: int  # channels of the first block's first conv (64 for resnet18/34/50, 128 for wide_resnet50_2)


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What `load_encoder_weights` did: record `as_dict()` in the run config."""

  source: str
  encoder: str
  prefix: str
  loaded: tuple[str, ...]
  unused: Mapping[str, str]  # tensor name -> why it was not used
  first_conv: str
  mean: tuple[float, ...] | None  # input normalisation the weights expect (None: unknown)
  std: tuple[float, ...] | None

  def as_dict(self) -> dict[str, Any]:
    """JSON-friendly summary (unused names with their reasons, not the loaded list)."""
    return {"source": self.source, "encoder": self.encoder, "prefix": self.prefix,
            "num_loaded": len(self.loaded), "unused": dict(self.unused), "first_conv": self.first_conv,
            "mean": self.mean, "std": self.std}

  def summary(self) -> str:
    """One line for the log."""
    reasons: dict[str, list[str]] = {}
    for name, why in self.unused.items():
      reasons.setdefault(why.split(":")[0], []).append(name)
    unused = "; ".join(f"{len(names)} {why} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                       for why, names in reasons.items())
    return (f"{self.source}: {self.encoder} encoder, {len(self.loaded)} tensors loaded; conv1 "
            f"{self.first_conv}; unused: {unused or 'none'}; input mean {self.mean} std {self.std}")


def imagenet_normalization(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per input channel on [0, 1] images that ImageNet weights expect (see the module doc).

  For 1 channel: std s = 1 / mean_c(1 / s_c), mean m = s * mean_c(m_c / s_c), so that (g - m) / s is the
  mean over RGB of (g - m_c) / s_c: the normalisation under which the folded conv1 matches the RGB path.
  """
  if in_channels == 3:
    return IMAGENET_MEAN, IMAGENET_STD
  if in_channels == 1:
    inv_std = 1.0 / np.asarray(IMAGENET_STD, np.float64)
    std = 1.0 / float(np.mean(inv_std))
    mean = std * float(np.mean(np.asarray(IMAGENET_MEAN, np.float64) * inv_std))
    return (mean,), (std,)
  raise ValueError(f"ImageNet weights take 1 (gray) or 3 (RGB) input channels, got in_channels={in_channels}")


def normalize(images: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
  """(images - mean) / std over the last (channel) axis; numpy, jax and tf tensors alike.

  `images` are floats on [0, 1] (the pipeline's output), channels last.
  """
  if images.shape[-1] not in (None, len(mean)) or len(mean) != len(std):
    raise ValueError(f"normalize: images with {images.shape[-1]} channels, mean {tuple(mean)} and std "
                     f"{tuple(std)}: give one mean and one std per channel")
  return (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """name -> array from a .safetensors or .npz file; never unpickles."""
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix in PICKLE_SUFFIXES:
    raise WeightsError(
        f"{path}: a PyTorch pickle file; veinjax never unpickles (a pickle can run code). Convert it once "
        f"(needs torch): {CONVERT_COMMAND} {path} {path.with_suffix('.safetensors')}")
  if suffix not in WEIGHT_SUFFIXES:
    raise WeightsError(f"{path}: unknown weights format {suffix or '(no extension)'!r}; use .safetensors or "
                       f".npz (convert a torchvision .pth with {CONVERT_COMMAND} IN.pth OUT.safetensors)")
  if not path.is_file():
    raise FileNotFoundError(f"weights file {path} not found")
  return _read_safetensors(path) if suffix == ".safetensors" else _read_npz(path)


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  try:
    return dict(safetensors.numpy.load_file(str(path)))
  except Exception as e:  # SafetensorError, and numpy's refusal of bfloat16.
    raise WeightsError(f"{path}: not a readable safetensors file of float32/float16 tensors ({e}); "
                       f"write one with {CONVERT_COMMAND} IN.pth OUT.safetensors") from e


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as data:
      if not isinstance(data, np.lib.npyio.NpzFile):
        raise WeightsError(f"{path}: a single .npy array, not an .npz of named tensors")
      return {name: data[name] for name in data.files}
  except ValueError as e:
    if "pickle" in str(e):
      raise WeightsError(f"{path}: holds pickled (object) data; veinjax never unpickles: save plain numeric "
                         "arrays, np.savez(path, **{name: array})") from e
    raise
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise WeightsError(f"{path}: not a readable .npz file ({e})") from e


def find_prefix(state_dict: Mapping[str, Any], source: str = "state dict") -> str:
  """The prefix before `conv1.weight` of the one ResNet in the dict ("" for a plain torchvision file)."""
  end = "layer1.0.conv1.weight"
  prefixes = sorted({k[: -len(end)] for k in state_dict if k.endswith(end)}, key=len)
  if not prefixes:
    first = ", ".join(list(state_dict)[:5])
    raise WeightsError(f"{source}: no ResNet state dict (no '{end}' tensor); its first tensors: {first}")
  if len(prefixes) > 1:
    raise WeightsError(f"{source}: several ResNets, under prefixes {prefixes}; pass prefix= to choose one")
  return prefixes[0]


def detect_resnet(state_dict: Mapping[str, Any], prefix: str = "") -> ResNetLayout:
  """Which ResNet the state dict holds, from its `layer<i>.<j>.` names and first block's shapes."""
  blocks: dict[int, int] = {}
  for name in state_dict:
    match = re.match(re.escape(prefix) + r"layer(\d+)\.(\d+)\.", name)
    if match:
      stage, block = int(match.group(1)), int(match.group(2))
      blocks[stage] = max(blocks.get(stage, 0), block + 1)
  stage_sizes = tuple(blocks.get(i, 0) for i in range(1, max(blocks, default=0) + 1))
  kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state_dict else "basic"
  first = state_dict.get(f"{prefix}layer1.0.conv1.weight")
  width = int(np.shape(first)[0]) if first is not None else 0
  name = _KNOWN_LAYOUTS.get((kind, stage_sizes), f"a {kind}-block ResNet with stages {stage_sizes}")
  if width != 64:
    name = f"a {kind}-block ResNet with stages {stage_sizes} and width {width} (e.g. wide_resnet50_2)"
  return ResNetLayout(name, kind, stage_sizes, width)


def _tree_layout(encoder_params: Mapping[str, Any]) -> ResNetLayout:
  """The layout of veinjax encoder params (module names `layer<i>_<j>`), named as torchvision does."""
  blocks: dict[int, int] = {}
  for module in encoder_params:
    match = re.fullmatch(r"layer(\d+)_(\d+)", module)
    if match:
      stage, block = int(match.group(1)), int(match.group(2))
      blocks[stage] = max(blocks.get(stage, 0), block + 1)
  stage_sizes = tuple(blocks.get(i, 0) for i in range(1, max(blocks, default=0) + 1))
  kind = "bottleneck" if "conv3" in encoder_params.get("layer1_0", {}) else "basic"
  name = _KNOWN_LAYOUTS.get((kind, stage_sizes), f"a {kind}-block ResNet with stages {stage_sizes}")
  return ResNetLayout(name, kind, stage_sizes, 64)


def fold_rgb_kernel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """RGB conv1 weight [O, 3, H, W] -> (gray weight [O, 1, H, W], per-filter offset delta [O]).

  With the 1-channel `imagenet_normalization`, conv(gray, folded) + delta equals the RGB conv of the gray
  image replicated to RGB and ImageNet-normalised, wherever no zero padding is involved (module doc).
  """
  w = np.asarray(weight, np.float64)
  (mean,), (std,) = imagenet_normalization(1)
  rgb_mean, rgb_std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
  folded = np.sum(w * (std / rgb_std)[None, :, None, None], axis=1, keepdims=True)
  delta = np.sum(w.sum(axis=(2, 3)) * ((mean - rgb_mean) / rgb_std)[None, :], axis=1)
  return folded.astype(np.float32), delta


def torch_name(module_path: Sequence[str], leaf: str) -> str:
  """torchvision's name of a veinjax encoder variable: ('layer1_0', 'downsample_bn'), 'var' ->
  'layer1.0.downsample.1.running_var'."""
  parts = []
  for module in module_path:
    match = re.fullmatch(r"layer(\d+)_(\d+)", module)
    if match:
      parts.append(f"layer{match.group(1)}.{match.group(2)}")
    else:
      parts.append({"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(module, module))
  return ".".join(parts + [_LEAF_TO_TORCH[leaf]])


def _torch_shape(leaf: str, shape: Sequence[int]) -> tuple[int, ...]:
  """The PyTorch shape of a veinjax leaf: kernels HWIO -> OIHW, vectors unchanged."""
  return (shape[3], shape[2], shape[0], shape[1]) if leaf == "kernel" else tuple(shape)


def load_encoder_weights(
    path: str | pathlib.Path,
    encoder_name: str,
    variables: Mapping[str, Any],
    in_channels: int | None = None,
    *,
    prefix: str | None = None,
    encoder_path: Sequence[str] = ENCODER_PATH,
) -> tuple[dict[str, Any], LoadReport]:
  """Reads a .safetensors / .npz ResNet state dict into the encoder of a model's variables.

  Args:
    path: the weights file.
    encoder_name: the model's encoder (`config.encoder`): resnet18, resnet34 or resnet50.
    variables: the model's {'params', 'batch_stats'} (e.g. from `model.init`, or `jax.eval_shape` of it:
      only the encoder's shapes and dtypes are read; everything else is returned untouched).
    in_channels: the model's input channels (checked against its first conv); None reads it from there.
    prefix: the tensors' name prefix; None finds it ("" for torchvision files, "encoder." for smp).
    encoder_path: where the encoder sits in the params / batch_stats trees.

  Returns:
    (new variables, `LoadReport`): new encoder leaves, the report's mean/std to normalise inputs with.

  Raises:
    WeightsError: pickle or unknown format, a file for another depth, missing or mis-shaped tensors,
      an unsupported channel count. FileNotFoundError: no such file.
  """
  state_dict = read_state_dict(path)
  return encoder_variables_from_state_dict(state_dict, encoder_name, variables, in_channels, prefix=prefix,
                                           encoder_path=encoder_path, source=str(path))


def encoder_variables_from_state_dict(
    state_dict: Mapping[str, Any],
    encoder_name: str,
    variables: Mapping[str, Any],
    in_channels: int | None = None,
    *,
    prefix: str | None = None,
    encoder_path: Sequence[str] = ENCODER_PATH,
    source: str = "state dict",
) -> tuple[dict[str, Any], LoadReport]:
  """`load_encoder_weights` on a name -> array mapping already in memory."""
  if encoder_name not in resnet.RESNET_ENCODERS:
    raise WeightsError(f"pretrained weights fit ResNet encoders ({', '.join(resnet.RESNET_ENCODERS)}), "
                       f"not encoder {encoder_name!r}")
  frozen = isinstance(variables, flax.core.FrozenDict)
  flat = traverse_util.flatten_dict(flax.core.unfreeze(variables))
  encoder_path = tuple(encoder_path)
  targets = {k: v for k, v in flat.items()
             if k[0] in ("params", "batch_stats") and k[1:1 + len(encoder_path)] == encoder_path}
  _check_tree(variables, targets, encoder_name, encoder_path)
  kernel = flat[("params", *encoder_path, "conv1", "kernel")]
  model_channels = int(kernel.shape[2])
  if in_channels is not None and in_channels != model_channels:
    raise WeightsError(f"in_channels={in_channels} but the model's first conv takes {model_channels} "
                       "channels; pass the in_channels the model was initialised with")
  prefix = find_prefix(state_dict, source) if prefix is None else prefix
  layout = detect_resnet(state_dict, prefix)
  if layout.name != encoder_name:
    raise WeightsError(f"{source} holds {layout.name} weights ({layout.block} blocks {layout.stage_sizes}), "
                       f"but the model's encoder is {encoder_name}: create the model with "
                       f"encoder={layout.name!r} or use {encoder_name} weights")
  values, loaded, first_conv, rgb = _convert(state_dict, targets, encoder_path, prefix, model_channels,
                                             source, encoder_name)
  flat.update(values)
  new = traverse_util.unflatten_dict(flat)
  mean, std = imagenet_normalization(model_channels) if rgb else (None, None)
  report = LoadReport(source, encoder_name, prefix, tuple(loaded), _unused(state_dict, loaded, prefix),
                      first_conv, mean, std)
  return (flax.core.freeze(new) if frozen else new), report


def _check_tree(variables, targets, encoder_name, encoder_path) -> None:
  """The variables hold a ResNet encoder at encoder_path, of the depth `encoder_name` says."""
  where = "/".join(encoder_path)
  encoder_params = variables.get("params", {})
  for key in encoder_path:
    encoder_params = encoder_params.get(key, {}) if hasattr(encoder_params, "get") else {}
  if ("params", *encoder_path, "conv1", "kernel") not in targets or "layer1_0" not in encoder_params:
    raise WeightsError(f"the variables have no ResNet encoder at params/{where}; pretrained weights fit "
                       "models with a ResNet encoder (resnet34_unet, deeplabv3plus), not unet or fcn8s")
  tree = _tree_layout(encoder_params)
  factory = resnet.RESNET_ENCODERS[encoder_name]
  kind = "bottleneck" if factory.keywords["block_cls"] is resnet.Bottleneck else "basic"
  if (tree.block, tree.stage_sizes) != (kind, tuple(factory.keywords["stage_sizes"])):
    raise WeightsError(f"the variables hold a {tree.name} encoder but encoder_name={encoder_name!r}; pass "
                       "the encoder the model was created with (config.encoder)")


def _convert(state_dict, targets, encoder_path, prefix, model_channels, source, encoder_name):
  """The new encoder leaves, the torch names used, how conv1 was treated and whether it was RGB."""
  values, loaded, missing, misshaped = {}, [], [], []
  first_conv, rgb, delta = "used as is (3 RGB channels)", True, None
  for key, leaf in sorted(targets.items()):
    name = prefix + torch_name(key[1 + len(encoder_path):-1], key[-1])
    expected = _torch_shape(key[-1], leaf.shape)
    if name not in state_dict:
      missing.append(f"{name} {expected}")
      continue
    array = np.asarray(state_dict[name])
    if key[1 + len(encoder_path):] == ("conv1", "kernel"):
      array, first_conv, rgb, delta = _first_conv(array, model_channels, name, source)
    if array.shape != expected:
      misshaped.append(f"{name} has shape {array.shape}, expected {expected}")
      continue
    if key[-1] == "kernel":
      array = np.transpose(array, (2, 3, 1, 0))
    values[key] = array.astype(np.float64)
    loaded.append(name)
  if missing or misshaped:
    problems = [f"missing {m}" for m in missing] + misshaped
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    raise WeightsError(
        f"{source} does not fit the {encoder_name} encoder (shapes in PyTorch's OIHW): {shown}")
  if delta is not None:
    values[("batch_stats", *encoder_path, "bn1", "mean")] -= delta
  return ({k: jnp.asarray(v, targets[k].dtype) for k, v in values.items()}, loaded, first_conv, rgb)


def _first_conv(array: np.ndarray, model_channels: int, name: str, source: str):
  """conv1's weight for the model's channel count: (weight, description, is_rgb, bn1 mean offset)."""
  if array.ndim != 4:
    return array, "mis-shaped", False, None  # Reported with the expected shape by the caller.
  file_channels = array.shape[1]
  if file_channels == model_channels:
    return array, f"used as is ({model_channels} channels)", file_channels == 3, None
  if file_channels == 3 and model_channels == 1:
    folded, delta = fold_rgb_kernel(array)
    how = "folded RGB -> 1 channel (kernels weighted by s/s_c and summed; bn1 mean shifted)"
    return folded, how, True, delta
  raise WeightsError(f"{source}: {name} has {file_channels} input channels and the model {model_channels}; "
                     "RGB weights fit in_channels=3 (as is) or in_channels=1 (folded), nothing else")


def _unused(state_dict: Mapping[str, Any], loaded: Sequence[str], prefix: str) -> dict[str, str]:
  """name -> why, for every tensor of the file that did not become a variable."""
  loaded = set(loaded)
  unused = {}
  for name in state_dict:
    if name in loaded:
      continue
    if not name.startswith(prefix):
      unused[name] = f"outside the encoder (prefix {prefix!r})"
    elif name[len(prefix):].startswith("fc."):
      unused[name] = "classifier head: veinjax encoders have none"
    elif name.endswith("num_batches_tracked"):
      unused[name] = "BatchNorm step counter: not needed"
    else:
      unused[name] = "no veinjax encoder variable of this name"
  return unused
