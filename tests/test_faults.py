"""Fault injection: kills, preemption, damaged checkpoints, bad inputs, NaNs.

Every run is a tiny digits model (checkpoint every step, eval and samples at
the end only). Kill and preemption tests drive real `python md4/main.py`
processes; they share a persistent XLA compilation cache so that only the
first one compiles, and two chains of interrupted runs go side by side.
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import file_trees
import pytest

from md4 import checkpointing
from md4 import config_recipes
from md4 import main
from md4 import run as run_lib

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "md4", "main.py")
CONFIG_FILE = os.path.join(ROOT, "configs", "md4", "digits.py")
NUM_STEPS = 8
# The digits `tiny` variant, shrunk further; every step is checkpointed and
# every checkpoint kept, so runs can be compared step by step.
TINY = {
    "train.num_steps": NUM_STEPS,
    "train.checkpoint_every": 1,
    "train.keep_checkpoints": NUM_STEPS + 1,
    "train.log_every": 1,
    "train.eval_every": NUM_STEPS,
    "train.sample_every": NUM_STEPS,
    "train.eval_batch_size": 16,
    "train.num_samples": 1,
    "train.sample_steps": 2,
    "network.ch": 8,
    "network.embed_dim": 4,
    "network.cond_width": 16,
}
KILL_SEED = 8
NUM_KILLS = 5
STEP_LINE = re.compile(
    r"\bstep (\d+)/\d+ +loss "
)  # the console's progress line
RESUMED = re.compile(r"Resumed from \S+ at step (\d+)")
TIMEOUT_S = 300


def tiny_config():
  config = config_recipes.load_file(CONFIG_FILE, "tiny")
  for name, value in TINY.items():
    section, field = name.split(".")
    config[section][field] = value
  return config


def tiny_flags():
  return [f"--config={CONFIG_FILE}:tiny"] + [
      f"--config.{name}={value}" for name, value in TINY.items()
  ]


@pytest.fixture(scope="module")
def child_env(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("xla_cache"))
  # Every child compiles the same programs with the same flags, so results
  # stay bitwise comparable; optimisation level 0 halves the compile time.
  xla_flags = (
      os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  ).strip()
  return dict(
      os.environ,
      TF_CPP_MIN_LOG_LEVEL="3",
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=xla_flags,
      JAX_COMPILATION_CACHE_DIR=cache,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
  )


def start(workdir, env, log_path, extra=()):
  """A training process writing its output to log_path."""
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(
      [sys.executable, MAIN, *tiny_flags(), f"--workdir={workdir}", *extra],
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
      text=True,
  )
  log.close()
  return proc


def read(path):
  with open(path) as f:
    return f.read()


def wait_until(proc, condition, log_path):
  """Polls until condition() holds; fails if the process ends first."""
  deadline = time.time() + TIMEOUT_S
  while not condition():
    if proc.poll() is not None:
      pytest.fail(
          f"process ended (rc {proc.returncode}) before the awaited "
          f"moment:\n{read(log_path)[-3000:]}"
      )
    assert time.time() < deadline, read(log_path)[-3000:]
    time.sleep(0.002)


def partial_saves(workdir):
  directory = checkpointing.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return [
      n for n in os.listdir(directory) if checkpointing.PARTIAL_SAVE.match(n)
  ]


def saved_steps(workdir):
  return sorted(
      ocp.utils.checkpoint_steps(checkpointing.checkpoint_dir(workdir))
  )


tree_hashes = file_trees.tree_hashes


def saved_tree(workdir, step):
  """The saved state as nested dicts of numpy arrays."""
  manager = ocp.CheckpointManager(
      checkpointing.checkpoint_dir(workdir), item_names=("state", "data")
  )
  return manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
  ).state


def saved_state(workdir, step):
  """(state leaves as numpy, data iterator JSON) of one checkpoint."""
  state = saved_tree(workdir, step)
  data = read(
      os.path.join(
          checkpointing.checkpoint_dir(workdir),
          str(step),
          "data",
          "process_0-of-1.json",
      )
  )
  return [np.asarray(x) for x in jax.tree.leaves(state)], data


def assert_bitwise_equal(workdir, reference, step):
  leaves, data = saved_state(workdir, step)
  ref_leaves, ref_data = saved_state(reference, step)
  assert data == ref_data, f"data iterator differs at step {step}"
  assert len(leaves) == len(ref_leaves)
  for a, b in zip(leaves, ref_leaves):
    assert a.dtype == b.dtype and np.array_equal(
        a, b
    ), f"state differs at step {step}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, child_env):
  """One uninterrupted run: checkpoints of every step 1..NUM_STEPS."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  log_path = workdir + ".log"
  proc = start(workdir, child_env, log_path)
  assert proc.wait(timeout=TIMEOUT_S) == 0, read(log_path)[-3000:]
  assert saved_steps(workdir) == list(range(1, NUM_STEPS + 1))
  return workdir


