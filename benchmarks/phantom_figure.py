r"""docs/phantom_random.png: eight domain-randomised phantom frames, each beside its mask.

  python -m benchmarks.phantom_figure                       # the first 8 train frames at 256x256
  python -m benchmarks.phantom_figure --size=128 --out=/tmp/phantom_random.png --foreground=vein

The frames are those of the `vein_phantom_random` train split at that size (seeds
`phantom.example_seed("train", i)`, default ranges). Mask panels: white = foreground lumen (vessel: veins
and arteries), grey = the fan or box of the scan, black = outside it.
"""

from pathlib import Path

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from veinjax.data import phantom  # pylint: disable=g-import-not-at-top,wrong-import-position
from veinjax.data import phantom_random  # pylint: disable=g-import-not-at-top,wrong-import-position

_ROOT = Path(__file__).resolve().parent.parent
_SIZE = flags.DEFINE_integer("size", 256, "Frame height = width.")
_NUM = flags.DEFINE_integer("num_frames", 8, "Frames (an even number: two frame + mask pairs per row).")
_FOREGROUND = flags.DEFINE_enum("foreground", "vessel", list(phantom_random.FOREGROUNDS), "The mask's foreground.")
_OUT = flags.DEFINE_string("out", str(_ROOT / "docs" / "phantom_random.png"), "Where to write the PNG.")


def main(argv):
  del argv
  params = phantom_random.RandomizationRanges(foreground=_FOREGROUND.value)
  pairs, rows = _NUM.value, (_NUM.value + 1) // 2
  fig, axes = plt.subplots(rows, 4, figsize=(8, 2.1 * rows), dpi=150)
  axes = np.atleast_2d(axes)
  for i in range(rows * 2):
    frame_ax, mask_ax = axes[i // 2, 2 * (i % 2)], axes[i // 2, 2 * (i % 2) + 1]
    for ax in (frame_ax, mask_ax):
      ax.set_axis_off()
    if i >= pairs:
      continue
    frame = phantom_random.generate_randomized_frame(phantom.example_seed("train", i), _SIZE.value, params)
    geometry = frame.info["geometry"]["kind"]
    frame_ax.imshow(frame.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    frame_ax.set_title(f"train {i}: {'sector' if geometry == 'sector' else 'linear'}", fontsize=7)
    mask_view = np.where(frame.mask == 1, 1.0, np.where(frame.valid, 0.25, 0.0))
    mask_ax.imshow(mask_view, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    kinds = [("vein" if v.is_vein else "artery") for v, f in zip(frame.vessels, frame.foreground) if f]
    hidden = sum(not f for v, f in zip(frame.vessels, frame.foreground)
                 if v.is_vein or params.foreground == "vessel")
    mask_ax.set_title(f"{kinds.count('vein')} vein(s), {kinds.count('artery')} artery(ies)"
                      + (f", {hidden} unseen" if hidden else ""), fontsize=7)
  fig.suptitle(f"Domain-randomised phantom ({_SIZE.value}x{_SIZE.value}, default ranges, "
               f"{params.foreground} masks)", fontsize=9)
  fig.tight_layout()
  out = Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
