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


# ---- Ignored pixels: mask values mapped to "ignore", Labelme's __ignore__ ----

IGNORE = folder.IGNORE_LABEL


def test_mask_value_mapped_to_ignore(tmp_path):
  _split_folders(tmp_path, 1, 0)
  (tmp_path / "test" / "images").mkdir(parents=True)
  Image.fromarray(_image(9)).save(tmp_path / "test" / "images" / "p.png")
  (tmp_path / "test" / "masks").mkdir()
  mask = _mask(1)
  mask[20:, :10] = 128  # e.g. an unsure region
  Image.fromarray(mask).save(tmp_path / "test" / "masks" / "p.png")
  config = _config(tmp_path, mask_values="0:0,255:1,128:ignore")
  got = _examples(config, "test")[0]["mask"]
  np.testing.assert_array_equal(got, np.where(mask == 128, IGNORE, mask // 255))
  assert sources.num_classes(config) == 2  # the ignore label is no class
  assert folder.format_mask_values(folder.parse_mask_values("0:0,255:1,128:ignore")) == "0:0,128:ignore,255:1"


def test_a_class_colliding_with_the_ignore_label_is_an_error(tmp_path):
  root = _split_folders(tmp_path, 2, 1)
  with pytest.raises(ValueError, match=r"--config\.dataset\.mask_values='0:0,1:255'.*255 is reserved"):
    sources.load_raw_split(_config(root, mask_values="0:0,1:255"), "test")
  with pytest.raises(ValueError, match=r"--config\.dataset\.labelme_labels maps 'vein' to 255.*reserved"):
    sources.load_raw_split(_config(root, labelme_labels={"vein": 255}), "test")


def test_labelme_ignore_regions_through_the_folder_dataset(tmp_path):
  # Labelme's example convention: shapes in order, the __ignore__ region (drawn last) excluded.
  _add(tmp_path / "train", "a", 0, label="json")
  (tmp_path / "test" / "images").mkdir(parents=True)
  Image.fromarray(_image(1)).save(tmp_path / "test" / "images" / "b.png")
  shapes = [{"label": "vein", "points": [[4, 2], [20, 12]], "shape_type": "rectangle"},
            {"label": "unsure", "points": [[2, 16], [8, 22]], "shape_type": "rectangle"},
            {"label": "__ignore__", "points": [[16, 8], [30, 20]], "shape_type": "rectangle"}]
  (tmp_path / "test" / "images" / "b.json").write_text(json.dumps({"shapes": shapes, "imageHeight": H,
                                                                   "imageWidth": W}))
  config = _config(tmp_path, labelme_labels={"vein": 1, "unsure": "ignore"})
  mask = _examples(config, "test")[0]["mask"]
  assert mask[5, 5] == 1 and mask[10, 18] == IGNORE and mask[18, 5] == IGNORE and mask[0, 31] == 0
  assert set(np.unique(mask)) == {0, 1, IGNORE}
  assert sources.num_classes(config) == 2 and sources.foreground_name(config) == "Vein"


# ---- Splits by subject: config.dataset.group_pattern ----

_PATTERN = r"^(patient\d+)_"


def _grouped_config(root, pattern=_PATTERN, seed=0, **dataset):
  config = _config(root, seed=seed, **dataset)
  config.dataset.group_pattern = pattern  # read with .get: works with or without the field in default.py
  return config


def _patients(images_dir, sizes, with_masks=False):
  """patient<k>_f<j>.png for patient k with sizes[k] frames (images only unless with_masks)."""
  split_dir = images_dir.parent
  for k, size in enumerate(sizes):
    for j in range(size):
      if with_masks:
        _add(split_dir, f"patient{k:02d}_f{j}", 7 * k + j)
      else:
        images_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(images_dir / f"patient{k:02d}_f{j}.png")


def _split_names(config):
  names = {}
  for split in ("train", "validation", "test"):
    try:
      names[split] = [f.name for f in sources._folder_split_files(config, split)]  # pylint: disable=protected-access
    except ValueError:
      continue
  return names


def _old_holdout(n, fraction, seed, salt):
  """A copy of sources.holdout before group_pattern existed."""
  selected = np.zeros(n, dtype=bool)
  if fraction == 0.0:
    return selected
  count = min(max(int(round(n * fraction)), 1), n - 1)
  order = np.random.default_rng([int(seed), salt]).permutation(n)
  selected[order[:count]] = True
  return selected


def test_without_group_pattern_the_splits_are_exactly_as_before(tmp_path):
  _patients(tmp_path / "one" / "images", [3, 1, 4, 2, 5, 1, 2])  # 18 files
  files = sorted(p.name for p in (tmp_path / "one" / "images").iterdir())
  for seed in range(25):
    for test_fraction, val_fraction in [(0.4, 0.1), (0.2, 0.25), (0.3, 0.0)]:
      test = _old_holdout(len(files), test_fraction, seed, 1)
      train = [f for f, t in zip(files, test) if not t]
      val = _old_holdout(len(train), val_fraction, seed, 2)
      want = {"train": [f for f, v in zip(train, val) if not v] if val.any() else train,
              "test": [f for f, t in zip(files, test) if t]}
      if val.any():
        want["validation"] = [f for f, v in zip(train, val) if v]
      kwargs = dict(seed=seed, test_fraction=test_fraction, validation_fraction=val_fraction)
      assert _split_names(_config(tmp_path / "one", **kwargs)) == want
      assert _split_names(_grouped_config(tmp_path / "one", pattern="", **kwargs)) == want
  # holdout itself is unchanged too.
  for n, fraction, seed in [(2, 0.5, 0), (10, 0.1, 3), (37, 0.33, 9), (300, 0.1, 0)]:
    np.testing.assert_array_equal(sources.holdout(n, fraction, seed, 2, "x"), _old_holdout(n, fraction, seed, 2))


def test_one_file_per_group_gives_the_ungrouped_selection():
  for n, fraction, seed in [(2, 0.5, 0), (10, 0.1, 3), (37, 0.33, 9), (300, 0.1, 0), (7, 0.9, 1)]:
    np.testing.assert_array_equal(sources.holdout_groups([f"g{i}" for i in range(n)], fraction, seed, 1, "x"),
                                  sources.holdout(n, fraction, seed, 1, "x"))


def test_no_group_is_ever_in_two_splits(tmp_path):
  sizes = [3, 1, 4, 2, 5, 1, 2, 6, 3, 2, 1, 4]  # 12 patients, 34 files
  _patients(tmp_path / "images", sizes)
  n = sum(sizes)
  seen_test = set()
  for seed in range(60):
    names = _split_names(_grouped_config(tmp_path, seed=seed, test_fraction=0.3, validation_fraction=0.2))
    groups = {split: {f.split("_")[0] for f in files} for split, files in names.items()}
    assert set(names) == {"train", "validation", "test"}
    assert sum(len(v) for v in names.values()) == n and len(set().union(*names.values())) == n
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]
    assert all(groups.values())  # at least one group each
    # About round(n * fraction) examples: within the largest group of the target.
    assert abs(len(names["test"]) - round(n * 0.3)) <= max(sizes)
    n_train = n - len(names["test"])
    assert abs(len(names["validation"]) - round(n_train * 0.2)) <= max(sizes)
    seen_test.add(frozenset(groups["test"]))
  assert len(seen_test) > 20  # the seed decides


def test_holdout_groups_edge_cases():
  groups = ["a"] * 10 + ["b"] * 2 + ["c"] * 3
  for seed in range(20):
    selected = sources.holdout_groups(groups, 0.01, seed, 1, "--config.dataset.test_fraction")
    names = {g for g, s in zip(groups, selected) if s}
    assert len(names) >= 1 and names != {"a", "b", "c"}
    assert all(s == selected[groups.index(g)] for g, s in zip(groups, selected))  # whole groups
    # A fraction that would take everything leaves a group.
    assert not sources.holdout_groups(groups, 0.99, seed, 1, "x").all()
  assert not sources.holdout_groups(groups, 0.0, 0, 1, "x").any()
  # Every group overshoots a 1-example target: the smallest one is taken.
  assert {g for g, s in zip(groups, sources.holdout_groups(groups, 0.05, 0, 1, "x")) if s} == {"b"}
  with pytest.raises(ValueError, match=r"--config\.dataset\.test_fraction=0\.2 by group.*1 group.*group_pattern"):
    sources.holdout_groups(["a"] * 5, 0.2, 0, 1, "--config.dataset.test_fraction")
  with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
    sources.holdout_groups(groups, 1.0, 0, 1, "x")


def test_group_splits_load_and_log_their_group_counts(tmp_path):
  _patients(tmp_path / "images", [3, 2, 4, 1, 2], with_masks=True)
  config = _grouped_config(tmp_path, seed=1, test_fraction=0.4, validation_fraction=0.25)
  with mock.patch.object(sources.logging, "info") as info:
    ids = {split: [e["id"].decode() for e in _examples(config, split)] for split in ("train", "validation", "test")}
  groups = {split: {i.split("_")[0] for i in v} for split, v in ids.items()}
  assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["validation"])
  assert not (groups["validation"] & groups["test"])
  messages = [call.args[0] % call.args[1:] for call in info.call_args_list if "by subject" in call.args[0]]
  assert len(messages) == 1, messages  # once, however often the splits are listed
  for split, names in ids.items():
    assert f"{split} {len(groups[split])} group(s) / {len(names)} example(s)" in messages[0], messages
  assert "--config.dataset.group_pattern" in messages[0]