# ------------------------------------------------ kills and preemption --


class _StepWatcher:
  """The highest training step a log file has reported so far."""

  def __init__(self, path):
    self._path, self._offset, self._partial, self.step = path, 0, "", 0

  def poll(self) -> int:
    with open(self._path) as f:
      f.seek(self._offset)
      chunk = f.read()
      self._offset = f.tell()
    lines = (self._partial + chunk).split("\n")
    self._partial = lines.pop()
    for line in lines:
      match = STEP_LINE.search(line)
      if match:
        self.step = max(self.step, int(match.group(1)))
    return self.step


def _segment(workdir, env, log_path, kill_at, sig, during_save=False):
  """Runs until step kill_at is logged (or being saved), then sends sig."""
  proc = start(workdir, env, log_path)
  if during_save:
    wait_until(
        proc,
        lambda: any(
            int(n.split(".")[0]) >= kill_at for n in partial_saves(workdir)
        ),
        log_path,
    )
  else:
    watcher = _StepWatcher(log_path)
    wait_until(proc, lambda: watcher.poll() >= kill_at, log_path)
  proc.send_signal(sig)
  return proc.wait(timeout=TIMEOUT_S)


def _step_hashes(workdir):
  return {
      s: tree_hashes(
          os.path.join(checkpointing.checkpoint_dir(workdir), str(s))
      )
      for s in saved_steps(workdir)
  }


def _chain(workdir, env, logs, plan):
  """Interrupts successive runs in one workdir as planned, then finishes.

  Args:
    workdir: the run's workdir.
    env: the child environment.
    logs: directory for the runs' logs.
    plan: (step, signal, during_save) per interrupted run, steps increasing.

  Returns:
    Facts the test asserts: exit codes, resumed-from and saved steps, the
    interrupted save, the finalized checkpoints' hashes at that moment, and
    the later logs.
  """
  facts = {"runs": [], "partial": None, "later_logs": ""}
  for i, (step, sig, during_save) in enumerate(plan):
    before = saved_steps(workdir)
    log = os.path.join(logs, f"run{i}.log")
    rc = _segment(workdir, env, log, step, sig, during_save)
    resumed = RESUMED.search(read(log))
    facts["runs"].append(
        dict(
            step=step,
            sig=sig,
            rc=rc,
            before=before,
            after=saved_steps(workdir),
            resumed=int(resumed.group(1)) if resumed else None,
            log=read(log),
        )
    )
    if facts["partial"] is not None:
      facts["later_logs"] += read(log)
    if during_save:
      facts["partial"] = partial_saves(workdir)
      facts["finalized"] = _step_hashes(workdir)
  log = os.path.join(logs, "final.log")
  proc = start(workdir, env, log)
  facts["final_rc"] = proc.wait(timeout=TIMEOUT_S)
  facts["later_logs"] += read(log)
  return facts


