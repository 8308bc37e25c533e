"""`config.ema_decay`: a moving average of the weights, evaluated and checkpointed as the run's model.

The average never changes what is trained (the trained parameters are those of a run without it), it follows
`steps.ema_update`'s formula, a run keeping it resumes exactly, and its checkpoints hold the average as the
model (what eval.py, inference, export and init_from read) and the trained variables for resuming.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Crash, CrashingDataset, tiny_config

from veinjax import checkpoint
from veinjax import evaluation
from veinjax import parallel
from veinjax import steps
from veinjax import train_lib
from veinjax import workdir as workdir_lib
from veinjax.config_checks import validate_config


def test_ema_update_is_the_bias_corrected_exponential_mean_of_the_steps():
  decay, weights = 0.9, [np.array([1.0, -2.0]), np.array([3.0, 0.5]), np.array([-1.0, 4.0])]
  ema = {"w": jnp.full(2, 123.0)}  # whatever it starts at: the first step replaces it
  for t, w in enumerate(weights, start=1):
    ema = steps.ema_update(ema, {"w": jnp.asarray(w, jnp.float32)}, t, decay)
    factors = np.array([decay ** (t - i) for i in range(1, t + 1)])
    expected = np.sum(factors[:, None] * np.stack(weights[:t]), 0) / factors.sum()
    np.testing.assert_allclose(ema["w"], expected, rtol=1e-5)
  # Late in a run the update is the plain exponential one with the decay.
  late = steps.ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 10_000, 0.99)
  np.testing.assert_allclose(late["w"], np.full(2, 0.01), rtol=1e-4)


def _batch(config, seed):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(config.batch_size, config.image_size, config.image_size, 1)).astype(np.float32)
  labels = (rng.random((config.batch_size, config.image_size, config.image_size)) < 0.3).astype(np.int32)
  return {"image": images, "label": labels}


def test_train_step_trains_the_same_weights_and_averages_them(phantom_data_dir):
  par = parallel.DataParallel("pmap")  # the default parallelism (the end-to-end test below runs jit)
  states = {}
  for decay in (0.0, 0.9):
    config = tiny_config(phantom_data_dir, ema_decay=decay, parallelism="pmap")
    model = steps.create_model(config, bn_axis_name=par.axis_name)
    lr_fn = steps.create_learning_rate_fn(config, steps_per_epoch=4)
    state = par.replicate(steps.create_train_state(config, model, lr_fn))
    p_step = steps.wrap_train_step(config, par, lr_fn)
    expected_ema = None
    for i in range(2):
      before = par.unreplicate(steps.model_variables(state)) if decay else None
      state, _ = p_step(state, par.shard(_batch(config, i)))
      if decay:
        trained = par.unreplicate({"params": state.params, "batch_stats": state.batch_stats})
        expected_ema = steps.ema_update(before, trained, i + 1, decay)
    states[decay] = par.unreplicate(state)
    if decay:
      assert states[decay].ema is not None
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                   states[decay].ema, expected_ema)
    else:
      assert states[decay].ema is None
  plain, averaged = states[0.0], states[0.9]
  # The average does not change the training: the same parameters and statistics, bit for bit.
  jax.tree.map(np.testing.assert_array_equal, averaged.params, plain.params)
  jax.tree.map(np.testing.assert_array_equal, averaged.batch_stats, plain.batch_stats)
  # ... and it is not the trained weights (after two steps it still holds part of the initialisation).
  differences = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), averaged.ema["params"],
                                             averaged.params))
  assert max(differences) > 1e-4


@pytest.mark.parametrize("value", [1.0, -0.1, "0.9", True])
def test_a_bad_ema_decay_is_refused_naming_the_flag(phantom_data_dir, value):
  config = tiny_config(phantom_data_dir)
  del config["ema_decay"]  # (a ConfigDict keeps a field's type; a config.json or a script may give any)
  config.ema_decay = value
  with pytest.raises(ValueError, match=r"--config\.ema_decay must be in \[0, 1\)"):
    validate_config(config)


def _crash_in_epoch_2(monkeypatch):
  """pipeline.create_train_dataset's epoch 2 dies after 3 batches (the run is killed after step 7)."""
  from veinjax.data import pipeline  # pylint: disable=g-import-not-at-top
  original = pipeline.create_train_dataset

  def crashing(cfg, *, epoch, **kwargs):
    ds = original(cfg, epoch=epoch, **kwargs)
    return CrashingDataset(ds, after=3) if epoch == 1 else ds

  monkeypatch.setattr(pipeline, "create_train_dataset", crashing)
  return lambda: monkeypatch.setattr(pipeline, "create_train_dataset", original)


def _restore(workdir, config, which):
  """(model item, resume item) of a checkpoint of the run in `workdir`."""
  model = steps.create_model(config)
  abstract = steps.create_train_state(config, model, steps.create_learning_rate_fn(config, 4), abstract=True)
  checkpoints = checkpoint.Checkpoints(workdir, keep=2, best_metric="miou")
  try:
    return checkpoints.restore(which, *steps.split_state(abstract), steps.fingerprint(config))[:2]
  finally:
    checkpoints.close()


def test_a_run_with_ema_resumes_exactly_and_checkpoints_the_average(phantom_data_dir, tmp_path, monkeypatch):
  config = tiny_config(phantom_data_dir, ema_decay=0.5, checkpoint_every_steps=3)
  straight_dir, killed_dir = str(tmp_path / "straight"), str(tmp_path / "killed")
  result = train_lib.train_and_evaluate(config, straight_dir)
  assert result["step"] == 8
  restore_pipeline = _crash_in_epoch_2(monkeypatch)
  with pytest.raises(Crash):
    train_lib.train_and_evaluate(config, killed_dir)
  restore_pipeline()
  train_lib.train_and_evaluate(config, killed_dir)  # resumes from the mid-epoch checkpoint of step 6
  straight_model, straight_resume = _restore(straight_dir, config, "latest")
  killed_model, killed_resume = _restore(killed_dir, config, "latest")
  jax.tree.map(np.testing.assert_array_equal, killed_model, straight_model)
  jax.tree.map(np.testing.assert_array_equal, killed_resume, straight_resume)
  # The checkpoint's model is the average, not the trained weights kept for resuming.
  trained = straight_resume["train_variables"]
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(straight_model["params"]),
                                                          jax.tree.leaves(trained["params"]))) > 1e-6
  # What the run recorded for its best checkpoint is what eval.py measures from it (the average evaluated).
  best_step = result["best_step"]
  record = next(r for r in workdir_lib.read_history(straight_dir) if r["step"] == best_step)
  evaluated = evaluation.evaluate(config, straight_dir, checkpoint="best", split="validation")
  for key in ("miou", "dice", "acc"):
    assert evaluated[key] == pytest.approx(record[key], abs=1e-12), key
  assert os.path.isdir(os.path.join(straight_dir, checkpoint.BEST_DIR))


def test_switching_the_average_on_when_resuming_is_refused_naming_the_field(trained, tmp_path):
  config, straight_dir, _ = trained  # a finished run without an average
  workdir = str(tmp_path / "resumed")
  shutil.copytree(straight_dir, workdir)
  longer = config.copy_and_resolve_references()
  longer.num_epochs, longer.ema_decay = 3, 0.5
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"ema_decay on or off must match"):
    train_lib.train_and_evaluate(longer, workdir, allow_config_change=True)
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"ema_decay"):  # refused outright without the flag
    train_lib.train_and_evaluate(longer, workdir)
