"""Converts a PyTorch .pth state dict (torchvision, timm, smp) to the .safetensors file veinjax loads.

  pip install torch            # only for this tool; veinjax itself never needs (or imports) torch
  python -m veinjax.tools.convert_weights resnet34-b627a593.pth resnet34.safetensors

veinjax never unpickles, so a .pth (a pickle) is converted once, here, with `torch.load(weights_only=True)`
(PyTorch's restricted unpickler: tensors and plain containers only, no code). A checkpoint that wraps the
state dict under "state_dict" or "model" is unwrapped. Tensors are written as float32 (integers kept),
under their own names; `veinjax.models.pretrained.load_encoder_weights` then maps them.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

USAGE = "usage: python -m veinjax.tools.convert_weights IN.pth OUT.safetensors"
NO_TORCH = ("convert_weights needs PyTorch to read a .pth file (a pickle); veinjax itself does not: "
            "pip install torch")


def _state_dict(checkpoint, source: str) -> dict:
  """The name -> tensor mapping inside a torch.load result."""
  for key in ("state_dict", "model"):
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
      checkpoint = checkpoint[key]
  if not isinstance(checkpoint, dict):
    raise SystemExit(f"{source}: holds a {type(checkpoint).__name__}, not a state dict of named tensors")
  return checkpoint


def convert(torch, source: pathlib.Path, target: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads `source` with torch, writes `target` (.safetensors or .npz); returns the arrays written."""
  state_dict = _state_dict(torch.load(source, map_location="cpu", weights_only=True), str(source))
  arrays, skipped = {}, []
  for name, value in state_dict.items():
    if not isinstance(value, torch.Tensor):
      skipped.append(name)
      continue
    array = value.detach().cpu()
    array = array.float() if array.is_floating_point() else array
    arrays[name] = np.ascontiguousarray(array.numpy())
  if skipped:
    print(f"skipped {len(skipped)} entries that are not tensors: {', '.join(skipped[:5])}")
  if target.suffix == ".npz":
    np.savez(target, **arrays)
  else:
    import safetensors.numpy  # pylint: disable=g-import-not-at-top

    safetensors.numpy.save_file(arrays, str(target))
  return arrays


def main(argv: list[str]) -> int:
  if len(argv) != 2 or pathlib.Path(argv[1]).suffix not in (".safetensors", ".npz"):
    print(USAGE + "  (OUT ends in .safetensors or .npz)", file=sys.stderr)
    return 2
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    print(NO_TORCH, file=sys.stderr)
    return 1
  source, target = pathlib.Path(argv[0]), pathlib.Path(argv[1])
  if not source.is_file():
    print(f"{source}: no such file", file=sys.stderr)
    return 2
  arrays = convert(torch, source, target)
  described = ""
  try:
    from veinjax.models import pretrained  # pylint: disable=g-import-not-at-top

    prefix = pretrained.find_prefix(arrays, str(source))
    described = f"; {pretrained.detect_resnet(arrays, prefix).name} (prefix {prefix!r})"
  except (ImportError, ValueError):
    pass  # Not a ResNet, or no jax here: the file is written all the same.
  print(f"wrote {target}: {len(arrays)} tensors{described}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
