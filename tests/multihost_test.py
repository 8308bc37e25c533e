"""Several hosts (jax.distributed): 2 local CPU processes x 2 devices train, checkpoint, resume and evaluate
as 1 process x 4 devices does, under pmap and under jit.

The runs are this file as a script in subprocesses (the device count and the distributed system are fixed
when JAX starts), two launches at once: 2 processes (`jax.distributed.initialize("localhost:<port>", 2, i)`,
each with XLA_FLAGS=--xla_force_host_platform_device_count=2) and 1 process with 4 devices. Each trains the
tiny config of tests/conftest.py (with OVERRIDES) in its own workdirs and evaluates the latest checkpoint on
the test split with its pictures (eval.py --save_predictions): the 2 processes under pmap and under jit, the
1 process under pmap (the reference of both: on one process jit trains as pmap does, tests/parallel_test.py).
The 2-process launch also resumes a copy of its pmap run stopped after epoch 1; the 1-process launch, once
the other has finished, also evaluates the 2-process runs' checkpoints. The test process generates the
phantom first, so the processes never race to build it. What the processes spend their time on is
starting (jax and TensorFlow imports) and compiling, so the model is one U-Net stage (`unet_widths=(8,)`:
two 3x3 conv-BN-ReLU and the 1x1 head, 689 parameters; the launches took 52-56 s here, 60-76 s with two
stages, 186 s with ultralight_unet), and the plain convolution graph (`layers.lax_convolutions`: the CPU
small-map path is not what this test is about) compiles faster (60 s with two stages, 66 s without it).

Exact: every process reports the same results; one checkpoint evaluated on 1 or 2 processes gives the same
metrics and pictures (the loss sums in another order); the resumed 2-process run ends bit for bit as the
uninterrupted one. Within rtol=1e-5 (1e-6 absolute for parameters near 0), not bit for bit: 2 processes and
1 process train to the same history, parameters and test metrics. Why not bit for bit, and why OVERRIDES:
- The input pipeline gives process p the examples p, p + 2, ... and shuffles within that shard, so 2
  processes put other examples in a step's global batch than 1 process does unless one batch is the whole
  train split: 4 train examples (8 phantom frames, half for validation), batch_size=4. Every step then sees
  the same 4 examples on 1 or 2 processes, on other devices: the sums of the loss, the gradients and the
  BatchNorm statistics add up in another order, and the cross-process all-reduce (gloo) has its own order.
- Those rounding differences must not grow. They do with Adam (its first step is lr * g / |g|: a gradient
  of rounding size becomes a full step) and with a ResNet at these sizes (BatchNorm over the 4 values of a
  1x1 map; on one device, merely reversing the batch changes its gradients by ~0.4%); so SGD and
  a small U-Net on 64x64 frames, where the 2 runs stay within 1e-6 and their pixel counts agree.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, tiny_config

OVERRIDES = {"batch_size": 4, "eval_batch_size": 4, "num_epochs": 2, "model": "unet", "unet_widths": (8,),
             "image_size": 64, "dataset.phantom_size": 64, "dataset.phantom_num_train": 8,
             "dataset.validation_fraction": 0.5, "dataset.phantom_num_test": 5, "optimizer": "sgd",
             "learning_rate": 1e-2}
NUM_TRAIN, NUM_TEST = 4, 5  # 8 phantom train frames, half for validation; 5 test frames: uneven shards
MODES = ("pmap", "jit")
_TIMING = ("images_per_sec", "train_seconds", "eval_seconds")
_TIMEOUT_S = 600  # per launch


def _config(data_dir, **overrides):
  return tiny_config(data_dir, **{**OVERRIDES, **overrides})


# ---- The script run by each process ----


def _worker(spec):
  """Trains and evaluates the runs of `spec`; prints one RESULT line per run (what this process saw)."""
  if spec["num_processes"] > 1:
    from veinjax import distributed  # pylint: disable=g-import-not-at-top
    assert distributed.initialize(f"localhost:{spec['port']}", spec["num_processes"], spec["process_id"])
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_disable_most_optimizations", True)
  # A persistent compilation cache (jax writes it from process 0 only, under keys naming its devices): in the
  # 1-process launch the second run's initialisation and the evaluations reuse what the first compiled.
  jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from absl import logging  # pylint: disable=g-import-not-at-top
  from veinjax import cli  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)  # veinjax's progress lines on stderr (shown when a process fails)
  logging.use_absl_handler()
  cli.quiet_library_logs(__file__)
  assert jax.process_count() == spec["num_processes"] and jax.device_count() == 4, jax.devices()
  # The plain convolution graph (not the CPU small-map and depthwise paths, which this test is not about):
  # it compiles faster.
  from veinjax.models import layers  # pylint: disable=g-import-not-at-top
  with layers.lax_convolutions():
    for job in spec["jobs"]:
      _run_job(spec, job)


def _run_job(spec, job):
  """One job of `spec`: train and/or evaluate one run; prints its RESULT line (what this process saw)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from veinjax import evaluation  # pylint: disable=g-import-not-at-top
  from veinjax import train_lib  # pylint: disable=g-import-not-at-top
  start = time.time()
  if "signal" in job:  # tell the other launch that this one's checkpoints are complete
    multihost_utils.sync_global_devices("multihost_test: all jobs done")
    if jax.process_index() == 0:
      pathlib.Path(job["signal"]).touch()
    return
  while "wait_for" in job and not os.path.exists(job["wait_for"]):
    if time.time() - start > _TIMEOUT_S:
      raise TimeoutError(f"{job['wait_for']} never appeared")
    time.sleep(0.2)
  config = _config(spec["data_dir"], parallelism=job["mode"], num_epochs=job.get("num_epochs", 2))
  out = {"name": job["name"], "process": jax.process_index()}
  if "stopped_after_epoch_1_of" in job:
    if jax.process_index() == 0:
      _stopped_after_epoch_1(job["stopped_after_epoch_1_of"], job["workdir"])
    multihost_utils.sync_global_devices("multihost_test: workdir copied")
  if job.get("train", True):
    result = train_lib.train_and_evaluate(config, job["workdir"])
    out["train"] = {k: result[k] for k in ("step", "epoch", "best_step", "best_value", "metrics")}
  if job.get("evaluate", False):
    out["eval"] = evaluation.evaluate(config, job["workdir"], checkpoint="latest", split="test",
                                      save_predictions=True, output_prefix=job.get("prefix", ""))
  print(f"{job['name']}: {time.time() - start:.1f} s on process {jax.process_index()}", file=sys.stderr,
        flush=True)
  print("RESULT " + json.dumps(out, sort_keys=True), flush=True)


