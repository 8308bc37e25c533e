"""What a probe of bad inputs found (issue 17), each fixed and pinned here; docs/bad_inputs.md is the table.

EXIF orientation, 12-bit data in 16-bit PNGs, a changed config on resume, an unknown config key, a corrupt
file of the test split, and the smaller ones: the image_size flag, the NaN message without checkpoints, a
diverging loss, the quoted "Done" hint, eval.py's file per checkpoint, and the mains' one-line errors.
"""

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_config
from veinjax import checkpoint
from veinjax import cli
from veinjax import evaluation
from veinjax import train_lib
from veinjax import workdir as workdir_lib
from veinjax.data import decode
from veinjax.data import sources
from veinjax.data.decode import BadExampleError

_ORIENTATION = 0x0112


def _exif(orientation):
  exif = Image.Exif()
  exif[_ORIENTATION] = orientation
  return exif.tobytes()


def _with_sbit(png: bytes, bits: int) -> bytes:
  """A PNG with an sBIT chunk (gray: one byte) inserted after IHDR, as acquisition software writes it."""
  end = png.index(b"IHDR") + 4 + 13 + 4  # type, data, CRC
  chunk = struct.pack(">I", 1) + b"sBIT" + bytes([bits]) + struct.pack(">I", zlib.crc32(b"sBIT" + bytes([bits])))
  return png[:end] + chunk + png[end:]


def _png16(values: np.ndarray, sbit=None) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(values.astype(np.uint16)).save(buffer, "PNG")
  return _with_sbit(buffer.getvalue(), sbit) if sbit else buffer.getvalue()


def _old_16bit(values: np.ndarray) -> np.ndarray:
  """What read_image made of 16-bit files before high_bit_depth: 65535 -> 255."""
  return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# ---- 1. EXIF orientation ----


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
  """A phone JPEG stored landscape with orientation 6 (rotate 90° clockwise to view) is read upright, so it
  lines up with its mask (drawn on the upright picture); a mask PNG carrying EXIF is turned alike."""
  stored = np.zeros((20, 40), np.uint8)
  stored[:, :10] = 255  # the stored picture's left edge: the upright picture's top
  Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=95, exif=_exif(6))
  image = decode.read_image(tmp_path / "phone.jpg")
  assert image.shape == (40, 20, 1)
  assert image[:8, :, 0].min() > 200 and image[12:, :, 0].max() < 50
  assert decode.check_file(tmp_path / "phone.jpg") == (20, 40)  # (width, height), upright

  mask = np.zeros((20, 40), np.uint8)
  mask[:, :10] = 1
  Image.fromarray(mask).save(tmp_path / "mask.png", exif=_exif(6))
  np.testing.assert_array_equal(decode.read_mask(tmp_path / "mask.png"), np.rot90(mask, k=-1))

  # Through the folder dataset: the upright image with a mask of the upright size loads, aligned.
  root = tmp_path / "data"
  for split in ("train", "test"):
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir()
    Image.fromarray(stored).save(root / split / "images" / "a.jpg", quality=95, exif=_exif(6))
    upright_mask = np.zeros((40, 20), np.uint8)
    upright_mask[:10] = 255
    Image.fromarray(upright_mask).save(root / split / "masks" / "a.png")
  config = tiny_config("", **{"dataset.name": "folder", "dataset.root": str(root),
                              "dataset.validation_fraction": 0.0})
  (example,) = sources.load_raw_split(config, "test").as_numpy_iterator()
  assert example["image"].shape == (40, 20, 1) and example["mask"].shape == (40, 20)
  assert example["image"][example["mask"] == 1].mean() > 200 and example["image"][example["mask"] == 0].mean() < 50


# ---- 4. 12-bit data in 16-bit PNGs ----


