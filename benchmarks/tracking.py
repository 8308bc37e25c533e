r"""Tracking benchmark on phantom clips: identity switches, centroid RMSE, MOTA, compressibility, ms / frame.

  python -m benchmarks.tracking                                   # 20 clips x 100 frames, 256x256, 1 sweep each
  python -m benchmarks.tracking --num_clips=5 --num_frames=60 --size=128

Clips: `phantom_clips.generate_clip(clip_seed("test", i), size, num_frames, compression_sweeps=...)`. The
Kalman tracker (`tracking.track`) and the nearest-centroid baseline (`tracking.track_nearest`) run on masks
made from the ground truth:

- "GT vessel mask": instances > 0, veins and arteries, scored against both. This is the compressibility
  test: every vein should come out compressible, every artery non-compressible.
- "GT vein class mask": the phantom's class mask (arteries are background), scored against veins only;
  the kind of mask a segmentation model gives.
- "GT vessel mask, 20% dropped": each vessel left out of each frame with probability --drop_rate, as a
  flaky model would: coasting through misses, and compressibility that misses do not fool.

A model's masks go through the same scoring: generate the clips with frames, segment them, then
`evaluate_tracker(pred_masks_per_clip, gt_clips, kinds=("vein",))`:

  clips = benchmark_clips(20, 100, 256, sweeps=1, render_frames=True)
  preds = [predict(clip.frames) for clip in clips]                # [T, H, W] class masks per clip
  print(format_table([evaluate_tracker(preds, clips, kinds=("vein",), name="model + kalman")]))

Scoring, per frame. Ground-truth vessels are the instances with pixels in that frame, placed at their
instance centroids. Hypotheses are the tracks' observed points; coasted predictions do not count. The two
are matched by the Hungarian algorithm on centroid distance, within max(5 px, half the vessel's equivalent
diameter). CLEAR MOT: FN = unmatched vessels, FP = unmatched hypotheses, IDSW = matches whose track
differs from that vessel's previous match, MOTA = 1 - (FN + FP + IDSW) / vessel-frames.
"IDSW re-entry": the switches where the vessel was out of the masks for more than max_missed frames since
its previous match (it left the field of view), so no tracker that forgets after max_missed misses could
keep its id. "IDSW in view": all other switches, the tracker's own mistakes (target: 0).
RMSE covers the matched centroids.

Compressibility: each track takes the vessel it matched most often. It is judged with
`tracking.compressibility` over its clip's sweep frames (± 10 rest frames), but only if it is seen both at
the depth of the sweep (compression >= 0.9, or collapsed) and at rest (<= 0.1); the other tracks count as
"undetermined" (out of view during the sweep).

ms / frame: wall and CPU time of the tracker calls on all clips (labelling, measuring, filtering, assignment)
divided by frames, the median of --repeats passes. Both depend on the machine and on what else runs on it.
"""

import dataclasses
import math
import time
from typing import Callable, Dict, List, Sequence

from absl import app
from absl import flags
import numpy as np
from scipy.optimize import linear_sum_assignment

from veinjax.analysis import geometry
from veinjax.analysis import tracking
from veinjax.data import phantom_clips