def _stopped_after_epoch_1(workdir, copy):
  """`copy`: what a run of `workdir` stopped after epoch 1 leaves (its config.json, its epoch-1 history record
  and its epoch-1 checkpoint), so that resuming it needs no third fresh run (and its compilations)."""
  os.makedirs(os.path.join(copy, "checkpoints"))
  shutil.copytree(os.path.join(workdir, "checkpoints", "1"), os.path.join(copy, "checkpoints", "1"))
  shutil.copy2(os.path.join(workdir, "config.json"), copy)
  with open(os.path.join(workdir, "history.jsonl")) as f, open(os.path.join(copy, "history.jsonl"), "w") as g:
    g.write(f.readline())


# ---- The launches ----


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(num_processes, devices_per_process, jobs, data_dir, cache_dir, log_dir):
  """Starts the jobs in `num_processes` processes; returns what `_finish` needs."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  port = _free_port()
  procs, logs = [], []
  for i in range(num_processes):
    spec = {"num_processes": num_processes, "process_id": i, "port": port, "jobs": jobs, "data_dir": data_dir,
            "cache_dir": cache_dir}
    logs.append([os.path.join(log_dir, f"{num_processes}x{devices_per_process}_{i}.{k}") for k in ("out", "err")])
    with open(logs[-1][0], "w") as out, open(logs[-1][1], "w") as err:  # files: no pipe fills up
      procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)], env=env,
                                    cwd=str(ROOT), stdout=out, stderr=err))
  return procs, logs


def _finish(launches):
  """Waits for every process of the started launches; returns {job name: [each process's RESULT]}."""
  procs = [proc for launch, _ in launches for proc in launch]
  logs = [paths for _, launch_logs in launches for paths in launch_logs]
  deadline = time.time() + _TIMEOUT_S
  try:
    # Until all are done, one fails (the others would wait for it at a barrier) or the time is up.
    while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs) and time.time() < deadline:
      time.sleep(0.5)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  outputs = [tuple(open(path).read() for path in paths) for paths in logs]
  failed = [f"{os.path.basename(paths[0])}: exit {proc.returncode} (-9: killed, after another failed or "
            f"after {_TIMEOUT_S} s)\n{stdout[-1500:]}\n{stderr[-5000:]}"
            for proc, paths, (stdout, stderr) in zip(procs, logs, outputs) if proc.returncode]
  assert not failed, "\n\n".join(failed)
  for _, stderr in outputs:
    print("\n".join(line for line in stderr.splitlines() if " s on process " in line))
  results = {}
  for stdout, _ in outputs:
    for line in stdout.splitlines():
      if line.startswith("RESULT "):
        record = json.loads(line[len("RESULT "):])
        results.setdefault(record["name"], []).append(record)
  return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory, phantom_data_dir):
  """Both launches: (workdir of each run, RESULT records by run name, seconds the launches took)."""
  from veinjax.data import sources  # pylint: disable=g-import-not-at-top
  config = _config(phantom_data_dir)
  assert [sources.num_examples(config, s) for s in ("train", "test")] == [NUM_TRAIN, NUM_TEST]  # generated once
  root = tmp_path_factory.mktemp("multihost")
  wd = {name: str(root / name) for name in ["2x2_pmap", "2x2_jit", "2x2_pmap_resumed", "1x4_pmap"]}
  done = str(root / "2x2_done")
  two = [{"name": "2x2_pmap", "mode": "pmap", "workdir": wd["2x2_pmap"], "evaluate": True},
         {"name": "2x2_jit", "mode": "jit", "workdir": wd["2x2_jit"], "evaluate": True},
         {"name": "2x2_pmap_resumed", "mode": "pmap", "workdir": wd["2x2_pmap_resumed"],
          "stopped_after_epoch_1_of": wd["2x2_pmap"]},
         {"name": "2x2_done", "signal": done}]
  # The reference trains under pmap only: jit on 1 process trains as pmap does (tests/parallel_test.py).
  one = [{"name": "1x4_pmap", "mode": "pmap", "workdir": wd["1x4_pmap"], "evaluate": True}]
  # The 2-process runs' checkpoints evaluated by 1 process (written beside theirs, prefixed "1x4_"), once
  # the 2-process launch has written them.
  one += [{"name": f"1x4_eval_of_2x2_{m}", "mode": m, "workdir": wd[f"2x2_{m}"], "train": False,
           "evaluate": True, "prefix": "1x4_", "wait_for": done} for m in MODES]
  start = time.time()
  # Both launches at once: 3 processes on the 2 cores fill each other's waits at the barriers.
  results = _finish([_start(2, 2, two, phantom_data_dir, str(root / "cache_2x2"), str(root)),
                     _start(1, 4, one, phantom_data_dir, str(root / "cache_1x4"), str(root))])
  seconds = time.time() - start
  print(f"multihost launches: {seconds:.1f} s")
  return wd, results, seconds


