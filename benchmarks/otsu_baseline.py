r"""The classical baseline the paper says fails: Otsu thresholding plus dark-connected-component selection.

Segments veins in the phantom's test split without learning anything and prints its vein IoU and Dice.

  python benchmarks/otsu_baseline.py                      # the phantom test split: 200 images at 512x512
  python benchmarks/otsu_baseline.py --num_images=50 --size=256

The method (a fair version, tuned to the phantom's geometry, not a strawman):
  1. Gaussian smoothing (sigma ~ 2 px at 512) against speckle.
  2. One global Otsu threshold on the smoothed frame; pixels below it are "dark".
  3. Ignore everything above the skin line (the brightest row band near the top, plus a margin).
  4. Morphological opening to cut thin dark bridges (shadow stripes, septa gaps).
  5. Keep the dark connected components that look like a vessel lumen: plausible area, not touching the
     image's left, right or bottom edge, elliptical (area close to that of the moment-fitted ellipse), not
     too elongated. Fill their holes.
The images are the phantom's test split exactly as the `vein_phantom` TFDS builder stores them (the same
seeds, `phantom.example_seed("test", i)`), generated directly so the benchmark needs no TFDS preparation.

IoU is reported both over the whole split (intersections and unions summed over all images, as the
training metrics do) and as the mean of per-image IoUs.
"""

import time

from absl import app
from absl import flags
import numpy as np
from scipy import ndimage

from veinjax.data import phantom  # pylint: disable=g-import-not-at-top

_NUM_IMAGES = flags.DEFINE_integer("num_images", 200, "How many test-split images (the paper's split: 200).")
_SIZE = flags.DEFINE_integer("size", 512, "Image height = width in pixels.")


def otsu_threshold(values: np.ndarray) -> float:
  """Otsu's threshold of 8-bit values: maximises the between-class variance over the 256-bin histogram."""
  hist = np.bincount(np.clip(values, 0, 255).astype(np.int64).ravel(), minlength=256).astype(np.float64)
  p = hist / hist.sum()
  omega = np.cumsum(p)  # weight of the dark class for a threshold after bin k
  mu = np.cumsum(p * np.arange(256))
  mu_total = mu[-1]
  with np.errstate(divide="ignore", invalid="ignore"):
    between = (mu_total * omega - mu) ** 2 / (omega * (1.0 - omega))
  between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
  return float(np.argmax(between)) + 0.5  # dark = value <= k


def _disk(radius: int) -> np.ndarray:
  r = np.arange(-radius, radius + 1)
  return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def segment_veins(image: np.ndarray) -> np.ndarray:
  """Otsu + dark-component vein segmentation of one uint8 [H, W] frame -> bool [H, W]."""
  h, w = image.shape
  scale = w / 512.0
  smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma=max(2.0 * scale, 0.7))
  dark = smooth <= otsu_threshold(np.round(smooth))

  # The skin line is the brightest row band in the top 15%: nothing above it (gel, skin) can be a vessel.
  rows = smooth.mean(axis=1)
  skin = int(np.argmax(rows[: max(int(0.15 * h), 2)]))
  dark[: skin + max(int(0.02 * h), 1)] = False

  dark = ndimage.binary_opening(dark, structure=_disk(max(int(round(3 * scale)), 1)))
  labels, count = ndimage.label(dark)
  keep = np.zeros(count + 1, dtype=bool)
  slices = ndimage.find_objects(labels)
  for index, sl in enumerate(slices, start=1):
    if sl is None:
      continue
    component = labels[sl] == index
    area = component.sum()
    if not 0.003 * h * w <= area <= 0.06 * h * w:
      continue
    if sl[1].start == 0 or sl[1].stop == w or sl[0].stop == h:
      continue
    ys, xs = np.nonzero(component)
    cov = np.cov(np.stack([ys, xs]).astype(np.float64))
    eig = np.sqrt(np.maximum(np.linalg.eigvalsh(cov), 1e-9))  # std along the principal axes
    ellipse_area = 4.0 * np.pi * eig[0] * eig[1]  # a filled ellipse has semi-axes 2 * std
    if not 0.8 <= area / ellipse_area <= 1.1:
      continue
    if eig[0] / eig[1] < 0.3:
      continue
    keep[index] = True
  return ndimage.binary_fill_holes(keep[labels])


def evaluate(num_images: int, size: int):
  """(split-level IoU, Dice, mean per-image IoU, seconds per image) of the baseline on the test split."""
  inter = union = pred_sum = true_sum = 0
  per_image = []
  start = time.perf_counter()
  for index in range(num_images):
    image, mask = phantom.generate_example(phantom.example_seed("test", index), size)
    pred = segment_veins(image)
    truth = mask == 1
    i, u = np.sum(pred & truth), np.sum(pred | truth)
    inter, union = inter + i, union + u
    pred_sum, true_sum = pred_sum + pred.sum(), true_sum + truth.sum()
    per_image.append(i / u if u else 1.0)
  seconds = (time.perf_counter() - start) / max(num_images, 1)
  return inter / union, 2 * inter / (pred_sum + true_sum), float(np.mean(per_image)), seconds


def main(argv):
  del argv
  iou, dice, mean_iou, seconds = evaluate(_NUM_IMAGES.value, _SIZE.value)
  print(f"Otsu + dark-component baseline on the vein_phantom test split "
        f"({_NUM_IMAGES.value} images, {_SIZE.value}x{_SIZE.value}):")
  print(f"  vein IoU  {iou:.3f}   (split-level; mean per-image IoU {mean_iou:.3f})")
  print(f"  vein Dice {dice:.3f}")
  print(f"  ({seconds * 1000:.0f} ms per image, generation included)")


if __name__ == "__main__":
  app.run(main)
