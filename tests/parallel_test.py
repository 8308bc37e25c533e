"""veinjax.parallel: the one train/eval step under pmap and jit give the numbers of one device.

The multi-device check runs this file as a script in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the device count is fixed when JAX starts), so the rest of
the suite keeps its single CPU device.
"""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from veinjax import losses
from veinjax import parallel
from veinjax import steps

NUM_DEVICES = 4
STEPS = 3


class TinySegmenter(nn.Module):
  """conv -> cross-replica BatchNorm -> relu -> conv: the smallest model with the models' interface."""
  num_classes: int = 1
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.bn_axis_name)(x)
    x = nn.relu(x)
    return nn.Conv(self.num_classes, (1, 1))(x).astype(jnp.float32)


def _batches(num, batch_size, size=8, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    image = rng.uniform(size=(batch_size, size, size, 1)).astype(np.float32)
    label = (image[..., 0] + 0.3 * rng.normal(size=image.shape[:3]) > 0.5).astype(np.int32)
    out.append({"image": image, "label": label})
  return out


def _run(mode, devices, batches, eval_batch, sync_batchnorm=True):
  """Trains STEPS steps and evaluates once; returns host numbers. `sync_batchnorm=False`: BatchNorm without
  the cross-replica axis (each device normalises its own examples), the control of the BatchNorm test."""
  par = parallel.DataParallel(mode, devices=devices)
  model = TinySegmenter(bn_axis_name=par.axis_name if sync_batchnorm else None)
  variables = TinySegmenter().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  lr_fn = optax.constant_schedule(0.05)
  state = steps.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.adam(lr_fn),
                                      batch_stats=variables["batch_stats"])
  loss_fn = losses.get_loss_fn("bce", 1)
  step = par.wrap_train_step(functools.partial(steps.train_step, loss_fn=loss_fn, learning_rate_fn=lr_fn,
                                               num_classes=1))
  evaluate = par.wrap_eval_step(functools.partial(steps.eval_step, apply_fn=model.apply, loss_fn=loss_fn,
                                                  num_classes=1))
  state = par.replicate(state)
  losses_seen, confusions = [], []
  for device_batch, _ in par.prefetch(batches):
    state, m = step(state, device_batch)
    m = par.first(m)
    losses_seen.append(float(m["loss"]))
    confusions.append(np.asarray(m["confusion"]))
  out = evaluate({"params": state.params, "batch_stats": state.batch_stats}, par.shard(eval_batch))
  host = par.unreplicate(state)
  return {"loss": losses_seen, "train_confusion": [c.tolist() for c in confusions],
          "params": jax.tree.map(lambda x: np.asarray(x).tolist(), host.params),
          "batch_stats": jax.tree.map(lambda x: np.asarray(x).tolist(), host.batch_stats),
          "eval": {k: np.asarray(v).tolist() for k, v in par.first(
              {k: out[k] for k in ("confusion", "loss_sum", "count")}).items()},
          "prediction": par.local(out["prediction"]).tolist(), "step": int(host.step)}


def _multi_device_main():
  """Run in the 4-device subprocess: prints the results of 1 device, pmap and jit as one JSON line."""
  devices = jax.devices()
  assert len(devices) == NUM_DEVICES, devices
  batches = _batches(STEPS, batch_size=8)
  eval_batch = _batches(1, batch_size=8, seed=1)[0]
  eval_batch["valid"] = np.array([True] * 5 + [False] * 3)  # the last 3 are padding
  results = {"one_device": _run("jit", devices[:1], batches, eval_batch),
             "pmap": _run("pmap", devices, batches, eval_batch),
             "jit": _run("jit", devices, batches, eval_batch),
             "pmap_unsynced": _run("pmap", devices, batches, eval_batch, sync_batchnorm=False)}
  print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def multi_device_results():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True,
                        timeout=300, cwd=root)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
  return json.loads(line[len("RESULTS "):])


@pytest.mark.parametrize("mode", ["pmap", "jit"])
def test_four_devices_match_one_device(multi_device_results, mode):
  ref, got = multi_device_results["one_device"], multi_device_results[mode]
  assert got["step"] == ref["step"] == STEPS
  # Training moved the parameters (the comparison below is not between two untouched states).
  assert ref["loss"][0] != ref["loss"][-1]
  np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got["train_confusion"], ref["train_confusion"])
  for name in ("params", "batch_stats"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got[name], ref[name])
  # Eval: padding masked, sums over devices, predictions back in input order.
  np.testing.assert_allclose(got["eval"]["loss_sum"], ref["eval"]["loss_sum"], rtol=1e-5)
  assert got["eval"]["count"] == ref["eval"]["count"] == 5
  np.testing.assert_array_equal(got["eval"]["confusion"], ref["eval"]["confusion"])
  assert np.sum(ref["eval"]["confusion"]) == 5 * 8 * 8
  np.testing.assert_array_equal(got["prediction"], ref["prediction"])


def test_cross_replica_batchnorm_is_on_under_pmap(multi_device_results):
  """Without the cross-replica axis each device normalises its own 2 examples, and the running statistics
  come out different from the global batch's; with it (what veinjax builds) they match one device's."""
  ref = jax.tree.leaves(multi_device_results["one_device"]["batch_stats"])
  synced = jax.tree.leaves(multi_device_results["pmap"]["batch_stats"])
  unsynced = jax.tree.leaves(multi_device_results["pmap_unsynced"]["batch_stats"])
  assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(unsynced, ref)) > 1e-3
  assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(synced, ref)) < 1e-5


def test_shard_and_replicate_layout():
  par = parallel.DataParallel("pmap")
  batch = {"image": np.zeros((4, 8, 8, 1), np.float32), "label": np.zeros((4, 8, 8), np.int32),
           "id": np.array([b"a", b"b", b"c", b"d"])}
  sharded = par.shard(batch)
  assert set(sharded) == {"image", "label"}  # strings stay on the host
  assert sharded["image"].shape == (1, 4, 8, 8, 1)
  tree = {"w": np.arange(6.0).reshape(2, 3)}
  np.testing.assert_array_equal(par.unreplicate(par.replicate(tree))["w"], tree["w"])
  par_jit = parallel.DataParallel("jit")
  assert par_jit.shard(batch)["image"].shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(par_jit.unreplicate(par_jit.replicate(tree))["w"], tree["w"])


def test_bad_mode_and_batch_size():
  with pytest.raises(ValueError, match="pmap, jit"):
    parallel.DataParallel("pjit")
  parallel.DataParallel("jit").check_batch_size(3)  # one device: anything goes
  fake = parallel.DataParallel("jit")
  fake.devices = fake.devices * 4  # pretend 4 devices: only the arithmetic of the check is used
  with pytest.raises(ValueError, match=r"--config.batch_size=6 does not divide over the 4 devices"):
    fake.check_batch_size(6)
  with pytest.raises(ValueError, match=r"--config.eval_batch_size=2"):
    fake.check_batch_size(2, "--config.eval_batch_size")


def test_prefetch_reraises_pipeline_errors():
  par = parallel.DataParallel("jit")

  def broken():
    yield {"image": np.zeros((1, 2, 2, 1), np.float32)}
    raise RuntimeError("corrupt example 7")

  with pytest.raises(RuntimeError, match="corrupt example 7"):
    for _ in par.prefetch(broken()):
      pass


if __name__ == "__main__":
  jax.config.update("jax_disable_most_optimizations", True)
  _multi_device_main()
