"""Figures for the paper reproduction: training curves (Fig. 3/4) and a prediction grid (Fig. 5).

Pure plotting: every function takes arrays / dicts already in memory and writes one PNG. Matplotlib runs
on the Agg backend so the figures render on a headless training machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402

from veinjax import viz  # noqa: E402

# One panel per quantity of the paper's Fig. 3/4: (panel title, [(history key, line label), ...]); the
# first line of a panel is solid (training), the second dashed (the evaluation split).
_CURVE_PANELS = (
    ("Loss", (("train_loss", "train"), ("val_loss", "{split}"))),
    ("ACC", (("train_acc", "train"), ("acc", "{split}"))),
    ("mIoU", (("train_miou", "train"), ("miou", "{split}"))),
)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str,
                         title: str = "", eval_split: str = "validation") -> None:
  """Writes loss, ACC and mIoU per epoch side by side (train solid, evaluation split dashed), per run.

  Args:
    histories: run label (e.g. "seed 0") -> that run's evaluation records in epoch order, each a dict
      with at least "epoch" and any of "train_loss", "val_loss", "train_acc", "acc", "train_miou", "miou"
      (missing keys are skipped).
    path: the PNG to write.
    title: the figure title (e.g. the model's name).
    eval_split: the split "val_loss", "acc" and "miou" were measured on, for the legend.
  """
  if not histories:
    raise ValueError(f"No training history to plot for {path!r}.")
  fig, axes = plt.subplots(1, len(_CURVE_PANELS), figsize=(4.2 * len(_CURVE_PANELS), 3.4),
                           squeeze=False)
  several_runs = len(histories) > 1
  for ax, (panel_title, keys) in zip(axes[0], _CURVE_PANELS):
    for line_index, (key, key_label) in enumerate(keys):
      for run_index, (run_label, records) in enumerate(histories.items()):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if not points:
          continue
        epochs, values = zip(*points)
        key_label = key_label.format(split=eval_split)
        label = f"{key_label} ({run_label})" if several_runs else key_label
        ax.plot(epochs, values, marker="o", markersize=3, label=label,
                color=f"C{line_index * len(histories) + run_index}",
                linestyle="-" if line_index == 0 else "--")
    ax.set_title(panel_title)
    ax.set_xlabel("epoch")
    epochs = sorted({r["epoch"] for records in histories.values() for r in records})
    if len(epochs) <= 12:  # one tick per epoch; a locator would put fractional ticks around a single one
      ax.set_xticks(epochs)
    else:
      ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)


def plot_prediction_grid(images: np.ndarray, labels: np.ndarray,
                         predictions: Mapping[str, np.ndarray], path: str,
                         row_titles: Sequence[str] = (),
                         cell_notes: Mapping[str, Sequence[str]] | None = None,
                         num_classes: int = 2) -> None:
  """Writes the Fig. 5 grid: one row per image; columns original, label, then one per model.

  Args:
    images: [N, H, W] or [N, H, W, C] images in any range (each is min-max scaled for display).
    labels: [N, H, W] integer class maps (0 = background).
    predictions: column title (model name) -> [N, H, W] integer class maps, in column order.
    path: the PNG to write.
    row_titles: optional per-row text (e.g. the image id), shown left of each row.
    cell_notes: optional column title -> per-row text under each prediction (e.g. "IoU 0.91").
    num_classes: the number of classes including background, fixing the colour scale of the masks.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  num_rows = images.shape[0]
  if num_rows == 0:
    raise ValueError(f"No images to plot for {path!r}.")
  columns = [("Original", None), ("Label", labels)] + [(k, np.asarray(v)) for k, v in predictions.items()]
  fig, axes = plt.subplots(num_rows, len(columns), figsize=(2.2 * len(columns), 2.2 * num_rows),
                           squeeze=False)
  vmax = max(num_classes - 1, 1)
  for row in range(num_rows):
    for col, (column_title, masks) in enumerate(columns):
      ax = axes[row, col]
      if masks is None:
        ax.imshow(viz.to_uint8(images[row]))  # min-max scaled per image, gray shown as gray RGB
      else:
        ax.imshow(masks[row], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        notes = (cell_notes or {}).get(column_title)
        if notes is not None:
          ax.set_xlabel(notes[row], fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(column_title, fontsize=9)
      if col == 0 and row < len(row_titles):
        ax.set_ylabel(row_titles[row], fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def _save(fig: plt.Figure, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