def test_12bit_png_is_scaled_by_its_sbit_depth_or_the_rule(tmp_path, caplog):
  raw12 = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # 4096 gray levels, 0..4095
  (tmp_path / "sbit12.png").write_bytes(_png16(raw12, sbit=12))
  (tmp_path / "plain12.png").write_bytes(_png16(raw12))
  assert decode.png_significant_bits(tmp_path / "sbit12.png") == 12
  assert decode.png_significant_bits(tmp_path / "plain12.png") is None
  expected12 = ((raw12.astype(np.uint32) * 255 + 2047) // 4095).astype(np.uint8)

  # auto: the sBIT depth (all 256 levels), not 17 levels.
  auto = decode.read_image(tmp_path / "sbit12.png")[..., 0]
  np.testing.assert_array_equal(auto, expected12)
  assert len(np.unique(auto)) == 256
  # Without sBIT, auto is 16 (as before); "12" says what the file does not.
  np.testing.assert_array_equal(decode.read_image(tmp_path / "plain12.png")[..., 0], _old_16bit(raw12))
  np.testing.assert_array_equal(decode.read_image(tmp_path / "plain12.png", "12")[..., 0], expected12)
  minmax = decode.read_image(tmp_path / "plain12.png", "minmax")[..., 0]
  assert (minmax.min(), minmax.max()) == (0, 255) and len(np.unique(minmax)) == 256

  # True 16-bit data stays bit-identical: no sBIT, sBIT 16, and 12 significant bits scaled up to 16 bits
  # as the PNG standard says (samples above 4095: the "16" rule applies).
  full = np.random.default_rng(0).integers(0, 65536, (32, 32)).astype(np.uint16)
  shifted = (raw12.astype(np.uint32) << 4).astype(np.uint16)
  for name, values, sbit in (("full.png", full, None), ("full16.png", full, 16), ("shifted.png", shifted, 12)):
    (tmp_path / name).write_bytes(_png16(values, sbit))
    for rule in ("auto", "16"):
      np.testing.assert_array_equal(decode.read_image(tmp_path / name, rule)[..., 0], _old_16bit(values))
  with pytest.raises(BadExampleError, match=r"full\.png has a sample of \d+, above 4095.*high_bit_depth=12"):
    decode.read_image(tmp_path / "full.png", "12")
  with pytest.raises(ValueError, match=r"--config\.dataset\.high_bit_depth='10'; valid: auto, 16, 12, minmax"):
    decode.read_image(tmp_path / "full.png", "10")

  # The folder dataset passes config.dataset.high_bit_depth to the reader.
  root = tmp_path / "data"
  for split in ("train", "test"):
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir()
    (root / split / "images" / "a.png").write_bytes(_png16(raw12))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / split / "masks" / "a.png")
  config = tiny_config("", **{"dataset.name": "folder", "dataset.root": str(root),
                              "dataset.validation_fraction": 0.0, "dataset.high_bit_depth": "12"})
  (example,) = sources.load_raw_split(config, "test").as_numpy_iterator()
  np.testing.assert_array_equal(example["image"][..., 0], expected12)
  config.dataset.high_bit_depth = "bits"
  with pytest.raises(ValueError, match="--config.dataset.high_bit_depth='bits'"):
    sources.num_examples(config, "test")


# ---- 2. A changed config on resume ----


def _copy_run(trained, tmp_path, name):
  """A copy of the finished tiny run (2 epochs x 4 steps) to resume from."""
  workdir = str(tmp_path / name)
  shutil.copytree(trained[1], workdir)
  return workdir


def _stored(workdir):
  with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
    return json.load(f)


def _kept_configs(workdir):
  return sorted(n for n in os.listdir(workdir) if n.startswith(workdir_lib.CONFIG_FILE + "."))


