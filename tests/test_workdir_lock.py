"""md4.workdir_lock: one run per workdir, stale locks taken over."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from md4 import workdir_lock

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def holder(workdir, then):
  """A child process that takes the lock, prints 'locked', then `then`."""
  code = textwrap.dedent(f"""
      import os, sys, time
      sys.path.insert(0, {ROOT!r})
      from md4 import workdir_lock
      lock = workdir_lock.WorkdirLock({str(workdir)!r})
      lock.acquire()
      print("locked", flush=True)
      {then}
  """)
  proc = subprocess.Popen(
      [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_the_lock_file_names_host_pid_and_start_and_goes_at_release(tmp_path):
  with workdir_lock.held(str(tmp_path)) as lock:
    with open(lock.path) as f:
      owner = json.load(f)
    assert owner["host"] == socket.gethostname()
    assert owner["pid"] == os.getpid() and owner["started"]
    assert lock.previous_owner is None
  assert not os.path.exists(workdir_lock.lock_path(str(tmp_path)))


def test_a_live_run_is_refused_in_one_line_naming_its_owner(tmp_path):
  proc = holder(tmp_path, "time.sleep(60)")
  try:
    with pytest.raises(workdir_lock.WorkdirLockedError) as error:
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    message = str(error.value)
    assert f"PID {proc.pid} on host {socket.gethostname()}" in message
    assert "\n" not in message
    assert message.endswith("or choose another --workdir.")
  finally:
    proc.kill()
    proc.wait()


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(
    tmp_path, caplog
):
  proc = holder(tmp_path, "os.kill(os.getpid(), 9)")  # SIGKILL: no clean-up.
  proc.wait()
  assert os.path.exists(workdir_lock.lock_path(str(tmp_path)))
  with caplog.at_level("WARNING"):
    with workdir_lock.held(str(tmp_path)) as lock:
      assert lock.previous_owner["pid"] == proc.pid
  assert f"PID {proc.pid} on host" in caplog.text
  assert "Took over the stale lock" in caplog.text


def test_a_live_pid_recorded_on_this_host_is_refused_without_flock(tmp_path):
  # As on a file system whose locks are not shared: only the record is left.
  sleeper = subprocess.Popen(
      [sys.executable, "-c", "import time; time.sleep(60)"]
  )
  try:
    record = dict(
        workdir_lock.owner_record(),
        pid=sleeper.pid,
        process_start=workdir_lock._process_start(sleeper.pid),
    )
    with open(workdir_lock.lock_path(str(tmp_path)), "w") as f:
      json.dump(record, f)
    with pytest.raises(
        workdir_lock.WorkdirLockedError, match=f"PID {sleeper.pid}"
    ):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    # The same PID with another start time is a reused PID: stale.
    record["process_start"] = "1"
    with open(workdir_lock.lock_path(str(tmp_path)), "w") as f:
      json.dump(record, f)
    with workdir_lock.held(str(tmp_path)) as lock:
      assert lock.previous_owner["pid"] == sleeper.pid
  finally:
    sleeper.kill()
    sleeper.wait()
