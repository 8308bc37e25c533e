"""Several hosts: `jax.distributed.initialize`, called by train.py and eval.py before anything else uses JAX.

  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

It initialises the distributed system when
- the caller gives a coordinator address (train.py / eval.py `--coordinator_address=HOST:PORT
  --num_processes=N --process_id=I`, all three together), or
- the environment asks for it: SLURM with more than one task (`SLURM_NTASKS` > 1), a TPU pod whose
  `TPU_WORKER_HOSTNAMES` (or `TPU_PROCESS_ADDRESSES`) lists more than one host, or `VEINJAX_DISTRIBUTED=1`
  (any other cluster jax detects itself, e.g. Open MPI); jax then finds the coordinator, count and id itself.
Otherwise (one host) it does nothing, so a plain `python train.py` never waits for a coordinator. Once it has
run, `jax.devices()` lists every host's devices and `jax.process_index()` tells the hosts apart.
"""

from __future__ import annotations

import os

import jax

_FLAGS = "--coordinator_address/--num_processes/--process_id"


def _many(value: str | None) -> bool:
  return value is not None and len([h for h in value.split(",") if h.strip()]) > 1


def _environment_asks() -> bool:
  """SLURM with several tasks, a TPU pod of several hosts, or VEINJAX_DISTRIBUTED=1."""
  try:
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  except ValueError:
    slurm_tasks = 1
  tpu_hosts = os.environ.get("TPU_PROCESS_ADDRESSES", os.environ.get("TPU_WORKER_HOSTNAMES"))
  return slurm_tasks > 1 or _many(tpu_hosts) or os.environ.get("VEINJAX_DISTRIBUTED", "") == "1"


def initialize(coordinator_address: str = "", num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when asked to (see the module docstring); returns whether it did.

  Call it before any other JAX call. Raises ValueError when only some of the three flags are given or
  their values do not fit together (process_id outside [0, num_processes)).
  """
  given = {"--coordinator_address": bool(coordinator_address), "--num_processes": num_processes is not None,
           "--process_id": process_id is not None}
  if any(given.values()) and not all(given.values()):
    missing = ", ".join(name for name, present in given.items() if not present)
    raise ValueError(f"{_FLAGS} go together: give all three or none (missing: {missing}).")
  if coordinator_address:
    if num_processes < 1:
      raise ValueError(f"--num_processes={num_processes} must be at least 1 ({_FLAGS}).")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} is outside [0, --num_processes={num_processes}) "
                       f"({_FLAGS}).")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
  if _environment_asks():
    jax.distributed.initialize()
    return True
  return False
