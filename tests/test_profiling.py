"""The periodic profiler trace: when it runs, and what a run writes."""

import glob
import os

import jax
import pytest

from md4 import config_recipes
from md4 import profiling
from md4 import train

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_traces_cover_the_steps_after_every_kth_and_stop_at_exit(
    monkeypatch, tmp_path
):
  calls = []
  monkeypatch.setattr(
      jax.profiler,
      "start_trace",
      lambda logdir: calls.append(("start", logdir)),
  )
  monkeypatch.setattr(
      jax.profiler, "stop_trace", lambda: calls.append(("stop",))
  )
  events = []
  with profiling.PeriodicTrace(str(tmp_path), 3, 2, last_step=10) as trace:
    for step in range(1, 10):
      trace.after_step(step)
      events.append((step, len(calls)))
  logdir = os.path.join(str(tmp_path), "profile")
  assert calls == [("start", logdir), ("stop",)] * 3
  # Started after steps 3, 6, 9; stopped after 5, 8 and at exit.
  assert [n for _, n in events] == [0, 0, 1, 1, 2, 3, 3, 4, 5]
  calls.clear()
  with profiling.PeriodicTrace(str(tmp_path), 3, 2, 10, enabled=False) as trace:
    for step in range(1, 10):
      trace.after_step(step)
  with profiling.PeriodicTrace(str(tmp_path), 0, 2, 10) as trace:
    trace.after_step(3)
  assert not calls


def test_a_short_run_with_profiling_on_writes_a_trace_for_tensorboard(tmp_path):
  config = config_recipes.load_file(
      os.path.join(ROOT, "configs", "md4", "digits.py"), "tiny"
  )
  config.train.num_steps = 4
  config.train.eval_every = config.train.checkpoint_every = 4
  config.train.sample_every = 4
  config.train.profile_every, config.train.profile_steps = 2, 1
  train.train_and_evaluate(config, str(tmp_path))
  # One trace (step 3); none starts at the last step.
  runs = glob.glob(
      os.path.join(str(tmp_path), "profile", "plugins", "profile", "*")
  )
  assert len(runs) == 1
  assert glob.glob(os.path.join(runs[0], "*.xplane.pb"))