def test_resume_with_a_changed_config_is_an_error_naming_the_fields(trained, tmp_path, monkeypatch):
  config, _, _ = trained
  workdir = _copy_run(trained, tmp_path, "resume")
  before = _stored(workdir)
  changed = config.copy_and_resolve_references()
  changed.seed = 1
  changed.loss = "dice"
  changed.augment.enabled = False
  # Refused before any data is prepared, and the run's config.json is left as it was.
  monkeypatch.setattr(train_lib, "_check_data", mock.Mock(side_effect=AssertionError("data prepared")))
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"augment\.enabled, loss, seed differ from its config\.json \(augment\.enabled: True "
                           r"there, False now; loss: 'bce' there, 'dice' now; seed: 0 there, 1 now\).*"
                           r"--allow_config_change"):
    train_lib.train_and_evaluate(changed, workdir)
  assert _stored(workdir) == before and not _kept_configs(workdir)
  monkeypatch.undo()

  # Run-length / logging fields may change (the finished run has nothing left to train); the old record is kept.
  lengthy = config.copy_and_resolve_references()
  lengthy.log_every_steps, lengthy.keep_checkpoints, lengthy.num_summary_images = 1, 3, 0
  assert train_lib.train_and_evaluate(lengthy, workdir)["step"] == 8
  assert _stored(workdir)["log_every_steps"] == 1
  (kept,) = _kept_configs(workdir)
  with open(os.path.join(workdir, kept)) as f:
    assert json.load(f) == before

  # --allow_config_change: resumes, logs each difference, keeps the old config.json beside the new one.
  with mock.patch.object(train_lib.logging, "warning") as warning:
    assert train_lib.train_and_evaluate(changed, workdir, allow_config_change=True)["step"] == 8
  logged = [call.args[1] for call in warning.call_args_list if "allow_config_change" in call.args[0]]
  assert logged == ["augment.enabled", "loss", "seed"]
  assert (_stored(workdir)["seed"], _stored(workdir)["loss"]) == (1, "dice")
  assert len(_kept_configs(workdir)) == 2


def test_resume_compares_the_resolved_config_and_fields_added_since(trained, tmp_path):
  """input_mean / input_std are resolved from config.json before comparing; a config.json written before a
  field existed (dataset.high_bit_depth) resumes; num_epochs is a change under a cosine schedule."""
  config, _, _ = trained
  workdir = _copy_run(trained, tmp_path, "older")
  stored = _stored(workdir)
  assert stored["input_mean"] == [] and config.input_mean == ()
  del stored["dataset"]["high_bit_depth"]
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), stored)
  assert train_lib.train_and_evaluate(config, workdir)["step"] == 8
  assert _stored(workdir)["dataset"]["high_bit_depth"] == "auto" and not _kept_configs(workdir)
  cosine_run = _stored(workdir)
  cosine_run["lr_schedule"] = "cosine"
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), cosine_run)
  longer = config.copy_and_resolve_references()
  longer.lr_schedule, longer.num_epochs = "cosine", 3
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"num_epochs differs .*num_epochs: 2 there, 3 now"):
    train_lib.train_and_evaluate(longer, workdir)


# ---- 3. An unknown config key; 6. the mains' one-line errors ----


def _main(script, *args, cwd=ROOT):
  return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300)


def _one_line_error(result) -> str:
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: "), result.stderr[-3000:]
  return last


def test_unknown_config_key_names_the_flag_and_the_closest_fields(tmp_path):
  quickstart = f"--config={ROOT / 'configs' / 'quickstart.py'}"
  line = _one_line_error(_main("train.py", quickstart, f"--workdir={tmp_path / 'run'}", "--config.num_epochs=1",
                               "--config.lerning_rate=0.1"))
  assert "--config.lerning_rate" in line and "has no field 'lerning_rate'" in line
  assert "closest valid fields: --config.learning_rate" in line
  line = _one_line_error(_main("train.py", quickstart, f"--workdir={tmp_path / 'run'}", "--config.nonexistent=1"))
  assert "--config.nonexistent" in line and "closest valid fields: --config." in line
  line = _one_line_error(_main("eval.py", f"--workdir={tmp_path / 'run'}", quickstart, "--config.datset.root=x"))
  assert "closest valid fields: --config.dataset.root" in line
  line = _one_line_error(_main("train.py", "--config=configs/nope.py", f"--workdir={tmp_path / 'run'}"))
  assert line == "Error: --config: the config file does not load: [Errno 2] No such file or directory: " \
      "'configs/nope.py'"
  assert not (tmp_path / "run").exists()  # failed before anything was done
  assert cli.closest_fields("name", ["seed", "dataset.name", "model"]) == ["dataset.name"]


