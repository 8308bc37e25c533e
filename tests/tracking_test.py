"""Vessel tracking across frames: ids through misses, birth and death, the baseline, compressibility, CSV,
bad input, and a phantom clip tracked end to end."""

import csv

import numpy as np
import pytest

from veinjax.analysis import tracking
from veinjax.data import phantom_clips


def disc(size, cx, cy, r, value=1):
  y, x = np.mgrid[0:size, 0:size] + 0.5
  return (((x - cx) ** 2 + (y - cy) ** 2) <= r * r).astype(np.uint8) * value


def clip_of(objects, num_frames, size=96):
  """objects: functions frame -> (cx, cy, r) or None (absent) -> masks [T, size, size]."""
  masks = np.zeros((num_frames, size, size), np.uint8)
  for t in range(num_frames):
    for obj in objects:
      where = obj(t)
      if where is not None:
        masks[t] |= disc(size, *where)
  return masks


def test_two_vessels_keep_their_ids_and_geometry():
  masks = clip_of([lambda t: (20 + 2 * t, 30, 6), lambda t: (70 - t, 65, 9)], 20)
  tracks = tracking.track(masks)
  assert [trk.id for trk in tracks] == [1, 2]
  first, second = tracks
  assert first.frames == list(range(20)) and not any(p.predicted for p in first.points)
  for t, p in enumerate(first.points):
    assert abs(p.centroid_x_px - (20 + 2 * t)) < 0.1 and abs(p.centroid_y_px - 30) < 0.1
  g = second.points[5].geometry
  assert abs(g.equivalent_diameter_px - 18) < 0.6 and g.depth_px == pytest.approx(second.points[5].centroid_y_px)


def test_a_short_miss_keeps_the_id_and_is_flagged_predicted():
  # Moving 12 px per frame and missed for 3 frames: the Kalman track coasts to it; the baseline, which
  # waits where it last saw it, loses it (36 px > its gate) and starts a new track.
  fast = lambda t: None if 8 <= t < 11 else (5 + 6 * t, 40, 5)
  masks = clip_of([fast], 15, size=128)
  (trk,) = tracking.track(masks, max_distance_px=10)
  assert trk.frames == list(range(15))
  assert [p.frame for p in trk.points if p.predicted] == [8, 9, 10]
  for p in trk.points:
    if p.predicted:
      assert p.geometry is None and abs(p.centroid_x_px - (5 + 6 * p.frame)) < 1.0  # constant velocity
  assert len(tracking.track_nearest(masks, max_distance_px=10)) == 2


def test_birth_after_min_hits_and_death_after_max_missed():
  blip = lambda t: (30, 30, 5) if t in (3, 4) else None  # seen twice only
  gap = lambda t: (70, 60, 6) if t < 5 or t >= 12 else None  # missed 7 frames
  masks = clip_of([blip, gap], 20)
  tracks = tracking.track(masks, min_hits=3, max_missed=6)
  assert [(trk.frames[0], trk.frames[-1]) for trk in tracks] == [(0, 4), (12, 19)]  # blip unborn; gap too long
  (kept,) = tracking.track(masks, min_hits=3, max_missed=7)[:1]
  assert kept.frames == list(range(20))
  assert len(tracking.track(masks, min_hits=2, max_missed=7)) == 2  # now the blip is born too


def test_a_vessel_broken_into_pieces_stays_one_track():
  # A lumen flattened under compression can break a mask into pieces: frames 8-13 show the vessel cut in two
  # by a 3-px gap. The pieces are joined (geometry of their union); the baseline starts a second track.
  def masks_at(t):
    mask = disc(96, 48, 40, 10)
    if 8 <= t < 14:
      mask[:, 47:50] = 0
    return mask
  masks = np.stack([masks_at(t) for t in range(20)])
  (trk,) = tracking.track(masks)
  assert trk.frames == list(range(20)) and not any(p.predicted for p in trk.points)
  for p in trk.points:
    assert abs(p.centroid_x_px - 48) < 0.5 and abs(p.centroid_y_px - 40) < 0.5
  assert trk.points[10].geometry.area_px == int(masks[10].sum())  # both pieces measured as one
  assert len(tracking.track_nearest(masks)) == 2


