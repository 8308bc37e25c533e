r"""Accuracy of each export of a run against its JAX model, on the run's own test split.

  python -m benchmarks.export_accuracy --workdir=runs/realtime [--split=test]
  python -m benchmarks.export_accuracy --workdir=runs/a,runs/b,runs/c        # seeds: mean ± std

For each workdir: the JAX model (the float32 reference) and every export that export.py makes (TFLite float,
float16, dynamic and int8 calibrated on the train split; ONNX float and int8), each run on the split's frames
at the model's size (resized as the pipeline resizes them), masks from the 0.5 threshold (the argmax for
several classes), scored with veinjax.metrics against the split's masks at the same size: foreground IoU and
Dice, and the share of pixels whose mask equals the JAX model's. A quantised export "keeps the accuracy" when
its Dice is within 0.01 of the float model's (issue 14). The exports are written under WORKDIR/export/.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

_WORKDIRS = flags.DEFINE_list("workdir", None, "train.py workdir(s) (several: mean ± std over them).")
_SPLIT = flags.DEFINE_string("split", "test", "The split to score.")
_VARIANTS = flags.DEFINE_list("variants", ["tflite:none", "tflite:float16", "tflite:dynamic", "tflite:int8",
                                           "onnx:none", "onnx:int8"], "format:quantize pairs to export and score.")
flags.mark_flag_as_required("workdir")


def _scores(predicted, masks, reference, num_classes: int) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from veinjax import metrics  # pylint: disable=g-import-not-at-top
  num_labels = metrics.num_labels_for_classes(num_classes)
  confusion = np.asarray(metrics.confusion_matrix(predicted, masks, num_labels))
  summary = metrics.summarize(confusion)
  return {"iou": summary["iou"], "dice": summary["dice"], "agree": float(np.mean(predicted == reference))}


def score_workdir(workdir: str, split: str, variants: Sequence[str]) -> dict[str, dict]:
  """{variant: {'iou', 'dice', 'agree'}} with 'jax' the float32 reference."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from veinjax import export as export_lib  # pylint: disable=g-import-not-at-top
  from veinjax import exported  # pylint: disable=g-import-not-at-top
  from veinjax import inference  # pylint: disable=g-import-not-at-top

  model, variables, config = inference.load_for_inference(workdir)
  frames, masks = export_lib.split_examples(config, split)
  function = jax.jit(export_lib.frame_function(model, variables, config))
  probabilities = np.concatenate([np.asarray(function(frame[None])) for frame in frames])
  reference = exported.class_mask(probabilities)
  out = {"jax": _scores(reference, masks, reference, config.num_classes)}
  for variant in variants:
    fmt, _, quantize = variant.partition(":")
    path = export_lib.export_workdir(workdir, fmt, quantize=quantize or "none")
    runtime = exported.load(path)
    predicted = np.stack([runtime.mask(frame) for frame in frames])
    out[variant] = _scores(predicted, masks, reference, config.num_classes)
    print(f"{workdir} {variant}: {out[variant]}", file=sys.stderr, flush=True)
  return out


def _mean_std(values: Sequence[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(results: Sequence[dict[str, dict]]) -> str:
  """Markdown: one row per variant, mean ± std over the workdirs, and the Dice change from the JAX model."""
  lines = ["| export | foreground IoU | foreground Dice | Dice - JAX float (max over runs) | "
           "pixels equal to the JAX mask |", "|---|---:|---:|---:|---:|"]
  for variant in results[0]:
    rows = [r[variant] for r in results]
    worst = max((abs(r[variant]["dice"] - r["jax"]["dice"]) for r in results), key=abs)
    signed = next(r[variant]["dice"] - r["jax"]["dice"] for r in results
                  if abs(r[variant]["dice"] - r["jax"]["dice"]) == worst)
    lines.append(f"| {'JAX float32 (reference)' if variant == 'jax' else variant} | "
                 f"{_mean_std([r['iou'] for r in rows])} | {_mean_std([r['dice'] for r in rows])} | "
                 f"{signed:+.4f} | {_mean_std([r['agree'] for r in rows])} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  results = [score_workdir(w, _SPLIT.value, _VARIANTS.value) for w in _WORKDIRS.value]
  print(table(results))
  print(f"\n{_SPLIT.value} split of {', '.join(_WORKDIRS.value)}; masks at the model's size.")


if __name__ == "__main__":
  app.run(main)
