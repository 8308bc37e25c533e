"""TFDS builders: `vein_phantom` and `vein_phantom_random` (generated locally) and `usgra_seg` (read from a
local clone). No network.

Both store 'image' (PNG, uint8 [H, W, C]), 'mask' (PNG, uint8 [H, W, 1], class indices already mapped) and
'id' (text), in generation order (shuffling disabled, so reading is deterministic and ids come in order).

- `vein_phantom`: `veinjax.data.phantom` frames. Its BuilderConfig carries the image size and the split sizes,
  and its name encodes them ("512px_300_200"), so phantoms of different sizes/counts never collide in the
  cache. Train example i is `phantom.generate_example(phantom.example_seed("train", i), size)`, test likewise.
  Bump VERSION whenever the generator's output changes, so stale caches are not reused.
- `vein_phantom_random`: `veinjax.data.phantom_random` frames (domain-randomised; the default ranges unless
  the config changes them), likewise
  by size and split sizes, plus the mask's foreground ("vessel": veins and arteries; "vein": veins only):
  configs "<foreground>_<size>px_<num_train>_<num_test>" ("vessel_128px_300_200"), with "_off_<group>..." when
  randomisation groups are switched off for an ablation ("vessel_128px_300_200_off_gain_speckle") and
  "_set_<digest>" when ranges are changed (config.dataset.phantom_random_settings). Train example i is
  `phantom_random.generate_randomized_example(phantom.example_seed("train", i), size,
  RandomizationRanges(foreground=..., **settings).without(*groups_off))`. Bump VERSION whenever that
  generator's output changes.
- `usgra_seg`: github.com/tmkand/usgra-seg (CC BY 4.0) from a manual directory: a clone of the repository or
  its `dataset/` folder. Train 204 (`dataset/images` + `dataset/masks`), test 40 (`dataset/test/...`). Configs:
  `vessel` (binary: mask label 2 = blood vessel -> 1, everything else 0) and `nerve_vessel` (0 background,
  1 nerve, 2 vessel). Images are stored as RGB (the set mixes grayscale and RGB files).

Use `phantom_builder(...)` / `usgra_builder(...)` and `prepare(builder, manual_dir)`.
"""

import abc
import dataclasses
import functools
import hashlib
from pathlib import Path
import re
from typing import Optional, Sequence, Tuple

import numpy as np

import tensorflow_datasets as tfds

from veinjax.data import decode
from veinjax.data import phantom
from veinjax.data import phantom_random
from veinjax.data import phantom_random_ranges

_ROOT_FLAG = "--config.dataset.root"


def _features(channels: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, channels), dtype=np.uint8, encoding_format="png"),
      "mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
      "id": tfds.features.Text(),
  })


@dataclasses.dataclass(eq=False)
class VeinPhantomConfig(tfds.core.BuilderConfig):
  """Phantom image size (height = width) and split sizes."""
  size: int = 512
  num_train: int = 300
  num_test: int = 200


def phantom_config_name(size: int, num_train: int, num_test: int) -> str:
  return f"{size}px_{num_train}_{num_test}"


@functools.lru_cache(maxsize=None)
def _phantom_config_from_name(name: str) -> Optional[VeinPhantomConfig]:
  match = re.fullmatch(r"(\d+)px_(\d+)_(\d+)", name)
  if not match:
    return None
  size, num_train, num_test = (int(g) for g in match.groups())
  return VeinPhantomConfig(name=name, size=size, num_train=num_train, num_test=num_test,
                           description=f"{num_train} train / {num_test} test at {size}x{size}.")


class _GeneratedPhantom(tfds.core.GeneratorBasedBuilder, abc.ABC):
  """What the generated phantoms share: locally generated train / test splits of (image, mask, id)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self._description(),
        features=_features(1),
        supervised_keys=("image", "mask"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated locally.
    cfg = self.builder_config
    return {"train": self._generate_examples("train", cfg.num_train),
            "test": self._generate_examples("test", cfg.num_test)}

  def _generate_examples(self, split: str, count: int):
    for index in range(count):
      image, mask = self._example(phantom.example_seed(split, index))
      yield index, {"image": image[:, :, None], "mask": mask[:, :, None], "id": f"{split}_{index:05d}"}

  @abc.abstractmethod
  def _description(self) -> str:
    """The dataset's one-line description."""

  @abc.abstractmethod
  def _example(self, seed) -> tuple:
    """(image uint8 [S, S], mask uint8 [S, S]) of one example seed."""