def test_confirmed_tracks_choose_before_tentative_and_lost_ones():
  """The matching cascade: the track that saw its vessel in the previous frame picks first, then tracks
  missed for longer, then tentative tracks, whatever the costs say."""
  def live(x, missed, confirmed=True):
    return tracking._Live(tracking._LastPosition(x, 40.0), [], np.ones((9, 9), bool),
                          (36, int(x) - 4, 45, int(x) + 5), (x, 40.0), 81, 9.0, missed=missed,
                          id=1 if confirmed else None)
  det = tracking.geometry.measure(disc(96, 50, 40, 4))[0]
  shape = disc(96, 50, 40, 4)[det.bbox[0]:det.bbox[2], det.bbox[1]:det.bbox[3]] > 0
  for others in ([live(49.5, missed=3)], [live(50.0, missed=0, confirmed=False)]):
    tracks = [live(44.0, missed=0)] + others  # the other track is nearer the detection
    predictions = [trk.motion.predict() for trk in tracks]
    overlaps = tracking._overlaps(tracks, predictions, [det], [shape])
    assert overlaps.min() > 0  # every track's shape overlaps the detection
    assert tracking._assign(tracks, predictions, [det], overlaps, 0.5, 15.0) == [(1, 0)]  # costs alone
    assert tracking._assign_in_cascade(tracks, predictions, [det], overlaps, 0.5, 15.0) == {0: 0}


def test_a_vessel_that_stops_while_missed_is_found_where_it_was_last_seen():
  # 5 px per frame, then missed for 4 frames while it stopped: the constant-velocity prediction runs 20 px
  # past it (beyond the 15 px gate); the last observed position keeps the id.
  where = lambda t: (10 + 5 * t, 40, 5) if t < 10 else (None if t < 14 else (55, 40, 5))
  masks = clip_of([where], 20, size=128)
  (trk,) = tracking.track(masks)
  assert trk.frames == list(range(20)) and [p.frame for p in trk.points if p.predicted] == [10, 11, 12, 13]


def test_nothing_detected_and_empty_clips_give_no_tracks(tmp_path):
  assert tracking.track(np.zeros((5, 32, 32), np.uint8)) == []
  assert tracking.track([]) == [] and tracking.track_nearest(np.zeros((0, 16, 16), bool)) == []
  path = tmp_path / "none.csv"
  assert tracking.write_tracks_csv([], path) == 0
  assert path.read_text().strip() == ",".join(tracking.COLUMNS)


@pytest.mark.parametrize("masks,match", [
    ([np.zeros((32, 32), np.uint8), np.zeros((32, 40), np.uint8)], "same size|one size"),
    (np.zeros((32, 32), np.uint8), r"mask\[None\]"),
    (np.zeros((2, 3, 32, 32), np.uint8), r"\[T, H, W\]"),
    (np.full((2, 8, 8), 0.6), "dtype"),
])
def test_bad_clips_are_clear_errors(masks, match):
  with pytest.raises(ValueError, match=match):
    tracking.track(masks)


@pytest.mark.parametrize("spacing", [0.0, -0.2])
def test_bad_pixel_spacing_is_an_error_even_for_an_empty_clip(spacing):
  with pytest.raises(ValueError, match="pixel_spacing_mm"):
    tracking.track([], pixel_spacing_mm=spacing)


def test_rows_and_csv_carry_mm_and_predicted_frames(tmp_path):
  masks = clip_of([lambda t: None if t == 4 else (30 + t, 40, 8)], 8)
  tracks = tracking.track(masks, pixel_spacing_mm=0.1)
  rows = tracking.tracks_to_rows(tracks)
  assert len(rows) == 8 and list(rows[0]) == list(tracking.COLUMNS)
  assert rows[4]["predicted"] and rows[4]["area_px"] is None and rows[4]["depth_mm"] == pytest.approx(4.0, abs=0.1)
  assert rows[0]["equivalent_diameter_mm"] == pytest.approx(1.6, abs=0.06)
  path = tmp_path / "tracks.csv"
  assert tracking.write_tracks_csv(tracks, path) == 8
  with open(path) as f:
    read = list(csv.DictReader(f))
  assert read[4]["area_px"] == "" and float(read[3]["area_mm2"]) == pytest.approx(rows[3]["area_mm2"])


def _track_of(areas_and_misses, size=96):
  """One track of a still disc whose area follows the list (None: missed)."""
  objects = [lambda t: None if areas_and_misses[t] is None else (48, 48, np.sqrt(areas_and_misses[t] / np.pi))]
  (trk,) = tracking.track(clip_of(objects, len(areas_and_misses), size), min_hits=1)
  return trk


def test_compressibility_separates_flattening_from_pulsating():
  squeezed = _track_of([400, 300, 150, 40, 20, 40, 150, 400])
  pulsing = _track_of([400, 440, 400, 360, 400, 440, 400, 360])
  result = tracking.compressibility(squeezed)
  assert result.label == tracking.COMPRESSIBLE and result.area_ratio < 0.1 and result.minor_axis_ratio < 0.35
  assert tracking.compressibility(pulsing).label == tracking.NON_COMPRESSIBLE
  assert tracking.compressibility(pulsing, threshold=0.9).label == tracking.COMPRESSIBLE  # the threshold is a knob
  assert tracking.compressibility(squeezed, by="minor_axis").label == tracking.COMPRESSIBLE
  assert tracking.compressibility(squeezed, frames=[0, 7]).label == tracking.NON_COMPRESSIBLE
  assert tracking.compressibility(squeezed, frames=[0]).label == tracking.UNDETERMINED


