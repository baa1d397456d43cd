"""Starts JAX's multi-controller runtime: one process per host (or per GPU).

Explicit flags win; otherwise clusters JAX recognises (SLURM, Open MPI, TPU
pod slices) are detected from their environment; otherwise the run is a
single process.
"""

import os

from absl import logging
import jax

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_ID",
                "MEGASCALE_COORDINATOR_ADDRESS")


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Calls jax.distributed.initialize when this is a multi-process run."""
  explicit = coordinator_address is not None
  detected = any(v in os.environ for v in _CLUSTER_ENV)
  if not explicit and not detected:
    return
  if jax.config.jax_platforms in ("cpu",) or os.environ.get(
      "JAX_PLATFORMS") == "cpu":
    # CPU processes exchange data through gloo (TCP).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and "
                       "--process_id as well.")
    jax.distributed.initialize(coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("Process %d of %d, %d local devices, %d in all.",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
