"""Two real processes (2 CPU devices each, gloo on 127.0.0.1) match one."""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import portpicker

import generated_data
import tree_tolerance
import pytest
from md4 import checkpointing

pytestmark = pytest.mark.multiprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, data, num_steps, extra=()):
  return [
      sys.executable,
      os.path.join(ROOT, "md4", "main.py"),
      f"--config={os.path.join(ROOT, 'configs/md4/text8.py')}:tiny",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data}",
      f"--config.train.num_steps={num_steps}",
      "--config.train.checkpoint_every=2",
      "--config.train.eval_every=2",
      "--config.train.sample_every=100",
      *extra,
  ]


def _env(devices):
  # Backend optimisation level 0: most of the CPU compile time is LLVM's code
  # optimisation, which this test does not need.
  return dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="3",
      XLA_FLAGS=(
          f"--xla_force_host_platform_device_count={devices} "
          "--xla_backend_optimization_level=0"
      ),
  )


def _two_processes(workdir, data, num_steps):
  port = portpicker.pick_unused_port()
  procs = [
      subprocess.Popen(
          _command(
              workdir,
              data,
              num_steps,
              [
                  f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2",
                  f"--process_id={i}",
              ],
          ),
          env=_env(2),
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def _state(workdir):
  """The latest checkpoint's state, read onto this process's device.

  Returns:
    The step, and the leaves of params, ema_params and opt_state.
  """
  directory = checkpointing.checkpoint_dir(workdir)
  step = max(ocp.utils.checkpoint_steps(directory))
  path = os.path.join(directory, str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  # Saved on 4 devices, read here on one: give every leaf a local sharding.
  local = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
      checkpointer.metadata(path).item_metadata,
  )
  state = checkpointer.restore(path, target)
  return step, {
      k: [np.asarray(x) for x in jax.tree.leaves(state[k])]
      for k in ("params", "ema_params", "opt_state")
  }


def test_two_processes_train_checkpoint_resume_and_match_one_process(tmp_path):
  data = str(tmp_path / "data")
  generated_data.write_text8(data)
  single = str(tmp_path / "single")
  out = subprocess.run(
      _command(single, data, 4),
      env=_env(4),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert out.returncode == 0, out.stderr[-4000:]

  multi = str(tmp_path / "multi")
  _two_processes(multi, data, 2)  # Stops at step 2 with a checkpoint ...
  assert _state(multi)[0] == 2
  outs = _two_processes(multi, data, 4)  # ... and resumes to step 4.
  assert any("Resumed from" in o for o in outs)

  step_a, single_state = _state(single)
  step_b, multi_state = _state(multi)
  assert step_a == step_b == 4
  # Tolerances and why: see tree_tolerance.
  for key in ("params", "ema_params"):
    tree_tolerance.assert_leaves_close(
        key, multi_state[key], single_state[key], tree_tolerance.PARAM_FLOOR
    )
  tree_tolerance.assert_leaves_close(
      "opt_state",
      multi_state["opt_state"],
      single_state["opt_state"],
      tree_tolerance.MOMENT_FLOOR,
  )


def test_cluster_detection_needs_a_multi_process_launch():
  from md4 import distributed  # pylint: disable=g-import-not-at-top

  detect = distributed.detected_cluster
  assert detect({}) is None
  # A plain python inside an sbatch script: one process.
  assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is None
  assert (
      detect({
          "SLURM_JOB_ID": "7",
          "SLURM_STEP_ID": "0",
          "SLURM_STEP_NUM_TASKS": "1",
      })
      is None
  )
  assert (
      detect({
          "SLURM_JOB_ID": "7",
          "SLURM_STEP_ID": "0",
          "SLURM_STEP_NUM_TASKS": "4",
      })
      == "slurm"
  )
  assert detect({"OMPI_COMM_WORLD_SIZE": "1"}) is None
  assert detect({"OMPI_COMM_WORLD_SIZE": "8"}) == "openmpi"
  assert detect({"TPU_WORKER_ID": "0"}) == "tpu"
