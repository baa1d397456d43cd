"""Starts JAX's multi-controller runtime: one process per host (or per GPU).

Explicit flags win; otherwise clusters JAX recognises (SLURM, Open MPI, TPU
pod slices) are detected from their environment; otherwise the run is a
single process.
"""

import os

from absl import logging
import jax

_TPU_ENV = ("TPU_WORKER_ID", "MEGASCALE_COORDINATOR_ADDRESS")


def _count(env, name: str) -> int:
  try:
    return int(env.get(name, "1").split("(")[0])
  except ValueError:
    return 1


def detected_cluster(env=None) -> str | None:
  """The multi-process launcher this process runs under, if any.

  SLURM counts only inside a job step (`srun`, which sets SLURM_STEP_ID)
  with more than one task: a plain `python` in an sbatch script is a single
  process even though SLURM_JOB_ID is set. Open MPI counts with more than
  one rank; TPU pod workers always (JAX handles a one-host slice too).
  """
  env = os.environ if env is None else env
  if "SLURM_STEP_ID" in env and _count(env, "SLURM_STEP_NUM_TASKS") > 1:
    return "slurm"
  if _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return "openmpi"
  if any(name in env for name in _TPU_ENV):
    return "tpu"
  return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Calls jax.distributed.initialize when this is a multi-process run."""
  explicit = coordinator_address is not None
  detected = detected_cluster() is not None
  if not explicit and not detected:
    return
  if (
      jax.config.jax_platforms in ("cpu",)
      or os.environ.get("JAX_PLATFORMS") == "cpu"
  ):
    # CPU processes exchange data through gloo (TCP).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    if num_processes is None or process_id is None:
      raise ValueError(
          "--coordinator_address needs --num_processes and "
          "--process_id as well."
      )
    jax.distributed.initialize(
        coordinator_address, num_processes=num_processes, process_id=process_id
    )
  else:
    jax.distributed.initialize()
  logging.info(
      "Process %d of %d, %d local devices, %d in all.",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