_NUM_CLIPS = flags.DEFINE_integer("num_clips", 20, "Phantom clips (test-split clip seeds 0..N-1).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 100, "Frames per clip.")
_SIZE = flags.DEFINE_integer("size", 256, "Frame height = width in pixels.")
_SWEEPS = flags.DEFINE_integer("sweeps", 1, "Compression sweeps per clip.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.5, "Compressible when min / max area is below this.")
_MIN_HITS = flags.DEFINE_integer("min_hits", 3, "Track birth after this many consecutive detections.")
_MAX_MISSED = flags.DEFINE_integer("max_missed", 10, "Track death after more missed frames than this.")
_DROP_RATE = flags.DEFINE_float("drop_rate", 0.2, "Last rows: chance that a vessel is left out of a frame.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Also track a trained run's predicted vein masks (a train.py "
                               "workdir, e.g. configs/phantom_clips.py); empty = ground-truth rows only.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "The --workdir checkpoint to segment with.")
_POSTPROCESS = flags.DEFINE_string(
    "postprocess", "bedside", "The model masks' post-processing (predict.py's --postprocess, e.g. min_size=33); "
    "'bedside' = the README's bedside default, min_size = 0.05% of the frame's pixels; '' = none.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed passes of each tracker over the clips (median reported).")
_TTA = flags.DEFINE_list("tta", [], "Test-time augmentation of the model (predict.py's --tta: hflip).")


def benchmark_clips(num_clips: int, num_frames: int, size: int, sweeps: int = 1,
                    render_frames: bool = False) -> List[phantom_clips.Clip]:
  return [phantom_clips.generate_clip(phantom_clips.clip_seed("test", i), size, num_frames,
                                      compression_sweeps=sweeps, render_frames=render_frames)
          for i in range(num_clips)]


@dataclasses.dataclass
class _Counts:
  vessel_frames: int = 0
  matches: int = 0
  misses: int = 0
  false_positives: int = 0
  id_switches: int = 0
  reentry_switches: int = 0
  squared_error: float = 0.0
  judged: List = dataclasses.field(default_factory=list)  # (kind, truly compressible, label)
  undetermined: int = 0


def _match(truth: Dict[int, geometry.VesselGeometry], hypotheses: List) -> List:
  """Hungarian matching of ground-truth vessels to (track id, point), within max(5 px, diameter / 2)."""
  if not truth or not hypotheses:
    return []
  ids = list(truth)
  cost = np.full((len(ids), len(hypotheses)), 1e9)
  for i, gid in enumerate(ids):
    g = truth[gid]
    for j, (_, p) in enumerate(hypotheses):
      d = math.hypot(p.centroid_x_px - g.centroid_x_px, p.centroid_y_px - g.centroid_y_px)
      if d <= max(5.0, 0.5 * g.equivalent_diameter_px):
        cost[i, j] = d
  rows, cols = linear_sum_assignment(cost)
  return [(ids[i], hypotheses[j][0], cost[i, j]) for i, j in zip(rows, cols) if cost[i, j] < 1e9]


def _truth_per_frame(clip, kinds: Sequence[str]) -> List[Dict[int, geometry.VesselGeometry]]:
  wanted = {v["id"] for v in clip.vessels if v["kind"] in kinds}
  return [{gid: g for gid, g in geometry.measure_instances(frame).items() if gid in wanted}
          for frame in clip.instances]


def _score_identities(tracks, truth, max_missed: int, counts: _Counts) -> Dict[int, Dict[int, int]]:
  """CLEAR MOT counts for one clip; returns {track id: {vessel id: matched frames}}."""
  last_track, absent_since_match, votes = {}, {}, {}
  for t, present in enumerate(truth):
    hypotheses = [(trk.id, p) for trk in tracks for p in [trk.point_at(t)] if p is not None and not p.predicted]
    matches = _match(present, hypotheses)
    counts.vessel_frames += len(present)
    counts.matches += len(matches)
    counts.misses += len(present) - len(matches)
    counts.false_positives += len(hypotheses) - len(matches)
    for gid, track_id, distance in matches:
      counts.squared_error += distance**2
      votes.setdefault(track_id, {}).setdefault(gid, 0)
      votes[track_id][gid] += 1
      if gid in last_track and last_track[gid] != track_id:
        counts.id_switches += 1
        counts.reentry_switches += int(absent_since_match[gid] > max_missed)
      last_track[gid], absent_since_match[gid] = track_id, 0
    for gid in absent_since_match:
      absent_since_match[gid] += gid not in present
  return votes


def _score_compressibility(tracks, votes, clip, threshold: float, counts: _Counts) -> None:
  level = clip.compression
  if not np.any(level > 0):
    return
  sweep = np.nonzero(level > 0)[0]
  window = [t for t in range(len(level)) if np.min(np.abs(sweep - t)) <= 10]
  for trk in tracks:
    if trk.id not in votes:
      continue
    gid = max(votes[trk.id], key=votes[trk.id].get)
    result = tracking.compressibility(trk, threshold, frames=window)
    seen = level[list(result.frames)] if result.frames else np.zeros(0)
    if result.label == tracking.UNDETERMINED or not (np.any(seen >= 0.9) and np.any(seen <= 0.1)):
      counts.undetermined += 1
      continue
    vessel = clip.vessels[gid - 1]
    counts.judged.append((vessel["kind"], vessel["compressible"], result.label))


def evaluate_tracker(pred_masks_per_clip: Sequence, gt_clips: Sequence, tracker: Callable = tracking.track, *,
                     kinds: Sequence[str] = ("vein", "artery"), threshold: float = 0.5, name: str = "",
                     min_hits: int = 3, max_missed: int = 10, repeats: int = 1) -> Dict[str, object]:
  """Runs `tracker` on each clip's masks ([T, H, W]) and scores it against the clips' ground truth.

  gt_clips: `phantom_clips.Clip`s (instances, vessels, compression). kinds: which ground-truth vessels
  count ("vein" only for vein class masks, from the phantom's labels or a model). The tracker runs `repeats`
  times over all clips; the time is the median pass's.
  """
  if len(pred_masks_per_clip) != len(gt_clips):
    raise ValueError(f"{len(pred_masks_per_clip)} mask clips for {len(gt_clips)} ground-truth clips")
  passes = []  # (wall seconds, CPU seconds) of each pass over all clips
  for _ in range(max(repeats, 1)):
    start, cpu_start = time.perf_counter(), time.process_time()
    tracks_per_clip = [tracker(masks, min_hits=min_hits, max_missed=max_missed) for masks in pred_masks_per_clip]
    passes.append((time.perf_counter() - start, time.process_time() - cpu_start))
  counts = _Counts()
  for tracks, clip in zip(tracks_per_clip, gt_clips):
    votes = _score_identities(tracks, _truth_per_frame(clip, kinds), max_missed, counts)
    _score_compressibility(tracks, votes, clip, threshold, counts)
  frames = sum(len(clip.instances) for clip in gt_clips)
  summary = _summary(name, counts, frames, len(gt_clips))
  summary.update(ms_per_frame=1000.0 * float(np.median([p[0] for p in passes])) / max(frames, 1),
                 cpu_ms_per_frame=1000.0 * float(np.median([p[1] for p in passes])) / max(frames, 1))
  return summary


def drop_detections(clip, rate: float, seed: int = 0) -> np.ndarray:
  """The clip's vessel mask with each vessel left out of each frame with probability `rate` (a flaky model)."""
  rng = np.random.default_rng(seed)
  keep = rng.random((len(clip.instances), len(clip.vessels) + 1)) >= rate
  keep[:, 0] = False  # background
  return np.take_along_axis(keep, clip.instances.reshape(len(clip.instances), -1).astype(np.int64),
                            axis=1).reshape(clip.instances.shape)


def _summary(name: str, c: _Counts, frames: int, num_clips: int) -> Dict[str, object]:
  def right(kind):
    judged = [(truth, label) for k, truth, label in c.judged if k == kind]
    good = sum((label == tracking.COMPRESSIBLE) == truth for truth, label in judged)
    return f"{good}/{len(judged)}"

  correct = sum((label == tracking.COMPRESSIBLE) == truth for _, truth, label in c.judged)
  return {
      "tracker": name, "clips": num_clips, "frames": frames, "vessel_frames": c.vessel_frames,
      "id_switches_in_view": c.id_switches - c.reentry_switches, "id_switches_reentry": c.reentry_switches,
      "false_negatives": c.misses, "false_positives": c.false_positives,
      "mota": 1.0 - (c.misses + c.false_positives + c.id_switches) / max(c.vessel_frames, 1),
      "centroid_rmse_px": math.sqrt(c.squared_error / max(c.matches, 1)),
      "compressibility_accuracy": correct / len(c.judged) if c.judged else math.nan,
      "veins_compressible": right("vein"), "arteries_non_compressible": right("artery"),
      "compressibility_undetermined": c.undetermined,
  }


def format_table(results: Sequence[Dict[str, object]]) -> str:
  header = ("| tracker | clips | frames | vessel-frames | IDSW in view | IDSW re-entry | FN | FP | MOTA | "
            "centroid RMSE (px) | compressibility acc. | veins compr. | arteries non-compr. | undetermined | "
            "ms / frame (wall, CPU) |")
  lines = [header, "|" + "---|" * (header.count("|") - 1)]
  for r in results:
    lines.append(f"| {r['tracker']} | {r['clips']} | {r['frames']} | {r['vessel_frames']} | "
                 f"{r['id_switches_in_view']} | {r['id_switches_reentry']} | {r['false_negatives']} | "
                 f"{r['false_positives']} | {r['mota']:.4f} | {r['centroid_rmse_px']:.3f} | "
                 f"{r['compressibility_accuracy']:.3f} | {r['veins_compressible']} | "
                 f"{r['arteries_non_compressible']} | {r['compressibility_undetermined']} | "
                 f"{r['ms_per_frame']:.3f}, {r['cpu_ms_per_frame']:.3f} |")
  return "\n".join(lines)


def model_rows(workdir: str, options: Dict[str, object]) -> List[Dict[str, object]]:
  """The model's predicted vein masks (Predictor, at the clip's own size) through both trackers."""
  from veinjax import inference  # pylint: disable=g-import-not-at-top  (JAX and, for preprocessing, TensorFlow)
  from veinjax import postprocess  # pylint: disable=g-import-not-at-top
  clips = benchmark_clips(_NUM_CLIPS.value, _NUM_FRAMES.value, _SIZE.value, _SWEEPS.value, render_frames=True)
  spec = _POSTPROCESS.value
  if spec == "bedside":  # the README's bedside default: drop components under 0.05% of the frame
    spec = f"min_size={round(0.0005 * _SIZE.value ** 2)}"
  steps = postprocess.PostProcess.parse(spec) if spec else None
  predictor = inference.Predictor.from_workdir(workdir, _CHECKPOINT.value, batch_size=8, tta=_TTA.value,
                                               postprocess=steps)
  start = time.perf_counter()
  predicted = [np.stack([p.mask for p in predictor.predict(list(clip.frames))]) for clip in clips]
  seconds = time.perf_counter() - start
  frames = sum(len(c.frames) for c in clips)
  dice = [2 * np.logical_and(p > 0, c.masks > 0).sum() / max((p > 0).sum() + (c.masks > 0).sum(), 1)
          for p, c in zip(predicted, clips)]
  print(f"model {workdir} ({_CHECKPOINT.value} checkpoint, postprocess {spec or 'none'}, tta "
        f"{','.join(_TTA.value) or 'none'}): {frames} frames segmented in {seconds:.1f} s; vein Dice over the clips "
        f"{np.mean(dice):.3f} (min {np.min(dice):.3f})")
  return [evaluate_tracker(predicted, clips, tracker, kinds=("vein",), name=f"{name}, model vein masks", **options)
          for name, tracker in (("kalman", tracking.track), ("nearest", tracking.track_nearest))]


def main(argv):
  del argv
  clips = benchmark_clips(_NUM_CLIPS.value, _NUM_FRAMES.value, _SIZE.value, _SWEEPS.value)
  options = dict(threshold=_THRESHOLD.value, min_hits=_MIN_HITS.value, max_missed=_MAX_MISSED.value,
                 repeats=_REPEATS.value)
  vessel_masks = [clip.instances > 0 for clip in clips]
  vein_masks = [clip.masks for clip in clips]
  dropped = [drop_detections(clip, _DROP_RATE.value, seed=i) for i, clip in enumerate(clips)]
  results = []
  for label, masks, kinds in [("GT vessel mask", vessel_masks, ("vein", "artery")),
                              ("GT vein class mask", vein_masks, ("vein",)),
                              (f"GT vessel mask, {_DROP_RATE.value:.0%} dropped", dropped, ("vein", "artery"))]:
    for tracker_name, tracker in (("kalman", tracking.track), ("nearest", tracking.track_nearest)):
      results.append(evaluate_tracker(masks, clips, tracker, kinds=kinds, name=f"{tracker_name}, {label}",
                                      **options))
  if _WORKDIR.value:
    results += model_rows(_WORKDIR.value, options)
  print(f"{_NUM_CLIPS.value} phantom clips x {_NUM_FRAMES.value} frames, {_SIZE.value}x{_SIZE.value}, "
        f"{_SWEEPS.value} compression sweep(s) each; threshold {_THRESHOLD.value}, min_hits {_MIN_HITS.value}, "
        f"max_missed {_MAX_MISSED.value}")
  print(format_table(results))


if __name__ == "__main__":
  app.run(main)