def _run_chains(tmp_path, env, plans):
  """The chains, two at a time (they are independent workdirs)."""
  results, errors = {}, []

  def work(name, plan):
    try:
      (tmp_path / name).mkdir()
      results[name] = _chain(
          str(tmp_path / name / "run"), env, str(tmp_path / name), plan
      )
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=work, args=item) for item in plans.items()]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  if errors:
    raise errors[0]
  return results


def test_sigterm_and_sigkills_at_seeded_steps_resume_bitwise_identically(
    reference, child_env, tmp_path
):
  points = sorted(
      random.Random(KILL_SEED).sample(range(1, NUM_STEPS), NUM_KILLS + 1)
  )
  kill, term = signal.SIGKILL, signal.SIGTERM
  plans = {  # Two chains of interrupted runs; one kill lands inside a save.
      "a": [
          (points[0], term, False),
          (points[2], kill, False),
          (points[4], kill, False),
      ],
      "b": [
          (points[1], kill, False),
          (points[3], kill, True),
          (points[5], kill, False),
      ],
  }
  results = _run_chains(tmp_path, child_env, plans)
  for name, facts in results.items():
    workdir = str(tmp_path / name / "run")
    for i, run in enumerate(facts["runs"]):
      if run["sig"] == term:  # Finishes the step, saves it, exits 0.
        assert run["rc"] == 0, run["log"][-3000:]
        stopped = int(
            re.search(r"Stopped by a signal at step (\d+)", run["log"]).group(1)
        )
        assert stopped >= run["step"] and run["after"][-1] == stopped
      else:
        assert run["rc"] == -signal.SIGKILL, run["log"][-3000:]
      if i:  # Resumed from the newest finished checkpoint.
        assert run["resumed"] == run["before"][-1], run["log"][-3000:]
    assert facts["final_rc"] == 0, facts["later_logs"][-3000:]
    assert not partial_saves(workdir)
    if facts["partial"] is not None:
      assert facts["partial"], "the kill was meant to interrupt a save"
      partial_step = int(facts["partial"][0].split(".")[0])
      assert partial_step not in facts["finalized"]
      assert (
          f"{partial_step}.orbax-checkpoint-tmp: a checkpoint save that "
          "was interrupted"
      ) in facts["later_logs"]
      current = _step_hashes(workdir)
      for step, hashes in facts["finalized"].items():  # Never rewritten.
        assert current[step] == hashes
    assert saved_steps(workdir) == list(range(1, NUM_STEPS + 1))
    for step in saved_steps(workdir):
      assert_bitwise_equal(workdir, reference, step)
  assert any(f["partial"] is not None for f in results.values())


# ---------------------------------------------------- damaged checkpoint --


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(
    reference, tmp_path, caplog
):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  latest = os.path.join(checkpointing.checkpoint_dir(workdir), str(NUM_STEPS))
  data_dir = os.path.join(latest, "state", "ocdbt.process_0", "d")
  for name in os.listdir(data_dir):  # Truncated, as by a full disk.
    path = os.path.join(data_dir, name)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  damaged = tree_hashes(latest)

  config = tiny_config()
  setup = run_lib.build(config, workdir)
  manager = checkpointing.make_manager(workdir, NUM_STEPS + 1, 0)
  with caplog.at_level("WARNING"):
    state = checkpointing.restore(
        manager, setup.abstract_state, iter(setup.datasets.train)
    )
  assert int(state.step) == NUM_STEPS - 1
  assert f"Checkpoint {latest} cannot be read" in caplog.text
  assert manager.latest_step() == NUM_STEPS - 1
  kept = os.path.join(workdir, checkpointing.UNREADABLE_DIR, str(NUM_STEPS))
  assert tree_hashes(kept) == damaged  # Moved aside, byte for byte.
  ref = saved_tree(reference, NUM_STEPS - 1)
  for name in ("params", "ema_params"):
    for a, b in zip(
        jax.tree.leaves(getattr(state, name)), jax.tree.leaves(ref[name])
    ):
      assert np.array_equal(np.asarray(a), np.asarray(b))
  manager.close()