# ---- Comparisons ----


def _history(workdir):
  from veinjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return [{k: v for k, v in r.items() if k not in _TIMING} for r in workdir_lib.read_history(workdir)]


def _final_variables(workdir):
  import jax  # pylint: disable=g-import-not-at-top
  from veinjax import inference  # pylint: disable=g-import-not-at-top
  _, variables, _ = inference.load_for_inference(workdir, "latest")
  return jax.tree.map(np.asarray, variables)


def _assert_close(got, want, rtol, where=""):
  """Equal structure; strings, ints and None equal; floats within rtol (atol 1e-7 for values near 0)."""
  if isinstance(want, dict):
    assert sorted(got) == sorted(want), where
    for k in want:
      _assert_close(got[k], want[k], rtol, f"{where}.{k}")
  elif isinstance(want, list):
    assert len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_close(g, w, rtol, f"{where}[{i}]")
  elif isinstance(want, float):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-7, err_msg=where)
  else:
    assert got == want, where


def _predictions(workdir, stem):
  directory = os.path.join(workdir, "eval", f"{stem}_predictions")
  return {path.name: path.read_bytes() for path in sorted(pathlib.Path(directory).iterdir())}


def test_every_process_reports_the_same_results(runs):
  _, results, _ = runs
  for name in ("2x2_pmap", "2x2_jit", "2x2_pmap_resumed"):
    records = results[name]
    assert sorted(r["process"] for r in records) == [0, 1], name
    assert {k: v for k, v in records[0].items() if k != "process"} == \
        {k: v for k, v in records[1].items() if k != "process"}, name


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_train_as_one_process(runs, mode):
  wd, _, _ = runs
  got, want = _history(wd[f"2x2_{mode}"]), _history(wd["1x4_pmap"])
  assert [r["step"] for r in want] == [1, 2] and [r["epoch"] for r in want] == [1, 2]
  assert want[0]["train_loss"] != want[1]["train_loss"]  # training moved (the comparison is not vacuous)
  _assert_close(got, want, rtol=1e-5, where="history")
  import jax  # pylint: disable=g-import-not-at-top
  got_vars, want_vars = _final_variables(wd[f"2x2_{mode}"]), _final_variables(wd["1x4_pmap"])
  assert jax.tree.structure(got_vars) == jax.tree.structure(want_vars)
  # Summation order only (see the module docstring): rtol 1e-5, atol for the values that are near 0.
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got_vars, want_vars)


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_evaluate_as_one_process(runs, mode):
  wd, results, _ = runs
  got, want = (dict(results[name][0]["eval"]) for name in (f"2x2_{mode}", "1x4_pmap"))
  assert got["num_examples"] == want["num_examples"] == NUM_TEST
  for record in (got, want):
    record.pop("checkpoint_path")  # each run's own workdir
  _assert_close(got, want, rtol=1e-5, where="eval")
  # Process 0 wrote the panel of every test frame, the other process's frames included.
  assert sorted(_predictions(wd[f"2x2_{mode}"], "test_latest")) == sorted(_predictions(wd["1x4_pmap"],
                                                                                      "test_latest"))
  assert len(_predictions(wd[f"2x2_{mode}"], "test_latest")) == NUM_TEST
  with open(os.path.join(wd[f"2x2_{mode}"], "eval", "test_latest_metrics.json")) as f:
    assert json.load(f)["num_examples"] == NUM_TEST


