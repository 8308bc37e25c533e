"""The TFDS-backed datasets through `sources`: the vein_phantom builder (tiny) and usgra_seg (shared copy)."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from veinjax.data import phantom
from veinjax.data import sources
from veinjax.data import tfds_builders

_REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO / "configs"))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position

USGRA_ROOT = _REPO.parent / "shared" / "data" / "usgra-seg"


def _phantom_config(data_dir, **dataset):
  config = default.get_config()
  config.dataset.data_dir = str(data_dir)
  config.dataset.phantom_size, config.dataset.phantom_num_train, config.dataset.phantom_num_test = 64, 12, 8
  for key, value in dataset.items():
    assert key in config.dataset, key
    setattr(config.dataset, key, value)
  return config


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _examples(config, split):
  return list(sources.load_raw_split(config, split).as_numpy_iterator())


def test_phantom_split_sizes_and_contents(phantom_dir):
  config = _phantom_config(phantom_dir, validation_fraction=0.25)
  train, val, test = (_examples(config, s) for s in sources.SPLITS)
  assert (len(train), len(val), len(test)) == (9, 3, 8)
  assert [sources.num_examples(config, s) for s in sources.SPLITS] == [9, 3, 8]
  assert sources.num_classes(config) == 2
  assert [e["id"] for e in test] == [f"test_{i:05d}".encode() for i in range(8)]
  ids = {e["id"] for e in train} | {e["id"] for e in val}
  assert len(ids) == 12 and not {e["id"] for e in train} & {e["id"] for e in val}
  for example in test:
    assert example["image"].shape == (64, 64, 1) and example["image"].dtype == np.uint8
    assert example["mask"].shape == (64, 64) and set(np.unique(example["mask"])) == {0, 1}
  # Stored losslessly: exactly the generator's example for that split and index.
  image, mask = phantom.generate_example(phantom.example_seed("test", 3), 64)
  np.testing.assert_array_equal(test[3]["image"][:, :, 0], image)
  np.testing.assert_array_equal(test[3]["mask"], mask)
  # Deterministic: a second read, and the validation carving, are identical.
  assert [e["id"] for e in _examples(config, "validation")] == [e["id"] for e in val]
  np.testing.assert_array_equal(_examples(config, "train")[0]["image"], train[0]["image"])


def test_phantom_rgb_and_no_validation(phantom_dir):
  config = _phantom_config(phantom_dir, validation_fraction=0.0)
  config.in_channels = 3
  first = next(sources.load_raw_split(config, "train").as_numpy_iterator())
  assert first["image"].shape == (64, 64, 3)
  np.testing.assert_array_equal(first["image"][:, :, 0], first["image"][:, :, 2])
  assert sources.num_examples(config, "train") == 12
  with pytest.raises(ValueError, match=r"no 'validation' split.*validation_fraction"):
    sources.load_raw_split(config, "validation")


def test_phantom_sizes_do_not_collide_in_the_cache(phantom_dir):
  small = tfds_builders.phantom_builder(str(phantom_dir), 64, 12, 8)
  other = tfds_builders.phantom_builder(str(phantom_dir), 48, 4, 2)
  assert small.builder_config.name != other.builder_config.name
  assert small.data_path != other.data_path
  tfds_builders.prepare(other)
  assert other.info.splits["train"].num_examples == 4
  first = next(iter(tfds_builders.read_split(other, "test")))
  assert tuple(first["image"].shape) == (48, 48, 1)


# ---- usgra-seg (the shared copy of the public repository; skipped where absent) ----

needs_usgra = pytest.mark.skipif(not (USGRA_ROOT / "dataset" / "images").is_dir(),
                                 reason=f"usgra-seg not found at {USGRA_ROOT}")


def _usgra_config(data_dir, root=USGRA_ROOT, usgra_config="vessel"):
  config = default.get_config()
  config.dataset.name = "usgra_seg"
  config.dataset.data_dir = str(data_dir)
  config.dataset.root = str(root)
  config.dataset.usgra_config = usgra_config
  return config


@needs_usgra
def test_usgra_split_sizes():
  pairs = tfds_builders.usgra_pairs(USGRA_ROOT)  # what the builder's splits are made of
  assert len(pairs["train"]) == 204 and len(pairs["test"]) == 40
  assert all(image.name == mask.name for image, mask in pairs["train"] + pairs["test"])
  assert not {i.name for i, _ in pairs["train"]} & {i.name for i, _ in pairs["test"]}


@needs_usgra
def test_usgra_vessel_through_sources(tmp_path):
  # Prepared with only the first 3 examples of each split, to stay fast; reading goes through `sources`.
  config = _usgra_config(tmp_path, usgra_config="vessel")
  builder = tfds_builders.usgra_builder(config.dataset.data_dir, "vessel")
  tfds_builders.prepare(builder, manual_dir=config.dataset.root, max_examples_per_split=3)
  assert sources.num_classes(config) == 2
  config.dataset.validation_fraction = 0.0
  examples = _examples(config, "train")
  assert [e["id"] for e in examples] == [p.stem.encode() for p, _ in tfds_builders.usgra_pairs(USGRA_ROOT)["train"][:3]]
  for example in examples + _examples(config, "test"):
    assert example["image"].ndim == 3 and example["image"].shape[2] == 1
    assert example["mask"].shape == example["image"].shape[:2]
    assert set(np.unique(example["mask"])) <= {0, 1}
  assert any(np.any(e["mask"] == 1) for e in examples)
  # The vessel class is exactly the raw masks' label 2 (nerve = 1 and everything else are background): a
  # mapping `> 0` or `== 1` would fail here (the shared masks hold both labels).
  pairs = tfds_builders.usgra_pairs(USGRA_ROOT)["train"][:3]
  for example, (_, mask_path) in zip(examples, pairs):
    raw = np.asarray(Image.open(mask_path))
    raw = raw[..., 0] if raw.ndim == 3 else raw
    np.testing.assert_array_equal(example["mask"], (raw == 2).astype(example["mask"].dtype))
  assert any(np.any(np.asarray(Image.open(m)) == 1) for _, m in pairs)  # nerve pixels exist, and were dropped
  # Stored as RGB; a grayscale file comes back through luma exactly (these first files are grayscale).
  first = tfds_builders.usgra_pairs(USGRA_ROOT)["train"][0][0]
  np.testing.assert_array_equal(examples[0]["image"][:, :, 0], np.asarray(Image.open(first).convert("L")))


@needs_usgra
def test_usgra_nerve_vessel_keeps_three_classes(tmp_path):
  builder = tfds_builders.usgra_builder(str(tmp_path), "nerve_vessel")
  train = tfds_builders.usgra_pairs(USGRA_ROOT)["train"]
  rgb = next(pair for pair in train if Image.open(pair[0]).mode == "RGB")  # the set mixes gray and RGB
  values = set()
  for key, example in builder._generate_examples(train[:3] + [rgb]):  # pylint: disable=protected-access
    assert example["id"] == key and example["image"].shape[2] == 3
    assert example["mask"].shape[:2] == example["image"].shape[:2]
    values |= set(np.unique(example["mask"]).tolist())
  np.testing.assert_array_equal(example["image"], np.asarray(Image.open(rgb[0])))  # colour kept
  assert values == {0, 1, 2}
  assert sources.num_classes(_usgra_config(tmp_path, usgra_config="nerve_vessel")) == 3


def test_usgra_missing_root_names_the_flag_and_path(tmp_path):
  for root in (tmp_path / "missing", tmp_path):  # absent, and present but empty
    config = _usgra_config(tmp_path / "tfds", root=root)
    with pytest.raises(ValueError, match=rf"--config\.dataset\.root={root}.*{root}/dataset/images"):
      sources.load_raw_split(config, "train")
  with pytest.raises(ValueError, match="vessel, nerve_vessel"):
    sources.load_raw_split(_usgra_config(tmp_path / "tfds", usgra_config="veins"), "train")


def test_foreground_name_says_what_the_foreground_metrics_measure():
  config = default.get_config()
  assert sources.foreground_name(config) == "Vein"  # the phantom
  config.dataset.name = "usgra_seg"
  assert sources.foreground_name(config) == "Vessel"
  config.dataset.usgra_config = "nerve_vessel"  # metrics average nerve and vessel
  assert sources.foreground_name(config) == "Foreground"
  config.dataset.name = "folder"
  config.dataset.labelme_labels = {"artery": 1}
  assert sources.foreground_name(config) == "Artery"
  config.dataset.labelme_labels = {"vein": 1, "artery": 2}
  config.dataset.mask_values = "0:0,1:1,2:2"
  assert sources.foreground_name(config) == "Foreground"
  config.dataset.name = "voc"
  with pytest.raises(ValueError, match="dataset.name='voc'"):
    sources.foreground_name(config)