class VeinPhantom(_GeneratedPhantom):
  """The synthetic vein phantom: transverse B-mode frames with vein masks (1 = vein lumen)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First phantom generator."}
  # The paper's split sizes at 512x512; any "<size>px_<num_train>_<num_test>" name is a valid config too.
  BUILDER_CONFIGS = [_phantom_config_from_name(phantom_config_name(512, 300, 200))]

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> Optional[VeinPhantomConfig]:
    return super().get_builder_config(name, version) or _phantom_config_from_name(name)

  def _description(self) -> str:
    return phantom.__doc__.split("\n\n")[0]

  def _example(self, seed) -> tuple:
    return phantom.generate_example(seed, self.builder_config.size)


@dataclasses.dataclass(eq=False)
class RandomPhantomConfig(VeinPhantomConfig):
  """Randomised phantom: image size, split sizes, the mask's foreground ("vessel" or "vein") and the
  randomisation groups switched off (names in `phantom_random.GROUPS`, in that order; for ablations)."""
  foreground: str = "vessel"
  groups_off: Tuple[str, ...] = ()
  settings: str = ""  # changed ranges, as phantom_random_ranges.format_settings spells them

  @functools.cached_property
  def params(self) -> phantom_random.RandomizationRanges:
    """What every frame of this config is drawn from (built once, not per frame)."""
    settings = phantom_random_ranges.parse_settings(self.settings)
    return phantom_random.RandomizationRanges(foreground=self.foreground, **settings).without(*self.groups_off)


def canonical_groups_off(groups: Sequence[str]) -> Tuple[str, ...]:
  """The groups in `phantom_random.GROUPS` order, each once (a ValueError naming the flag if unknown)."""
  if isinstance(groups, str):
    raise TypeError(f"groups_off={groups!r}: give a sequence of group names, not one string.")
  unknown = sorted(set(groups) - set(phantom_random.GROUPS))
  if unknown:
    raise ValueError(f"--config.dataset.phantom_random_off names unknown randomisation group(s) {unknown}; "
                     f"valid (comma-separated): {', '.join(phantom_random.GROUPS)}.")
  return tuple(g for g in phantom_random.GROUPS if g in groups)


# Changed ranges by the digest that names them in a config name (filled by random_phantom_config_name, which
# every builder of this process is made through): a name stays short whatever the settings.
_SETTINGS_BY_DIGEST = {}


def random_phantom_config_name(size: int, num_train: int, num_test: int, foreground: str,
                               groups_off: Sequence[str] = (), settings: str = "") -> str:
  """"vessel_128px_300_200"; with groups off "vessel_128px_300_200_off_gain_speckle"; with changed ranges
  (canonical `settings`) "..._set_<10 hex digits of their SHA-1>"."""
  off = "".join(f"_{g}" for g in canonical_groups_off(groups_off))
  name = f"{foreground}_{phantom_config_name(size, num_train, num_test)}" + (f"_off{off}" if off else "")
  if settings:
    digest = hashlib.sha1(settings.encode()).hexdigest()[:10]
    _SETTINGS_BY_DIGEST[digest] = settings
    name += f"_set_{digest}"
  return name


@functools.lru_cache(maxsize=None)
def _random_config_from_name(name: str) -> Optional[RandomPhantomConfig]:
  groups = "|".join(phantom_random.GROUPS)
  match = re.fullmatch(r"(%s)_(\d+)px_(\d+)_(\d+)(?:_off((?:_(?:%s))+))?(?:_set_([0-9a-f]{10}))?"
                       % ("|".join(phantom_random.FOREGROUNDS), groups), name)
  if not match:
    return None
  foreground, off = match.group(1), tuple(match.group(5)[1:].split("_")) if match.group(5) else ()
  settings = _SETTINGS_BY_DIGEST[match.group(6)] if match.group(6) else ""
  size, num_train, num_test = (int(g) for g in match.groups()[1:4])
  if random_phantom_config_name(size, num_train, num_test, foreground, off, settings) != name:
    return None  # groups repeated or out of order: one name per phantom, so one cache entry
  described = (f", without {', '.join(off)}" if off else "") + (f", ranges changed: {settings}" if settings else "")
  return RandomPhantomConfig(name=name, size=size, num_train=num_train, num_test=num_test, foreground=foreground,
                             groups_off=off, settings=settings,
                             description=f"{num_train} train / {num_test} test at {size}x{size}, "
                                         f"{foreground} masks{described}.")


class VeinPhantomRandom(_GeneratedPhantom):
  """The domain-randomised phantom: B-mode frames of any look with vessel (or vein) lumen masks."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "First randomised generator (issue 19).",
                   "1.1.0": "Wider vessel size, border blur and irregularity by default (vein_radius up to "
                            "0.25, border_blur up to 0.04, irregularity up to 0.25).",
                   "1.2.0": "Deep vessels may run below the scan's bottom edge, up to half their height "
                            "(max_share_below 0.5; 1.1.0: 0)."}
  # Any "<vessel|vein>_<size>px_<num_train>_<num_test>[_off_<group>...][_set_<digest>]" name is a valid config
  # (a digest once this process has made a builder with those settings).
  BUILDER_CONFIGS = [_random_config_from_name(random_phantom_config_name(128, 300, 200, "vessel"))]

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> Optional[RandomPhantomConfig]:
    digest = re.search(r"_set_([0-9a-f]{10})$", name)
    if digest and digest.group(1) not in _SETTINGS_BY_DIGEST:
      return None  # settings this process has not seen (and not cached as such: they may come later)
    return super().get_builder_config(name, version) or _random_config_from_name(name)

  def _description(self) -> str:
    return phantom_random.__doc__.split("\n\n")[0]

  def _example(self, seed) -> tuple:
    cfg = self.builder_config
    return phantom_random.generate_randomized_example(seed, cfg.size, cfg.params)