def test_a_vein_that_vanishes_under_compression_counts_as_collapsed():
  vanished = _track_of([400, 300, 150, None, None, 150, 300, 400])
  result = tracking.compressibility(vanished, threshold=0.3)
  assert result.label == tracking.COMPRESSIBLE and result.area_ratio == 0.0 and 3 in result.frames
  kept_open = tracking.compressibility(vanished, threshold=0.3, missed_as_collapsed=False)
  assert kept_open.label == tracking.NON_COMPRESSIBLE and 3 not in kept_open.frames


def test_a_vessel_missed_at_full_size_is_not_collapsed():
  flaky = _track_of([400, 440, None, None, 400, 360, None, 440])
  result = tracking.compressibility(flaky)
  assert result.label == tracking.NON_COMPRESSIBLE and result.frames == (0, 1, 4, 5, 7)


def test_compressibility_ignores_frames_where_the_vessel_is_cut_by_the_edge():
  xs = [30, 22, 12, 2, 12, 22, 30]  # frame 3: only part of it is in view
  (trk,) = tracking.track(clip_of([lambda t: (xs[t], 40, 8)], 7, 64), min_hits=1, max_distance_px=20)
  assert trk.points[3].geometry.touches_border and trk.points[3].geometry.area_px < 0.7 * trk.points[0].geometry.area_px
  result = tracking.compressibility(trk)
  assert result.frames == (0, 1, 2, 4, 5, 6) and result.label == tracking.NON_COMPRESSIBLE


def test_phantom_clip_one_track_per_vessel_and_compressibility():
  clip = phantom_clips.generate_clip(0, 96, 50, compression_sweeps=1, render_frames=False)
  tracks = tracking.track(clip.instances > 0)
  assert len(tracks) == len(clip.vessels) >= 2
  for trk in tracks:
    ids = {int(clip.instances[p.frame][int(p.centroid_y_px), int(p.centroid_x_px)])
           for p in trk.points if not p.predicted}
    assert len(ids) == 1 and 0 not in ids  # always on the same vessel
    kind = clip.vessels[ids.pop() - 1]["kind"]
    label = tracking.compressibility(trk).label
    assert label == (tracking.COMPRESSIBLE if kind == "vein" else tracking.NON_COMPRESSIBLE), (kind, label)


# ---- The Kalman filter and the per-frame measuring against their references ----


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_kalman_filter_is_filterpys(seed):
  """The per-axis closed form gives filterpy's KalmanFilter (the same model, Joseph-form update) through
  observed and missed frames."""
  from filterpy.kalman import KalmanFilter  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  measurement_std, acceleration_std, speed_std = rng.uniform(0.5, 3.0, size=3)
  x0, y0 = rng.uniform(0, 256, size=2)
  ours = tracking._KalmanMotion(x0, y0, measurement_std, acceleration_std, speed_std)
  kf = KalmanFilter(dim_x=4, dim_z=2)
  kf.F = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
  kf.H = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=float)
  kf.R = np.eye(2) * measurement_std**2
  gain = np.array([[0.5, 0], [0, 0.5], [1, 0], [0, 1]])
  kf.Q = gain @ gain.T * acceleration_std**2
  kf.P = np.diag([measurement_std**2] * 2 + [speed_std**2] * 2)
  kf.x = np.array([[x0], [y0], [0.0], [0.0]])
  position, velocity = np.array([x0, y0]), rng.normal(0, 3, size=2)
  for frame in range(60):
    position = position + velocity
    velocity = velocity + rng.normal(0, acceleration_std, size=2)
    kf.predict()
    np.testing.assert_allclose(ours.predict(), kf.x[:2, 0], rtol=1e-12, atol=1e-9, err_msg=f"frame {frame}")
    if rng.random() < 0.7:  # observed; otherwise missed (coasting)
      z = position + rng.normal(0, measurement_std, size=2)
      kf.update(z.reshape(2, 1))
      ours.update(*z)
  np.testing.assert_allclose(ours.position + ours.velocity, kf.x[:, 0], rtol=1e-12, atol=1e-9)
  np.testing.assert_allclose([ours.a, ours.b, ours.c, ours.a, ours.b, ours.c],
                             [kf.P[0, 0], kf.P[0, 2], kf.P[2, 2], kf.P[1, 1], kf.P[1, 3], kf.P[3, 3]], rtol=1e-12)
  assert kf.P[0, 1] == kf.P[0, 3] == kf.P[1, 2] == 0.0  # the axes never mix: the closed form's premise