def test_mains_print_a_clear_error_alone_and_the_traceback_with_verbosity(tmp_path):
  nowhere = tmp_path / "nowhere"
  line = _one_line_error(_main("eval.py", f"--workdir={nowhere}"))
  assert line == f"Error: {nowhere}/config.json does not exist: is {nowhere} a train.py workdir?"
  verbose = _main("eval.py", f"--workdir={nowhere}", "--verbosity=1")
  assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "FileNotFoundError" in verbose.stderr
  line = _one_line_error(_main("predict.py", f"--workdir={nowhere}", f"--input={tmp_path / 'none.png'}",
                               f"--output={tmp_path / 'out'}"))
  assert line.startswith("Error: --input=") and "does not exist" in line
  line = _one_line_error(_main("train.py", f"--config={ROOT / 'configs' / 'quickstart.py'}",
                               f"--workdir={tmp_path / 'run'}", "--config.image_size=100"))
  assert line == ("Error: --config.image_size=100 is not a positive multiple of 32 (the models' input must divide "
                  "by 32); use --config.image_size=96 or 128.")


# ---- 5. A corrupt file of the test split ----


def _folder_dataset(root, n_train=4, n_test=2):
  for split, n in (("train", n_train), ("test", n_test)):
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir()
    for i in range(n):
      rng = np.random.default_rng(i)
      Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / split / "images" / f"{i}.png")
      mask = np.zeros((32, 32), np.uint8)
      mask[8:20, 4:24] = 255
      Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
  return root