@pytest.mark.parametrize("mode", MODES)
def test_the_same_checkpoint_gives_the_same_metrics_on_one_or_two_processes(runs, mode):
  """No training in between: the per-example forward pass is the same, so the confusion matrix (psum'ed),
  HD95 (gathered rows, in the split's order) and the pictures are exactly those of 1 process; the loss sums
  in another order."""
  wd, results, _ = runs
  got, want = (dict(results[name][0]["eval"]) for name in (f"2x2_{mode}", f"1x4_eval_of_2x2_{mode}"))
  assert got.pop("loss") == pytest.approx(want.pop("loss"), rel=1e-6)
  assert got == want
  assert _predictions(wd[f"2x2_{mode}"], "test_latest") == _predictions(wd[f"2x2_{mode}"], "1x4_test_latest")


def test_two_processes_resumed_after_epoch_1_end_as_the_uninterrupted_run(runs):
  wd, results, _ = runs
  assert results["2x2_pmap_resumed"][0]["train"]["step"] == 2
  assert [r["step"] for r in _history(wd["2x2_pmap_resumed"])] == [1, 2]
  assert _history(wd["2x2_pmap_resumed"]) == _history(wd["2x2_pmap"])
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, _final_variables(wd["2x2_pmap_resumed"]),
               _final_variables(wd["2x2_pmap"]))


# ---- veinjax.distributed.initialize and the mains' flags (no distributed system started) ----

_CLUSTER_VARS = ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "VEINJAX_DISTRIBUTED")


@pytest.fixture
def calls(monkeypatch):
  """The arguments of each jax.distributed.initialize call (recorded, not made), in a plain environment."""
  import jax  # pylint: disable=g-import-not-at-top
  for name in _CLUSTER_VARS:
    monkeypatch.delenv(name, raising=False)
  made = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: made.append((args, kwargs)))
  return made


def test_initialize_with_the_flags_or_not_at_all(calls):
  from veinjax import distributed  # pylint: disable=g-import-not-at-top
  assert not distributed.initialize()
  assert not distributed.initialize("", None, None)
  assert calls == []
  assert distributed.initialize("host0:1234", 2, 1)
  assert calls == [(("host0:1234", 2, 1), {})]


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_NTASKS": "4"}, True), ({"SLURM_NTASKS": "1"}, False),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, True), ({"TPU_WORKER_HOSTNAMES": "t0"}, False),
    ({"VEINJAX_DISTRIBUTED": "1"}, True), ({"VEINJAX_DISTRIBUTED": "0"}, False)])
def test_initialize_when_the_environment_asks(calls, monkeypatch, env, expected):
  from veinjax import distributed  # pylint: disable=g-import-not-at-top
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert distributed.initialize() == expected
  assert calls == ([((), {})] if expected else [])  # jax detects the cluster itself


@pytest.mark.parametrize("args, message", [
    (("host0:1234", None, 0), r"missing: --num_processes"),
    (("", 2, None), r"missing: --coordinator_address, --process_id"),
    (("host0:1234", 2, 2), r"--process_id=2 is outside \[0, --num_processes=2\)"),
    (("host0:1234", 0, 0), r"--num_processes=0 must be at least 1")])
def test_initialize_rejects_incomplete_or_inconsistent_flags(calls, args, message):
  from veinjax import distributed  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=message):
    distributed.initialize(*args)
  assert calls == []


@pytest.mark.parametrize("main", ["train.py", "eval.py"])
def test_the_mains_check_the_flags_before_anything_else(main, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  for name in _CLUSTER_VARS:
    env.pop(name, None)
  args = [f"--workdir={tmp_path}", "--num_processes=2", "--process_id=0"]
  if main == "train.py":
    args.append(f"--config={ROOT / 'configs' / 'quickstart.py'}")
  proc = subprocess.run([sys.executable, str(ROOT / main), *args], capture_output=True, text=True,
                        cwd=str(ROOT), env=env, timeout=120)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Error: --coordinator_address/--num_processes/--process_id go together" in proc.stderr, proc.stderr


if __name__ == "__main__":
  _worker(json.loads(sys.argv[1]))
