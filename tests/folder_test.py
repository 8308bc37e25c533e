"""The folder dataset through `sources`: layouts, labels, seeded splits and every bad-input case."""

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image
import pytest

from veinjax.data import folder
from veinjax.data import sources

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "configs"))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position

H, W = 24, 32


def _config(root, seed=0, **dataset):
  config = default.get_config()
  config.seed = seed
  config.dataset.name = "folder"
  config.dataset.root = str(root)
  for key, value in dataset.items():
    assert key in config.dataset, key  # only real fields
    setattr(config.dataset, key, value)
  return config


def _image(seed, rgb=False, size=(H, W)):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size + ((3,) if rgb else ()), dtype=np.uint8)


def _mask(seed, size=(H, W)):
  mask = np.zeros(size, np.uint8)
  mask[2 + seed % 5: 12 + seed % 5, 4:20] = 255
  return mask


def _add(split_dir, stem, seed, rgb=False, label="mask"):
  """Writes split_dir/images/<stem>.png and its label (mask PNG, Labelme JSON or none)."""
  (split_dir / "images").mkdir(parents=True, exist_ok=True)
  Image.fromarray(_image(seed, rgb)).save(split_dir / "images" / f"{stem}.png")
  if label == "mask":
    (split_dir / "masks").mkdir(exist_ok=True)
    Image.fromarray(_mask(seed)).save(split_dir / "masks" / f"{stem}.png")
  elif label == "json":
    shapes = [{"label": "vein", "points": [[4, 2], [20, 12]], "shape_type": "rectangle"}]
    (split_dir / "images" / f"{stem}.json").write_text(json.dumps(
        {"shapes": shapes, "imageHeight": H, "imageWidth": W}))


def _split_folders(root, n_train=5, n_test=3, rgb=False):
  for i in range(n_train):
    _add(root / "train", f"tr{i}", i, rgb)
  for i in range(n_test):
    _add(root / "test", f"te{i}", 100 + i, rgb)
  return root


def _examples(config, split):
  return list(sources.load_raw_split(config, split).as_numpy_iterator())


