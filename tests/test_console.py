"""The console: md4's summary, progress and results; other logs on request."""

import logging
import os
import re
import subprocess
import sys

from absl import logging as absl_logging
import pytest

from md4 import console

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 60


def _record(pathname: str, level: int = logging.INFO) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, "hello", None, None)


def test_default_verbosity_passes_md4_info_and_everyones_warnings_only():
  handler = absl_logging.get_absl_handler()
  own = os.path.join(ROOT, "md4", "train.py")
  other = os.path.join(sys.prefix, "site-packages", "orbax", "x.py")
  try:
    console.setup(0)
    assert handler.filter(_record(own))
    assert not handler.filter(_record(other))
    assert handler.filter(_record(other, logging.WARNING))
    assert re.fullmatch(r"\d\d:\d\d:\d\d hello", handler.format(_record(own)))
    console.setup(1)
    assert handler.filter(_record(other))
  finally:
    console.setup(1)  # absl's own format and no filter for other tests.


def test_verbosity_is_read_from_the_command_line_before_flags_are_parsed():
  assert console.verbosity_in(["md4-train", "--config=x.py"]) == 0
  assert console.verbosity_in(["md4-train", "--verbosity=1"]) == 1
  assert console.verbosity_in(["md4-train", "-v", "2"]) == 2
  assert console.verbosity_in(["md4-train", "--verbosity", "x"]) == 0


def test_progress_line_shows_step_loss_unit_rate_and_eta():
  times = iter([0.0, 10.0, 30.0])
  progress = console.Progress(1000, "perplexity", clock=lambda: next(times))
  progress.start(1)
  line = progress.line(101, {"loss": 3.25, "bits_per_dim": 4.0})
  assert line == (
      "step 101/1000  loss 3.25  perplexity 16.0000  10 steps/s  ETA 1m30s"
  )
  # 5 steps/s since the last line; the ETA uses the mean since start.
  line = progress.line(201, {"loss": 3.0, "bits_per_dim": 1.0})
  assert line.endswith("5 steps/s  ETA 2m00s")  # 799 / (200 / 30 s)


def test_eval_line_names_each_split_in_the_data_sets_unit():
  line = console.eval_line(
      1000,
      {
          "valid/bits_per_dim": 1.5,
          "valid/loss": 300.0,
          "test/bits_per_dim": 1.25,
          "test/bits_per_dim_raw": 9.0,
      },
      "bits_per_char",
  )
  assert line == (
      "step 1000 eval (EMA): valid bits/char 1.5000, test bits/char 1.2500"
  )


def test_digits_tiny_console_is_short_with_summary_progress_and_results(
    tmp_path,
):
  env = {
      k: v for k, v in os.environ.items() if k not in console.QUIET_NATIVE_ENV
  }
  out = subprocess.run(
      [
          sys.executable,
          os.path.join(ROOT, "md4", "main.py"),
          "--config=configs/md4/digits.py:tiny",
          f"--workdir={tmp_path}",
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  text = out.stdout + out.stderr
  assert out.returncode == 0, text
  lines = text.splitlines()
  assert len(lines) < MAX_LINES, text
  for start in (
      "Config:",
      "Data:",
      "Model:",
      "Run:",
      "Devices:",
      "Workdir:",
      "Per device:",
  ):
    assert sum(start in line for line in lines) == 1, (start, text)
  assert re.search(r"Data: .*train 1,\d\d\d, test \d+", text), text
  assert re.search(
      r"step 6/6  loss \S+  bits/dim \S+  \S+ steps/s  ETA 0s", text
  ), text
  assert len(re.findall(r"step \d+ eval \(EMA\): test bits/dim", text)) == 2
  assert len(re.findall(r"step \d+ checkpoint: ", text)) == 2
  assert len(re.findall(r"step \d+ samples: .*\.png", text)) == 2
  assert "Finished at step 6." in text and "test/bits_per_dim:" in text
  # Neither orbax's, clu's nor TensorFlow's INFO lines, nor the table.
  for noise in (
      "checkpoint_manager",
      "oneDNN",
      "Hyperparameters",
      "network/encoder",
      "absl::InitializeLog",
  ):
    assert noise not in text, (noise, text)
  table = (tmp_path / "parameters.txt").read_text()
  assert "network/encoder/conv_in/kernel" in table


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--verbosity=1"], {}),
        ([], console.QUIET_NATIVE_ENV),
    ],
)
def test_native_logs_are_quieted_unless_verbose(monkeypatch, argv, expected):
  for key in console.QUIET_NATIVE_ENV:
    monkeypatch.delenv(key, raising=False)
  console.hide_native_logs(["md4-train"] + argv)
  assert {
      k: os.environ[k] for k in console.QUIET_NATIVE_ENV if k in os.environ
  } == expected
