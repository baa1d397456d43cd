"""Checkpoint checksums (md4.checkpoint_integrity) and what restore does."""

import errno
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import file_trees
import pytest
import trained_digits

from md4 import checkpoint_integrity
from md4 import checkpointing
from md4 import main
from md4 import run as run_lib

pytestmark = pytest.mark.slow


tree_hashes = file_trees.tree_hashes


@pytest.fixture(scope="module")
def trained():
  """(workdir, setup) of the shared 6-step digits run (steps 3 and 6)."""
  workdir, _ = trained_digits.trained_run()
  return workdir, run_lib.build(trained_digits.digits_config(), workdir)


@pytest.fixture
def copy(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  return workdir


def test_any_single_element_change_alters_the_checksum():
  rng = np.random.default_rng(0)
  arrays = {
      "f32": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
      "bf16": jnp.asarray(rng.normal(size=(9,)), jnp.bfloat16),
      "i32": jnp.asarray(rng.integers(-9, 9, size=(3, 4)), jnp.int32),
      "bool": jnp.asarray(rng.integers(0, 2, size=(6,)), bool),
  }
  base = checkpoint_integrity.summarize(arrays).digests
  for name, x in arrays.items():
    flat = np.array(x).reshape(-1)
    for i in range(flat.size):
      changed = flat.copy()
      changed[i] = (not changed[i]) if name == "bool" else changed[i] + 1
      digests = checkpoint_integrity.summarize(
          {**arrays, name: jnp.asarray(changed.reshape(x.shape))}
      ).digests
      assert digests[name] != base[name], (name, i)
  swapped = np.array(arrays["f32"])[::-1]  # Same values, other places.
  assert (
      checkpoint_integrity.summarize({**arrays, "f32": swapped}).digests["f32"]
      != base["f32"]
  )


def test_every_saved_step_holds_digests_that_its_arrays_match(trained):
  workdir, setup = trained
  for step in checkpointing.saved_steps(workdir):
    step_dir = os.path.join(checkpointing.checkpoint_dir(workdir), str(step))
    with open(os.path.join(step_dir, checkpoint_integrity.DIGEST_FILE)) as f:
      saved = json.load(f)
    assert len(saved["arrays"]) == len(jax.tree.leaves(setup.abstract_state))
    state = checkpointing.read_state(
        checkpointing.checkpoint_dir(workdir),
        step,
        setup.abstract_state,
        "test",
        "",
    )
    assert checkpoint_integrity.verify(step_dir, state)


def test_reading_only_the_ema_reads_the_same_arrays_and_checks_only_them(
    trained, copy
):
  _, setup = trained
  directory = checkpointing.checkpoint_dir(copy)
  full = checkpointing.read_state(directory, 6, setup.abstract_state, "t", "")
  part = checkpointing.read_state(
      directory, 6, setup.abstract_state, "t", "", parts=("ema_params",)
  )
  assert list(part) == ["ema_params"]
  for a, b in zip(
      jax.tree.leaves(part["ema_params"]), jax.tree.leaves(full.ema_params)
  ):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  # A wrong digest of an optimizer-state array is not read, so not judged;
  # a wrong digest of an EMA array is.
  digest_file = os.path.join(directory, "6", checkpoint_integrity.DIGEST_FILE)
  with open(digest_file) as f:
    saved = json.load(f)
  opt_name = next(n for n in saved["arrays"] if n.startswith("opt_state/"))
  ema_name = next(n for n in saved["arrays"] if n.startswith("ema_params/"))
  for name, fails in ((opt_name, False), (ema_name, True)):
    changed = json.loads(json.dumps(saved))
    changed["arrays"][name] = "0" * 16
    with open(digest_file, "w") as f:
      json.dump(changed, f)
    read = lambda: checkpointing.read_state(
        directory, 6, setup.abstract_state, "t", "", parts=("ema_params",)
    )
    if fails:
      with pytest.raises(ValueError, match=ema_name):
        read()
    else:
      read()
  with open(digest_file, "w") as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match=opt_name):  # The full read judges it.
    changed["arrays"][ema_name] = saved["arrays"][ema_name]
    changed["arrays"][opt_name] = "0" * 16
    with open(digest_file, "w") as f:
      json.dump(changed, f)
    checkpointing.read_state(directory, 6, setup.abstract_state, "t", "")


def _restore(workdir, setup, moved):
  manager = checkpointing.make_manager(workdir, 3, 0)
  state = checkpointing.restore(
      manager, setup.abstract_state, iter(setup.datasets.train), moved=moved
  )
  manager.close()
  return state