def test_split_folders_with_masks(tmp_path):
  config = _config(_split_folders(tmp_path), validation_fraction=0.0)
  test = _examples(config, "test")
  assert [e["id"].decode() for e in test] == ["te0", "te1", "te2"]
  assert test[0]["image"].shape == (H, W, 1) and test[0]["image"].dtype == np.uint8
  np.testing.assert_array_equal(test[0]["image"][:, :, 0], _image(100))
  np.testing.assert_array_equal(test[1]["mask"], _mask(101) // 255)  # 0/255 mapped to 0/1
  assert sources.num_examples(config, "train") == 5 and sources.num_examples(config, "test") == 3
  assert sources.num_classes(config) == 2
  with pytest.raises(ValueError, match=r"no 'validation' split.*validation_fraction"):
    sources.load_raw_split(config, "validation")


def test_rgb_images_to_gray_or_rgb(tmp_path):
  root = _split_folders(tmp_path, 2, 1, rgb=True)
  gray = _examples(_config(root), "test")[0]["image"]
  expected = np.asarray(Image.fromarray(_image(100, rgb=True)).convert("L"))
  assert gray.shape == (H, W, 1)
  np.testing.assert_allclose(gray[:, :, 0], expected, atol=1)
  config = _config(root)
  config.in_channels = 3
  np.testing.assert_array_equal(_examples(config, "test")[0]["image"], _image(100, rgb=True))


def test_labelme_json_beside_the_image(tmp_path):
  _add(tmp_path / "train", "a", 0, label="json")
  _add(tmp_path / "test", "b", 1, label="json")
  example = _examples(_config(tmp_path), "test")[0]
  assert example["mask"].dtype == np.uint8 and set(np.unique(example["mask"])) == {0, 1}
  assert abs(int(example["mask"].sum()) - 16 * 10) <= 2 * (16 + 10)


def test_validation_folder_is_used_when_present(tmp_path):
  root = _split_folders(tmp_path, 4, 2)
  _add(root / "validation", "va0", 50)
  config = _config(root)
  assert [e["id"] for e in _examples(config, "validation")] == [b"va0"]
  assert sources.num_examples(config, "train") == 4  # nothing carved


def test_validation_carved_disjoint_and_deterministic(tmp_path):
  config = _config(_split_folders(tmp_path, n_train=10), validation_fraction=0.3, seed=3)
  train = [e["id"] for e in _examples(config, "train")]
  val = [e["id"] for e in _examples(config, "validation")]
  assert len(val) == 3 and len(train) == 7
  assert not set(train) & set(val) and set(train) | set(val) == {f"tr{i}".encode() for i in range(10)}
  assert [e["id"] for e in _examples(config, "validation")] == val  # deterministic
  assert sources.num_examples(config, "validation") == 3
  other = [e["id"] for e in _examples(_config(tmp_path, validation_fraction=0.3, seed=4), "validation")]
  assert other != val  # the seed decides (10 choose 3 draws: a clash would be a 1/120 fluke for fixed seeds)


def test_single_folder_split_by_seed(tmp_path):
  for i in range(10):
    _add(tmp_path, f"s{i}", i)
  config = _config(tmp_path, test_fraction=0.4, validation_fraction=0.25)
  test = [e["id"] for e in _examples(config, "test")]
  train = [e["id"] for e in _examples(config, "train")]
  val = [e["id"] for e in _examples(config, "validation")]
  assert (len(test), len(train), len(val)) == (4, 4, 2)
  assert len(set(test) | set(train) | set(val)) == 10
  assert [e["id"] for e in _examples(config, "test")] == test
  config.dataset.test_fraction = 0.0
  with pytest.raises(ValueError, match="test_fraction"):
    sources.load_raw_split(config, "test")


def test_palette_masks_and_explicit_value_mapping(tmp_path):
  _split_folders(tmp_path, 1, 0)
  (tmp_path / "test" / "images").mkdir(parents=True)
  Image.fromarray(_image(9)).save(tmp_path / "test" / "images" / "p.png")
  (tmp_path / "test" / "masks").mkdir()
  pal = Image.fromarray(np.array([[0, 2], [1, 2]], np.uint8).repeat(12, 0).repeat(16, 1), "P")
  pal.putpalette([0, 0, 0, 255, 255, 255, 255, 255, 255] + [0] * 759)  # colours would say 0/255/255
  pal.save(tmp_path / "test" / "masks" / "p.png")
  config = _config(tmp_path, mask_values="0:0,1:1,2:2,255:1")
  mask = _examples(config, "test")[0]["mask"]
  assert mask[0, 0] == 0 and mask[0, 20] == 2 and mask[20, 0] == 1
  assert sources.num_classes(config) == 3


# ---- Bad input: each case names the file and the fix; skip mode skips and logs ----


def _one_bad_folder(tmp_path, make_bad):
  root = _split_folders(tmp_path, n_train=3, n_test=3)
  bad = make_bad(root / "test")
  return root, bad


def _corrupt(split_dir):
  (split_dir / "images" / "te1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  return "te1.png"


def _truncated(split_dir):
  path = split_dir / "images" / "te1.png"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return "te1.png"


def _missing_mask(split_dir):
  (split_dir / "masks" / "te1.png").unlink()
  return "te1.png"


def _size_mismatch(split_dir):
  Image.fromarray(np.zeros((H + 2, W), np.uint8)).save(split_dir / "masks" / "te1.png")
  return "te1.png"


def _unmapped_value(split_dir):
  mask = _mask(101)
  mask[0, 0] = 128
  Image.fromarray(mask).save(split_dir / "masks" / "te1.png")
  return "te1.png"


def _unknown_label(split_dir):
  (split_dir / "masks" / "te1.png").unlink()
  shapes = [{"label": "nerve", "points": [[1, 1], [5, 5]], "shape_type": "rectangle"}]
  (split_dir / "images" / "te1.json").write_text(json.dumps({"shapes": shapes}))
  return "te1.json"


BAD_CASES = {
    "corrupt": (_corrupt, r"cannot decode image file .*te1\.png.*corrupt, truncated"),
    "truncated": (_truncated, r"cannot decode image file .*te1\.png"),
    "missing_mask": (_missing_mask, r"te1\.png has no label: looked for the mask .*masks/te1\.png and the "
                                    r"Labelme file .*te1\.json"),
    "size_mismatch": (_size_mismatch, r"size mismatch: image .*te1\.png is 32x24.*mask .*te1\.png is 32x26"),
    "unmapped_value": (_unmapped_value, r"mask .*te1\.png contains value\(s\) 128 .*--config\.dataset\.mask_values"),
    "unknown_label": (_unknown_label, r"te1\.json: Labelme label 'nerve'.*--config\.dataset\.labelme_labels"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_example_is_an_error_naming_the_file(tmp_path, case):
  make_bad, pattern = BAD_CASES[case]
  root, _ = _one_bad_folder(tmp_path, make_bad)
  with pytest.raises(ValueError, match=pattern):
    sources.load_raw_split(_config(root), "test")
  assert sources.num_examples(_config(root, validation_fraction=0.0), "train") == 3  # other splits fine


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_skip_mode_skips_logs_each_file_and_the_count(tmp_path, case):
  make_bad, _ = BAD_CASES[case]
  root, bad_name = _one_bad_folder(tmp_path, make_bad)
  config = _config(root, on_bad_example="skip")
  with mock.patch.object(folder.logging, "warning") as warning:
    ids = [e["id"] for e in _examples(config, "test")]
  assert ids == [b"te0", b"te2"]
  messages = [call.args[0] % call.args[1:] for call in warning.call_args_list]
  assert any("te1.png" in m and bad_name.split(".")[0] in m for m in messages), messages
  assert any("Skipped 1 of 3" in m for m in messages), messages
  assert sources.num_examples(config, "test") == 2


def test_empty_and_missing_folders(tmp_path):
  (tmp_path / "train" / "images").mkdir(parents=True)
  (tmp_path / "test" / "images").mkdir(parents=True)
  (tmp_path / "train" / "images" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=r"no images in .*train/images"):
    sources.load_raw_split(_config(tmp_path), "train")
  with pytest.raises(ValueError, match=r"no images folder under --config\.dataset\.root"):
    sources.load_raw_split(_config(tmp_path / "test" / "images"), "train")
  with pytest.raises(ValueError, match=r"--config\.dataset\.root.*is not a folder"):
    sources.load_raw_split(_config(tmp_path / "nowhere"), "train")
  with pytest.raises(ValueError, match=r"--config\.dataset\.root"):
    sources.load_raw_split(_config(""), "train")


def test_bad_flags_and_names(tmp_path):
  root = _split_folders(tmp_path, 2, 1)
  with pytest.raises(ValueError, match=r"--config\.dataset\.mask_values='0-0'"):
    sources.load_raw_split(_config(root, mask_values="0-0"), "test")
  with pytest.raises(ValueError, match=r"unknown split 'val'.*train, validation, test"):
    sources.load_raw_split(_config(root), "val")
  with pytest.raises(ValueError, match=r"vein_phantom, folder, usgra_seg"):
    sources.load_raw_split(_config(root, name="mnist"), "train")
  with pytest.raises(ValueError, match=r"on_bad_example"):
    sources.load_raw_split(_config(root, on_bad_example="ignore"), "test")
  config = _config(root)
  config.in_channels = 2
  with pytest.raises(ValueError, match=r"in_channels"):
    sources.load_raw_split(config, "test")