def test_bad_test_split_file_stops_training_before_the_first_step(tmp_path, monkeypatch):
  root = _folder_dataset(tmp_path / "data")
  config = tiny_config("", **{"dataset.name": "folder", "dataset.root": str(root),
                              "dataset.validation_fraction": 0.25, "num_epochs": 1})
  sources.check_files(config)  # a good dataset passes
  data = (root / "test" / "images" / "1.png").read_bytes()
  (root / "test" / "images" / "1.png").write_bytes(data[: len(data) // 2])  # truncated
  # Nothing may train: the check comes before the model is built.
  monkeypatch.setattr(train_lib, "_restore_or_init", mock.Mock(side_effect=AssertionError("trained")))
  with pytest.raises(BadExampleError, match=r"the 'test' split of the folder dataset has a bad example .*"
                                            r"cannot decode image file .*test/images/1\.png"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  # A missing mask and a size mismatch are found from the headers too.
  (root / "test" / "images" / "1.png").write_bytes(data)
  (root / "test" / "masks" / "1.png").unlink()
  with pytest.raises(BadExampleError, match=r"'test' split.*test/images/1\.png has no label"):
    sources.check_files(config)
  Image.fromarray(np.zeros((16, 32), np.uint8)).save(root / "test" / "masks" / "1.png")
  with pytest.raises(BadExampleError, match=r"'test' split.*size mismatch.*is 32x32 .*is 32x16"):
    sources.check_files(config)
  Image.fromarray(np.full((32, 32), 128, np.uint8)).save(root / "test" / "masks" / "1.png")
  with pytest.raises(BadExampleError, match=r"'test' split.*test/masks/1\.png contains value\(s\) 128"):
    sources.check_files(config)
  config.dataset.on_bad_example = "skip"  # skipped where they are loaded: nothing to stop for
  sources.check_files(config)


# ---- 6. The smaller ones ----


def test_image_size_error_names_the_flag(phantom_data_dir):
  with pytest.raises(ValueError, match=r"--config\.image_size=100 .*use --config\.image_size=96 or 128"):
    train_lib.validate_config(tiny_config(phantom_data_dir, image_size=100))


class _Checkpoints:
  def __init__(self, latest, best):
    self.latest, self.best = latest, best

  def latest_step(self):
    return self.latest

  def best_step(self):
    return self.best


def _run_stub(latest=None, best=None, learning_rate=1e6):
  par = mock.Mock()
  par.first = lambda tree: tree
  return mock.Mock(par=par, checkpoints=_Checkpoints(latest, best), workdir="/runs/x",
                   config=mock.Mock(learning_rate=learning_rate))


def _progress():
  progress = mock.Mock(epoch=0, first_loss=None, warned_divergence=False)
  progress.epoch_stats, progress.interval_stats = mock.Mock(), mock.Mock()
  return progress


def _step(loss):
  return {"loss": jnp.float32(loss), "confusion": jnp.zeros((2, 2)), "learning_rate": jnp.float32(0.1)}


@pytest.mark.parametrize("latest,best,expected", [
    (None, None, r"No checkpoint yet: /runs/x holds none"),
    (3, None, r"after step 3, so the latest checkpoint in /runs/x is from before the divergence, and there is "
              r"no best checkpoint yet"),
    (8, 4, r"after step 8, .* and so is the best \(step 4\)"),
])
def test_nan_message_says_which_checkpoints_exist(latest, best, expected):
  with pytest.raises(FloatingPointError, match=r"loss is nan at step 2 \(epoch 1\); stopping\. .*" + expected) as e:
    train_lib._read_back(_run_stub(latest, best), [(1, _step(0.7)), (2, _step(float("nan")))], _progress())
  assert "None" not in str(e.value)


def test_diverging_loss_is_warned_about_once():
  """1000 times the first step's loss: one warning, at the first step that reaches it."""
  progress = _progress()
  with mock.patch.object(train_lib.logging, "warning") as warning:
    train_lib._read_back(_run_stub(), [(1, _step(0.5)), (2, _step(400.0))], progress)  # 800 times
    assert not warning.called
    train_lib._read_back(_run_stub(), [(3, _step(600.0)), (4, _step(5e9))], progress)  # 1200 times, then more
  (call,) = warning.call_args_list
  assert "probably diverging" in call.args[0] and call.args[1:5] == (0.5, 1, 600.0, 3)


def test_diverging_training_run_warns(phantom_data_dir, tmp_path):
  """learning_rate=1e6: the loss jumps from ~0.8 to ~1e10 at step 2, and the run says so there, once (on this
  tiny run it then turns NaN and stops; on larger ones it trains on at such losses)."""
  config = tiny_config(phantom_data_dir, num_epochs=1, learning_rate=1e6)
  with mock.patch.object(train_lib.logging, "warning") as warning, contextlib.suppress(FloatingPointError):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  (diverging,) = [c for c in warning.call_args_list if "probably diverging" in c.args[0]]
  assert diverging.args[2] == 1 and diverging.args[4] == 2 and diverging.args[3] > 1e3 * diverging.args[1]


def test_done_hint_quotes_the_workdir():
  assert cli.shell_command("python", "eval.py", "--workdir=/tmp/my runs/a") == \
      "python eval.py '--workdir=/tmp/my runs/a'"
  assert cli.shell_command("python", "eval.py", "--workdir=runs/a") == "python eval.py --workdir=runs/a"
  assert "cli.shell_command(" in (ROOT / "train.py").read_text()


def test_eval_of_latest_or_a_path_does_not_overwrite_the_best_checkpoints_metrics(trained):
  config, workdir, _ = trained
  out = os.path.join(workdir, "eval")
  best = evaluation.evaluate(config, workdir, checkpoint="best", split="test")
  with open(os.path.join(out, "test_metrics.json")) as f:
    best_file = f.read()
  latest = evaluation.evaluate(config, workdir, checkpoint="latest", split="validation")
  evaluation.evaluate(config, workdir, checkpoint="latest", split="test")
  by_path = evaluation.evaluate(config, workdir, checkpoint=os.path.join(workdir, checkpoint.LATEST_DIR),
                                split="test")
  with open(os.path.join(out, "test_metrics.json")) as f:
    assert f.read() == best_file and json.loads(best_file)["checkpoint"] == "best"
  for name, which in (("validation_latest_metrics.json", "latest"), ("test_latest_metrics.json", "latest"),
                      (f"test_step{by_path['checkpoint_step']}_metrics.json", by_path["checkpoint"])):
    with open(os.path.join(out, name)) as f:
      assert json.load(f)["checkpoint"] == which, name
  assert latest["checkpoint_step"] == 8 and best["checkpoint"] == "best"
