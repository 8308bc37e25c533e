"""PyTorch peers of veinjax's real-time benchmark: segmentation_models_pytorch U-Nets, end to end on CPU.

  python benchmarks/torch_peers.py --cores=1 --size=256 --runs=200     # prints one JSON line per peer

Run by `python -m benchmarks.realtime` (with its `--torch_python`, any interpreter that has torch and
segmentation-models-pytorch; neither is a veinjax requirement). It needs only torch, smp and numpy, so it
uses argparse, not absl. End to end as veinjax's rows: a uint8 frame [S, S] in (numpy), /255, the eval
forward pass at batch 1, sigmoid > 0.5, a uint8 mask [S, S] out; median of --runs frames after --warmup.
"""

import argparse
import json
import os
import statistics
import sys
import time

PEERS = {"smp Unet(resnet34)": "resnet34", "smp Unet(mobilenetv3_small)": "timm-mobilenetv3_small_100"}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cores", type=int, default=1)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--runs", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=20)
  args = parser.parse_args()
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
  try:
    import numpy as np  # pylint: disable=g-import-not-at-top
    import segmentation_models_pytorch as smp  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(json.dumps({"error": f"{e}: pip install torch segmentation-models-pytorch"}), flush=True)
    sys.exit(0)
  torch.set_num_threads(args.cores)
  frames = np.random.default_rng(0).integers(0, 256, (16, args.size, args.size), dtype=np.uint8)
  for name, encoder in PEERS.items():
    model = smp.Unet(encoder, encoder_weights=None, in_channels=1, classes=1).eval()

    def end_to_end(frame):
      with torch.inference_mode():
        x = torch.from_numpy(frame).to(torch.float32).div_(255.0)[None, None]
        return (model(x)[0, 0] > 0).to(torch.uint8).numpy()  # sigmoid > 0.5 <=> logit > 0

    for i in range(args.warmup):
      end_to_end(frames[i % len(frames)])
    times = []
    for i in range(args.runs):
      start = time.perf_counter()
      end_to_end(frames[i % len(frames)])
      times.append(time.perf_counter() - start)
    print(json.dumps({"model": name, "runtime": f"PyTorch {torch.__version__} eager", "quantize": "none",
                      "params": sum(p.numel() for p in model.parameters()), "cores": args.cores,
                      "ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}), flush=True)


if __name__ == "__main__":
  main()
