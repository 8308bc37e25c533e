"""Data parallelism: the ONE train/eval step under `jax.pmap` or under `jax.jit` with a data-parallel mesh.

A step is a plain function `step(state, batch, *, axis_name)`. `axis_name` is the only thing that differs:

- `pmap` (`config.parallelism = "pmap"`): the step runs once per device on its slice of the batch, with
  `axis_name="batch"`; the step averages gradients with `lax.pmean` and sums metrics with `lax.psum`, and the
  model's BatchNorm averages its batch statistics over the same axis (`bn_axis_name`), so every replica sees
  the statistics of the whole global batch. State is replicated: a leading device axis on every leaf.
- `jit`: the step sees the whole global batch as one array sharded over a 1-D `Mesh` (axis "batch") with
  `axis_name=None`; means over the batch (loss, BatchNorm statistics) are already global and XLA inserts the
  all-reduces. State is one replicated array per leaf and is donated, so it is updated in place.

Both give the same numbers as one device running the whole batch, up to float summation order
(tests/parallel_test.py).

Host batches are per-process (the input pipeline gives process p its `batch_size / process_count` examples);
`shard` spreads them over the local devices. Everything that leaves a step goes back through `local` (per
example, this process's examples in order) or `first` (replicated values: one copy).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS_NAME = "batch"
PARALLELISM = ("pmap", "jit")

PyTree = Any


def check_mode(mode: str) -> None:
  if mode not in PARALLELISM:
    raise ValueError(f"Unknown --config.parallelism={mode!r}; choose one of {', '.join(PARALLELISM)}.")


class DataParallel:
  """How one training run spreads over devices (see the module docstring).

  Args:
    mode: "pmap" or "jit" (`config.parallelism`).
    devices: the devices to use; default all of them (every host's, on many hosts). Tests pass a subset.
  """

  def __init__(self, mode: str, devices: Sequence[jax.Device] | None = None):
    check_mode(mode)
    self.mode = mode
    self._explicit_devices = devices is not None
    self.devices = list(devices) if devices is not None else list(jax.devices())
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.asarray(self.devices), (AXIS_NAME,))
    self._replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(AXIS_NAME))
    # pmap's per-device arrays: a leading axis over this process's devices, one slice per device.
    self._stacked = NamedSharding(Mesh(np.asarray(self.local_devices), (AXIS_NAME,)), P(AXIS_NAME))

  # ---- Facts ----

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def num_local_devices(self) -> int:
    return len(self.local_devices)

  @property
  def axis_name(self) -> str | None:
    """What the step (and the model's BatchNorm, `bn_axis_name`) reduce over: "batch" under pmap, else None."""
    return AXIS_NAME if self.mode == "pmap" else None

  def check_batch_size(self, batch_size: int, flag: str = "--config.batch_size") -> None:
    """A global batch must split evenly over the devices (and so over the processes)."""
    if batch_size < 1 or batch_size % self.num_devices:
      multiple = self.num_devices
      raise ValueError(
          f"{flag}={batch_size} does not divide over the {self.num_devices} devices "
          f"({jax.process_count()} process(es)); use a multiple of {multiple}, e.g. "
          f"{max(multiple, (batch_size // multiple) * multiple) or multiple}.")

  # ---- State ----

  def replicate(self, tree: PyTree) -> PyTree:
    """One host copy -> the layout the wrapped steps expect."""
    if self.mode == "pmap":
      n = self.num_local_devices
      return jax.tree.map(
          lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (n,) + np.shape(x)), self._stacked), tree)
    # make_array_from_callback works on many hosts too: each process fills its own devices' copies.
    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, self._replicated, lambda index: x[index])
    return jax.tree.map(put, tree)

  def unreplicate(self, tree: PyTree) -> PyTree:
    """The replicated layout -> one host (numpy) copy."""
    # addressable_data(0) is the first local device's copy: under pmap its slice [1, ...] of the device axis.
    if self.mode == "pmap":
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  # ---- Batches ----

  def shard(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """A per-process host batch {name: [b, ...]} -> device arrays, split over the local devices.

    Non-numeric entries (e.g. example ids) stay on the host and are dropped here.
    """
    out = {}
    for key, value in batch.items():
      value = np.asarray(value)
      if value.dtype.kind not in "biuf":
        continue
      if value.shape[0] % self.num_local_devices:
        raise ValueError(f"A host batch of {value.shape[0]} examples ('{key}') does not split over "
                         f"{self.num_local_devices} local devices; the batch size must be a multiple of the "
                         "device count.")
      if self.mode == "pmap":
        value = value.reshape((self.num_local_devices, -1) + value.shape[1:])
        out[key] = jax.device_put(value, self._stacked)
      else:
        out[key] = jax.make_array_from_process_local_data(self._sharded, value)
    return out

  def local(self, x: jax.Array) -> np.ndarray:
    """A per-example step output -> this process's examples [b, ...] on the host, in input order."""
    if self.mode == "pmap":
      x = np.asarray(x)
      return x.reshape((-1,) + x.shape[2:])
    if x.is_fully_addressable:
      return np.asarray(x)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, self.mesh, P(AXIS_NAME)))

  def first(self, tree: PyTree) -> PyTree:
    """Replicated step outputs (reduced metrics) -> one host copy."""
    return self.unreplicate(tree)

  def prefetch(self, batches: Iterable[Mapping[str, np.ndarray]], size: int = 2) -> Iterator[tuple[dict, dict]]:
    """Yields (device_batch, host_batch), sharding up to `size` batches ahead in a background thread so that
    the host->device copy overlaps the running step."""
    q: queue.Queue = queue.Queue(maxsize=max(1, size))
    done = object()
    stop = threading.Event()

    def worker():
      try:
        for batch in batches:
          if stop.is_set():
            return
          q.put((self.shard(batch), batch))
        q.put(done)
      except BaseException as e:  # re-raised in the consumer, with its traceback
        q.put(e)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
      while True:
        item = q.get()
        if item is done:
          return
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:
      stop.set()
      # Unblock a worker waiting on a full queue so it sees `stop` and ends.
      while thread.is_alive():
        try:
          q.get(timeout=0.1)
        except queue.Empty:
          pass

  # ---- Steps ----

  def wrap_train_step(self, step: Callable[..., Any]) -> Callable[[PyTree, dict], tuple[PyTree, dict]]:
    """`step(state, batch, *, axis_name) -> (state, metrics)` compiled for this layout, state donated."""
    step = functools.partial(step, axis_name=self.axis_name)
    if self.mode == "pmap":
      devices = self.devices if self._explicit_devices else None
      return jax.pmap(step, axis_name=AXIS_NAME, devices=devices, donate_argnums=(0,))
    return jax.jit(step, in_shardings=(self._replicated, self._sharded),
                   out_shardings=(self._replicated, self._replicated), donate_argnums=(0,))

  def wrap_eval_step(self, step: Callable[..., Any]) -> Callable[[PyTree, dict], dict]:
    """`step(state, batch, *, axis_name) -> outputs` compiled for this layout (state not donated).

    Under jit the output layout is left to XLA: reductions come back replicated, per-example outputs
    sharded like the batch.
    """
    step = functools.partial(step, axis_name=self.axis_name)
    if self.mode == "pmap":
      devices = self.devices if self._explicit_devices else None
      return jax.pmap(step, axis_name=AXIS_NAME, devices=devices)
    return jax.jit(step, in_shardings=(self._replicated, self._sharded))
