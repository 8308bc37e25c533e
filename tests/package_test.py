"""The package and the default config import and are self-consistent."""

import importlib.util
import pathlib

import veinjax

_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, _CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_version():
  assert veinjax.__version__.count(".") == 2


def test_default_config_is_the_papers_recipe():
  config = _load_config("default")
  assert config.model == "resnet34_unet"
  assert config.image_size == 512 and config.image_size % 32 == 0
  assert config.optimizer == "adam" and config.learning_rate == 1e-3
  assert config.loss == "bce" and config.num_epochs == 10
  assert config.best_metric == "miou"