# ------------------------------------------------------------ bad inputs --


_set = file_trees.set_fields


def _misspelt(config, unused_tmp):
  with config.unlocked():
    config.train.batch_sise = 3


def _tokens(make_files):
  """Points the config at a tokens directory made by make_files(dir)."""

  def mutate(config, tmp):
    directory = tmp / f"tokens_{make_files.__name__}"
    directory.mkdir()
    make_files(directory)
    config.data.dataset = "tokens"
    config.data.path = str(directory)
    config.data.data_shape = (16,)

  return mutate


def _out_of_vocab(directory):
  np.save(directory / "train.npy", np.full(400, 99, np.int32))


def _garbage_npy(directory):
  (directory / "train.npy").write_bytes(b"this is not an npy file")


def _no_files(directory):
  (directory / "README").write_text("no token files here")


def _short_rows(directory):
  np.save(directory / "train.npy", np.zeros((50, 4), np.int32))


def _wrong_metadata(directory):
  np.save(directory / "train.npy", np.zeros(400, np.int32))
  (directory / "metadata.json").write_text(
      '{"vocab_size": 50257, "seq_len": 1024, "dtype": "uint16", '
      '"tokenizer": {"kind": "gpt2"}}'
  )


def _unprepared_openwebtext(config, tmp):
  config.data.dataset = "openwebtext"
  config.data.data_dir = str(tmp / "empty_data_dir")
  config.data.data_shape = (16,)
  config.data.vocab_size = 50257


BAD_INPUTS = {
    "misspelt field": (_misspelt, "Did you mean config.train.batch_size"),
    "zero steps": (_set(train__num_steps=0), "config.train.num_steps"),
    "negative lr": (
        _set(optimizer__learning_rate=-1.0),
        "config.optimizer.learning_rate",
    ),
    "b2 of one": (_set(optimizer__b2=1.0), "config.optimizer.b2"),
    "eps too big": (_set(model__md4__eps=0.7), "config.model.md4.eps"),
    "negative seed": (_set(seed=-1), "config.seed"),
    "negative max_bad_steps": (
        _set(train__max_bad_steps=-1),
        "config.train.max_bad_steps",
    ),
    "unknown process": (_set(model__process="md5"), "config.model.process"),
    "MD4 section under GenMD4": (
        _set(model__process="genmd4", model__md4__num_steps=10),
        "config.model.md4.num_steps=10 is ignored",
    ),
    "D3PM without T": (
        _set(model__process="d3pm", model__d3pm__num_steps=0),
        "config.model.d3pm.num_steps",
    ),
    "zero in data_shape": (
        _set(data__data_shape=(8, 0, 1)),
        "config.data.data_shape",
    ),
    "two-axis mesh": (_set(sharding__mesh=(2, 2)), "config.sharding.mesh"),
    "micro batches": (
        _set(train__batch_size=10, train__micro_batches=3),
        "config.train.micro_batches",
    ),
    "vocab differs from data": (_set(data__vocab_size=20), "vocab_size"),
    "model shape changed": (_set(network__ch=16), "config.network.ch: saved 8"),
    "tokens beyond vocab": (_tokens(_out_of_vocab), "train.npy"),
    "garbage npy": (_tokens(_garbage_npy), "train.npy is not a readable"),
    "no token files": (_tokens(_no_files), "no .npy or .array_record"),
    "rows too short": (_tokens(_short_rows), "train.npy has rows of 4"),
    "metadata vocab": (_tokens(_wrong_metadata), "metadata.json"),
    "unprepared data": (
        _unprepared_openwebtext,
        "metadata.json does not exist",
    ),
}