def test_arrays_changed_on_disk_are_moved_aside_and_the_previous_restored(
    trained, copy
):
  _, setup = trained
  checkpoints = checkpointing.checkpoint_dir(copy)
  # Step 6's arrays replaced by step 3's: files orbax reads without a
  # complaint, values that differ from the checksums saved with step 6.
  shutil.rmtree(os.path.join(checkpoints, "6", "state"))
  shutil.copytree(
      os.path.join(checkpoints, "3", "state"),
      os.path.join(checkpoints, "6", "state"),
  )
  damaged = tree_hashes(os.path.join(checkpoints, "6"))
  moved = []
  state = _restore(copy, setup, moved)
  assert int(state.step) == 3
  kept = os.path.join(copy, checkpointing.UNREADABLE_DIR, "6")
  assert tree_hashes(kept) == damaged  # Moved aside, byte for byte.
  assert checkpointing.saved_steps(copy) == [3]
  assert len(moved) == 1 and "fails its integrity check" in moved[0]
  summary = main.summarize(
      {
          "preempted": False,
          "step": 6,
          "trained_steps": 3,
          "eval": {},
          "set_aside": moved,
          "bad_steps": 0,
          "tensorboard": copy,
          "checkpoints": checkpoints,
      },
      trained_digits.digits_config(),
  )
  assert summary.splitlines()[1].startswith(f"  moved aside: {checkpoints}/6")


def test_flipped_bytes_in_the_largest_array_file_never_restore_silently(
    trained, copy
):
  _, setup = trained
  data = os.path.join(
      checkpointing.checkpoint_dir(copy), "6", "state", "ocdbt.process_0", "d"
  )
  largest = max(
      (os.path.join(data, n) for n in os.listdir(data)), key=os.path.getsize
  )
  with open(largest, "r+b") as f:  # 64 bytes flipped, same size.
    f.seek(os.path.getsize(largest) // 2)
    chunk = f.read(64)
    f.seek(-len(chunk), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in chunk))
  moved = []
  state = _restore(copy, setup, moved)
  assert int(state.step) == 3 and len(moved) == 1


def test_a_non_finite_state_is_never_saved(trained, copy):
  _, setup = trained
  state = _restore(copy, setup, [])
  poisoned = state.replace(
      step=state.step + 10,
      params=jax.tree.map(
          lambda p: p.at[(0,) * p.ndim].set(jnp.nan)
          if p.dtype == jnp.float32
          else p,
          state.params,
      ),
  )
  manager = checkpointing.make_manager(copy, 3, 0)
  before = tree_hashes(checkpointing.checkpoint_dir(copy))
  with pytest.raises(checkpointing.NonFiniteStateError) as error:
    checkpointing.save(manager, 13, poisoned, iter(setup.datasets.train))
  manager.close()
  message = str(error.value)
  assert message.startswith(
      "step 13: the train state holds NaN or Inf in params/"
  )
  assert f"{checkpointing.checkpoint_dir(copy)}/6 is kept" in message
  assert tree_hashes(checkpointing.checkpoint_dir(copy)) == before


def test_a_full_disk_is_recognised_in_orbax_and_python_errors():
  tensorstore = ValueError(
      'OUT_OF_RANGE: Error writing "w/0.0" ...: Failed to write 869396 bytes'
      " to file 7: No space left on device [os_error_code='28']"
  )
  assert checkpointing.no_room_errno(tensorstore) == errno.ENOSPC
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
  assert checkpointing.no_room_errno(wrapped) == errno.EDQUOT
  assert (
      checkpointing.no_room_errno("[os_error_code='27'] File too large")
      == errno.EFBIG
  )
  assert checkpointing.no_room_errno(ValueError("os_error_code='2'")) is None
  assert checkpointing.no_room_errno(KeyError("w")) is None


def test_orbax_and_asyncio_reports_of_a_full_disk_are_hidden():
  hide = checkpointing._HideNoRoomLogs()  # pylint: disable=protected-access
  text = (
      'Error writing "w/0.0": Failed to write 1504203 bytes to file 18: '
      "File too large [os_error_code='27']"
  )

  def record(name, pathname, message, exc=None):
    return logging.LogRecord(
        name,
        logging.ERROR,
        pathname,
        1,
        message,
        (),
        (type(exc), exc, None) if exc else None,
    )

  orbax = "/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
  assert not hide.filter(record("absl", orbax, text))
  # asyncio's report of an abandoned write holds the error's repr, quotes
  # backslashed; its traceback is the exception's.
  task = (
      "Task exception was never retrieved\nfuture: <Task finished "
      f"exception=ValueError({text!r})>"
  )
  assert "\\'27\\'" in task
  assert not hide.filter(record("asyncio", "/asyncio/base_events.py", task))
  assert not hide.filter(
      record(
          "asyncio",
          "/asyncio/base_events.py",
          "Task exception was never retrieved",
          ValueError(text),
      )
  )
  # Other errors, and a full disk's error from anyone else, still show.
  assert hide.filter(
      record(
          "asyncio",
          "/asyncio/base_events.py",
          "Task exception was never retrieved",
          ValueError("something else"),
      )
  )
  assert hide.filter(record("absl", "/md4/train.py", text))