def test_whole_match_pattern_and_split_folders(tmp_path):
  # No capture group: the whole match names the subject. Split folders: validation carved by group from
  # train; a subject in both train/ and test/ (the user's own folders) is only warned about.
  _patients(tmp_path / "train" / "images", [2, 3, 1, 2, 2])
  _patients(tmp_path / "test" / "images", [1])  # patient00 also in train/
  config = _grouped_config(tmp_path, pattern=r"patient\d+", validation_fraction=0.3)
  with mock.patch.object(sources.logging, "warning") as warning:
    names = _split_names(config)
  train, val = ({f.split("_")[0] for f in names[s]} for s in ("train", "validation"))
  assert train and val and not train & val and len(names["train"]) + len(names["validation"]) == 10
  messages = [call.args[0] % call.args[1:] for call in warning.call_args_list]
  assert any("train/ and test/" in m and "patient00" in m for m in messages), messages


def test_group_pattern_errors_name_the_file_and_the_flag(tmp_path):
  _patients(tmp_path / "images", [2, 2, 2])
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images" / "scan7.png")
  split_files = sources._folder_split_files  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r"scan7\.png does not match --config\.dataset\.group_pattern="):
    split_files(_grouped_config(tmp_path), "train")
  with pytest.raises(ValueError, match=r"patient00_f0\.png matches with an empty group in"):
    split_files(_grouped_config(tmp_path, pattern=r"^(x?)patient"), "train")
  with pytest.raises(ValueError, match=r"--config\.dataset\.group_pattern='\(patient' is not a regular"):
    split_files(_grouped_config(tmp_path, pattern="(patient"), "train")
  phantom = _grouped_config(tmp_path, name="vein_phantom")
  with pytest.raises(ValueError, match=r"group_pattern=.*folder dataset.*'vein_phantom'"):
    sources.num_examples(phantom, "train")