def usgra_dataset_dir(root) -> Path:
  """The folder holding images/, masks/ and test/ in a usgra-seg clone (or its dataset/ folder itself)."""
  root = Path(root).expanduser()
  for candidate in (root / "dataset", root):
    if (candidate / "images").is_dir() and (candidate / "masks").is_dir():
      return candidate
  raise ValueError(
      f"no usgra-seg data at {_ROOT_FLAG}={str(root) or '(empty)'}: expected {root}/dataset/images and "
      f"{root}/dataset/masks (a clone of github.com/tmkand/usgra-seg). Clone it and set {_ROOT_FLAG} to it.")


class UsgraSeg(tfds.core.GeneratorBasedBuilder):
  """usgra-seg: real regional-anaesthesia ultrasound with nerve and blood-vessel masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Train 204 / test 40 from the public repository's dataset/ folder."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="vessel", description="Binary: blood vessel (label 2) = 1, else 0."),
      tfds.core.BuilderConfig(name="nerve_vessel", description="0 background, 1 nerve, 2 blood vessel."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Clone https://github.com/tmkand/usgra-seg and pass its path as {_ROOT_FLAG} (the manual dir).")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="usgra-seg (github.com/tmkand/usgra-seg, CC BY 4.0): Mindray TE7 / L14-6Ns scans for "
                    "regional anaesthesia with Labelme-made nerve and vessel masks.",
        features=_features(3),
        supervised_keys=("image", "mask"),
        homepage="https://github.com/tmkand/usgra-seg",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    pairs = usgra_pairs(dl_manager.manual_dir)
    return {split: self._generate_examples(pairs[split]) for split in ("train", "test")}

  def _generate_examples(self, pairs):
    for path, mask_path in pairs:
      image, values = decode.read_image(path), decode.read_mask(mask_path)
      if image.shape[:2] != values.shape:
        raise decode.BadExampleError(
            f"size mismatch: image {path} is {image.shape[1]}x{image.shape[0]} but mask {mask_path} is "
            f"{values.shape[1]}x{values.shape[0]}; re-clone the data.")
      if values.max() > 2:
        raise decode.BadExampleError(f"usgra-seg mask {mask_path} has value {values.max()}; expected 0 "
                                     f"(background), 1 (nerve), 2 (vessel) only.")
      if self.builder_config.name == "vessel":
        values = values == 2
      if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
      yield path.stem, {"image": image, "mask": values.astype(np.uint8)[:, :, None], "id": path.stem}


def usgra_pairs(root) -> dict:
  """{"train": [(image, mask), ...], "test": [...]}: the usgra-seg files, sorted, each image with its mask."""
  base = usgra_dataset_dir(root)
  pairs = {}
  for split, folder in (("train", base), ("test", base / "test")):
    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() == ".png")
    if not images:
      raise ValueError(f"no PNG images in {folder / 'images'}; is {_ROOT_FLAG} a complete usgra-seg clone?")
    missing = [p.name for p in images if not (folder / "masks" / p.name).is_file()]
    if missing:
      raise ValueError(f"usgra-seg images without a mask in {folder / 'masks'}: {', '.join(missing[:5])}; "
                       f"re-clone the data.")
    pairs[split] = [(p, folder / "masks" / p.name) for p in images]
  return pairs


def phantom_builder(data_dir: Optional[str], size: int, num_train: int, num_test: int) -> VeinPhantom:
  """The `vein_phantom` builder for this size and these split sizes (not prepared yet)."""
  if size < 32 or num_train < 1 or num_test < 1:
    raise ValueError(f"phantom needs size >= 32 and at least one train and one test example; got "
                     f"--config.dataset.phantom_size={size}, phantom_num_train={num_train}, "
                     f"phantom_num_test={num_test}.")
  return VeinPhantom(config=phantom_config_name(size, num_train, num_test), data_dir=data_dir or None)


def random_phantom_builder(data_dir: Optional[str], size: int, num_train: int, num_test: int,
                           foreground: str = "vessel", groups_off: Sequence[str] = (),
                           settings: str = "") -> VeinPhantomRandom:
  """The `vein_phantom_random` builder for this size, these split sizes, this foreground, these
  randomisation groups switched off and these ranges changed (`phantom_random_ranges.parse_settings`'s
  spelling; not prepared)."""
  phantom_builder(data_dir, size, num_train, num_test)  # The same checks, with the same flags in the error.
  if foreground not in phantom_random.FOREGROUNDS:
    raise ValueError(f"--config.dataset.phantom_foreground={foreground!r}; valid: "
                     f"{', '.join(phantom_random.FOREGROUNDS)}.")
  settings = phantom_random_ranges.format_settings(phantom_random_ranges.parse_settings(settings))
  return VeinPhantomRandom(
      config=random_phantom_config_name(size, num_train, num_test, foreground, groups_off, settings),
      data_dir=data_dir or None)


def usgra_builder(data_dir: Optional[str], config_name: str) -> UsgraSeg:
  """The `usgra_seg` builder with config `vessel` or `nerve_vessel` (not prepared yet)."""
  if config_name not in UsgraSeg.builder_configs:
    raise ValueError(f"--config.dataset.usgra_config={config_name!r}; valid: "
                     f"{', '.join(UsgraSeg.builder_configs)}.")
  return UsgraSeg(config=config_name, data_dir=data_dir or None)


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: Optional[str] = None,
            max_examples_per_split: Optional[int] = None) -> None:
  """Prepares the builder's data in its data_dir unless already there. Never touches the network.

  max_examples_per_split: write only the first examples of each split (for quick tests).
  """
  if builder.is_prepared():
    return
  if manual_dir is not None:
    usgra_dataset_dir(manual_dir)  # A clear error before TFDS's own.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(Path(manual_dir).expanduser()) if manual_dir else None, try_download_gcs=False,
      max_examples_per_split=max_examples_per_split))


def read_split(builder: tfds.core.DatasetBuilder, split: str):
  """A prepared split as a tf.data.Dataset of raw feature dicts, in generation order (deterministic)."""
  return builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
