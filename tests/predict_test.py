"""predict.py and veinjax.predict_lib / veinjax.frames: a folder, one image, a glob, a 10-frame clip written
here, and each bad input (unreadable or truncated file, clip without frames, empty folder, output that is a
file), on the tiny trained run of conftest.py."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from veinjax import files
from veinjax import frames
from veinjax import inference
from veinjax import predict_lib
from veinjax.data.decode import BadExampleError

from conftest import ROOT


@pytest.fixture(scope="module")
def predictor(trained):
  _, workdir, _ = trained
  return inference.Predictor.from_workdir(workdir, batch_size=4)


def _frames_dir(path, count=5, shape=(40, 56)):
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path / f"f{i}.png")
  return path


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_folder_writes_masks_overlays_csv_at_frame_size(predictor, tmp_path):
  source = frames.open_source(str(_frames_dir(tmp_path / "in")))
  summary = predict_lib.predict_to_dir(predictor, source, str(tmp_path / "out"), save_probabilities=True,
                                       pixel_spacing_mm=0.5)
  assert summary["frames"] == 5 and summary["video"] is None
  for i in range(5):
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"f{i}.png"))
    assert mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 1}
    assert np.asarray(Image.open(tmp_path / "out" / "overlays" / f"f{i}.png")).shape == (40, 56, 3)
    probs = np.load(tmp_path / "out" / "probabilities" / f"f{i}.npy")
    assert probs.shape == (40, 56, 1) and probs.dtype == np.float32
    np.testing.assert_array_equal(mask, (probs[..., 0] > 0.5).astype(np.uint8))
  rows = _read_csv(tmp_path / "out" / "predictions.csv")
  assert [r["frame"] for r in rows] == [f"f{i}" for i in range(5)]
  first = np.asarray(Image.open(tmp_path / "out" / "masks" / "f0.png"))
  assert int(rows[0]["area_px"]) == int(first.sum())
  assert float(rows[0]["area_mm2"]) == pytest.approx(first.sum() * 0.25)
  assert not [p for p in (tmp_path / "out").rglob("*.tmp*")]  # nothing half-written


def test_single_image_and_glob(predictor, tmp_path):
  _frames_dir(tmp_path / "in", count=3)
  one = predict_lib.predict_to_dir(predictor, frames.open_source(str(tmp_path / "in" / "f1.png")),
                                   str(tmp_path / "one"))
  assert one["frames"] == 1 and os.path.exists(tmp_path / "one" / "masks" / "f1.png")
  some = predict_lib.predict_to_dir(predictor, frames.open_source(str(tmp_path / "in" / "f[02].png")),
                                    str(tmp_path / "glob"))
  assert some["frames"] == 2 and sorted(os.listdir(tmp_path / "glob" / "masks")) == ["f0.png", "f2.png"]


def _write_clip(path, count=10, shape=(48, 64)):
  writer = frames.VideoWriter(str(path), fps=5)
  for i in range(count):
    frame = np.zeros(shape + (3,), np.uint8)
    frame[10:30, 5 + 3 * i:25 + 3 * i] = 200  # a moving bright block
    writer.add(frame)
  writer.close()


def test_clip_gives_every_frame_and_an_overlay_video(predictor, tmp_path):
  _write_clip(tmp_path / "clip.mp4")
  source = frames.open_source(str(tmp_path / "clip.mp4"))
  assert source.is_clip and source.fps == pytest.approx(5)
  summary = predict_lib.predict_to_dir(predictor, source, str(tmp_path / "out"))
  assert summary["frames"] == 10
  assert sorted(os.listdir(tmp_path / "out" / "masks"))[0] == "clip_00000.png"
  video = frames.open_source(summary["video"])
  assert sum(1 for _ in video.frames()) == 10
  names = [r["frame"] for r in _read_csv(tmp_path / "out" / "predictions.csv")]
  assert names == [f"clip_{i:05d}" for i in range(10)]
  tracks = _read_csv(summary["tracks"])  # what the tiny model finds is tracked; a header alone = nothing
  assert all(set(r) >= {"track_id", "frame", "centroid_x_px", "area_px"} for r in tracks)
  assert all(0 <= int(r["frame"]) < 10 for r in tracks)


def test_clip_tracks_follow_the_vessels_of_a_phantom_clip(tmp_path):
  """Tracks from a clip of exact masks: a mask-copying "model" (the frame is its own mask)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from veinjax.data import phantom_clips  # pylint: disable=g-import-not-at-top
  from conftest import load_config  # pylint: disable=g-import-not-at-top

  class MaskIsFrame(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return 40.0 * (x[..., :1] - 0.5)

  clip = phantom_clips.generate_clip(3, size=64, num_frames=12, render_frames=False)
  writer = frames.VideoWriter(str(tmp_path / "masks.mp4"), fps=10)
  for mask in clip.masks:
    writer.add(np.repeat((mask > 0)[..., None] * np.uint8(255), 3, axis=-1))
  writer.close()
  config = load_config("default")
  config.image_size = 64
  predictor = inference.Predictor([(MaskIsFrame(), {})], config, batch_size=4)
  summary = predict_lib.predict_to_dir(predictor, frames.open_source(str(tmp_path / "masks.mp4")),
                                       str(tmp_path / "out"))
  rows = _read_csv(summary["tracks"])
  vein_ids = [v["id"] for v in clip.vessels if v["kind"] == "vein"]
  seen = {i: int(sum((clip.instances[t] == i).any() for t in range(12))) for i in vein_ids}
  assert max(seen.values()) >= 3
  # One track per vein in view (through the video codec's blur of the mask edges), each in every frame.
  assert len({r["track_id"] for r in rows}) == sum(count >= 3 for count in seen.values())
  for track_id in {r["track_id"] for r in rows}:
    assert len([r for r in rows if r["track_id"] == track_id]) >= 3


def test_multi_frame_tiff_is_a_clip(predictor, tmp_path):
  pages = [Image.fromarray(np.full((32, 40), 40 * i, np.uint8)) for i in range(3)]
  pages[0].save(tmp_path / "sweep.tif", save_all=True, append_images=pages[1:])
  source = frames.open_source(str(tmp_path / "sweep.tif"))
  assert source.is_clip and [n for n, _ in source.frames()] == ["sweep_00000", "sweep_00001", "sweep_00002"]


def test_bad_inputs_are_clear_errors(predictor, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(BadExampleError, match="folder without images"):
    frames.open_source(str(empty))
  with pytest.raises(BadExampleError, match="matches no image"):
    frames.open_source(str(tmp_path / "*.png"))
  with pytest.raises(BadExampleError, match="does not exist"):
    frames.open_source(str(tmp_path / "nothing.png"))
  with pytest.raises(BadExampleError, match="unknown file type"):
    (tmp_path / "notes.txt").write_text("x")
    frames.open_source(str(tmp_path / "notes.txt"))
  (tmp_path / "noframes.mp4").write_bytes(b"")
  with pytest.raises(BadExampleError, match="noframes.mp4"):
    list(frames.open_source(str(tmp_path / "noframes.mp4")).frames())
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="--output=.*is a file"):
    predict_lib.predict_to_dir(predictor, frames.open_source(str(_frames_dir(tmp_path / "in", 1))),
                               str(tmp_path / "file"))


def test_unreadable_frame_stops_or_is_skipped_keeping_finished_frames(predictor, tmp_path):
  folder = _frames_dir(tmp_path / "in", count=3)
  data = (folder / "f1.png").read_bytes()
  (folder / "f1.png").write_bytes(data[: len(data) // 2])  # truncated
  with pytest.raises(BadExampleError, match="f1.png.*--on_bad_frame=skip"):
    predict_lib.predict_to_dir(predictor, frames.open_source(str(folder)), str(tmp_path / "stop"))
  skipped = predict_lib.predict_to_dir(predictor, frames.open_source(str(folder), skip_bad=True),
                                       str(tmp_path / "skip"))
  assert skipped["frames"] == 2 and skipped["skipped"] == [str(folder / "f1.png")]
  assert sorted(os.listdir(tmp_path / "skip" / "masks")) == ["f0.png", "f2.png"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_disk_full_stops_with_a_clear_error_and_no_half_written_file(predictor, tmp_path):
  """The disk is full when frame f2's overlay is written, after its mask (the overlay's temporary file is a
  link to /dev/full, where every write fails with ENOSPC): the frames before it are whole and listed in
  predictions.csv, and nothing of f2 is left, not even its mask."""
  source = frames.open_source(str(_frames_dir(tmp_path / "in", count=5)))  # batches of 4: f2 mid-batch
  out = tmp_path / "out"
  os.makedirs(out / "overlays")
  os.symlink("/dev/full", out / "overlays" / "f2.png.tmp")
  with pytest.raises(files.DiskFullError) as info:
    predict_lib.predict_to_dir(predictor, source, str(out))
  message = str(info.value)
  assert message.startswith(f"Could not write {out / 'overlays' / 'f2.png'}: the disk is full"), message
  assert f"{out} holds the results of the first 2 frame(s) and nothing of the next, and predictions.csv" in message
  assert "run the same command again" in message
  assert [r["frame"] for r in _read_csv(out / "predictions.csv")] == ["f0", "f1"]
  assert sorted(os.listdir(out / "masks")) == ["f0.png", "f1.png"]  # no f2.png, no temporary file
  assert sorted(os.listdir(out / "overlays")) == ["f0.png", "f1.png"]
  for name in ("f0", "f1"):
    assert np.asarray(Image.open(out / "masks" / f"{name}.png")).shape == (40, 56)  # whole PNGs


def test_predict_main_end_to_end(trained, tmp_path):
  _, workdir, _ = trained
  _frames_dir(tmp_path / "in", count=2)
  out = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"--workdir={workdir},{workdir}",
                        f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}", "--tta=hflip",
                        "--postprocess=largest,fill_holes", "--batch_size=2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "out" / "masks")) == ["f0.png", "f1.png"]
  bad = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"--workdir={workdir}",
                        f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'o2'}", "--postprocess=biggest"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert bad.returncode != 0 and "unknown step 'biggest'" in bad.stderr