def test_bad_configs_and_data_exit_naming_the_problem_workdir_untouched(
    reference, tmp_path
):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  before = tree_hashes(workdir)
  for name, (mutate, expected) in BAD_INPUTS.items():
    config = tiny_config()
    mutate(config, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
      main.run(config, workdir)
    message = str(exit_info.value.code)
    assert message.startswith("md4 error: ") and expected in message, (
        name,
        message,
    )
    assert tree_hashes(workdir) == before, name


def test_unwritable_workdir_and_full_disk_are_reported_up_front(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(SystemExit, match="not writable"):
    main.run(tiny_config(), str(blocker / "run"))
  # A model whose checkpoints outgrow any disk (only shapes are built).
  config = tiny_config()
  config.network.ch = 1 << 17
  with pytest.raises(SystemExit, match="MiB free"):
    main.run(config, str(tmp_path / "big"))
  assert not os.path.exists(tmp_path / "big")  # Not left behind, empty.


def test_bad_config_on_the_command_line_exits_1_with_one_clear_line(
    tmp_path, child_env
):
  workdir = str(tmp_path / "run")
  out = subprocess.run(
      [
          sys.executable,
          MAIN,
          *tiny_flags(),
          f"--workdir={workdir}",
          "--config.optimizer.b2=1.5",
      ],
      env=child_env,
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
  )
  assert out.returncode == 1
  errors = [l for l in out.stderr.splitlines() if "optimizer.b2" in l]
  assert len(errors) == 1, out.stderr
  assert errors[0].startswith(
      "md4 error: config.optimizer.b2=1.5 is out of range"
  )
  assert "Traceback" not in out.stderr
  assert not os.path.exists(workdir)  # Refused before anything was made.


# ------------------------------------------------------------------ NaN --

POISON_STEP = 3
MAX_BAD_STEPS = 2


def test_non_finite_steps_are_skipped_then_the_run_stops_naming_them(
    reference, child_env, tmp_path
):
  """Parameters scaled by 1e30 are finite but overflow in the forward pass."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  step_dir = lambda s: os.path.join(
      checkpointing.checkpoint_dir(workdir), str(s)
  )
  for step in saved_steps(workdir):
    if step > POISON_STEP:
      shutil.rmtree(step_dir(step))
  setup = run_lib.build(tiny_config(), workdir)
  manager = checkpointing.make_manager(workdir, NUM_STEPS + 1, 0)
  data = iter(setup.datasets.train)
  state = checkpointing.restore(manager, setup.abstract_state, data)
  assert int(state.step) == POISON_STEP
  poisoned = state.replace(
      params=jax.tree.map(lambda p: p * 1e30, state.params)
  )
  shutil.rmtree(step_dir(POISON_STEP))
  manager.reload()
  checkpointing.save(manager, POISON_STEP, poisoned, data)
  manager.close()

  log = str(tmp_path / "nan.log")
  proc = start(
      workdir, child_env, log, [f"--config.train.max_bad_steps={MAX_BAD_STEPS}"]
  )
  assert proc.wait(timeout=TIMEOUT_S) == 1
  text = read(log)
  stop = POISON_STEP + MAX_BAD_STEPS + 1
  last_good = os.path.join(checkpointing.checkpoint_dir(workdir), str(stop - 1))
  assert re.search(
      rf"md4 error: training diverged: step {stop} has "
      r"non-finite [^\n]*train/loss",
      text,
  ), text[-3000:]
  assert f"Last good checkpoint: {last_good}." in text
  assert f"({MAX_BAD_STEPS} non-finite steps" in text  # The counter.
  # The skipped steps kept the poisoned (finite) state; the failing step
  # saved nothing.
  assert saved_steps(workdir)[-1] == stop - 1
  poisoned_leaves, _ = saved_state(workdir, POISON_STEP)
  kept_leaves, _ = saved_state(workdir, stop - 1)
  for a, b in zip(poisoned_leaves, kept_leaves):
    if a.ndim:  # Everything but the step counter is unchanged.
      assert np.array_equal(a, b)
  for leaf in kept_leaves:
    assert np.all(np.isfinite(leaf))
