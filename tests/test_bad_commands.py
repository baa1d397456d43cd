"""Each command as a user runs it: one clear error, nothing lost.

The commands' command lines as real processes (md4/main.py, md4.sample,
md4.evaluate, md4.judge, prepare_openwebtext_data.py and the benchmarks' scripts), in
the environment a user's shell gives (no TensorFlow quieting set, so the
commands must quiet its start-up banner themselves), and a disk that fills
while a checkpoint is written. Each case is checked as those of
tests/test_bad_inputs.py are (`check_case`): exit status, no traceback, a
few lines ending in the fix, every pre-existing file unchanged.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import test_bad_inputs as bad
import trained_digits

from md4 import checkpoint_integrity
from md4 import checkpointing
from md4 import run as run_lib

pytestmark = pytest.mark.slow  # Each case starts a Python process.

Case = bad.Case
DIGITS = bad.DIGITS
ROOT = bad.ROOT
tree_hashes = bad.tree_hashes
env = bad.env  # The shared trained run and data directory (a fixture).


def command_env():
  """The environment a user's shell gives: no TensorFlow quieting set."""
  variables = dict(os.environ, JAX_PLATFORMS="cpu")
  for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
    variables.pop(name, None)  # conftest sets them for the tests' process.
  return variables


def subprocess_command(*args, module=None, script=None):
  """A command as a process: md4/main.py, `-m module` or a script's path."""

  def call(env):
    target = (
        ["-m", module]
        if module
        else [os.path.join(ROOT, script or os.path.join("md4", "main.py"))]
    )
    argv = [a.format(env=env, digits=DIGITS) for a in args]
    return subprocess.run(
        [sys.executable, *target, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=command_env(),
    )

  return call


def benchmark(script, *args):
  return subprocess_command(*args, script=os.path.join("benchmarks", script))


# Makes the disk refuse the checkpoint's array file, a real failed write and
# not a simulated one: the file-size limit (`ulimit -f`, RLIMIT_FSIZE) is
# lowered just before the save, so tensorstore's write fails with EFBIG.
# Orbax reports it as it reports a full disk's ENOSPC (a ValueError naming
# os_error_code), and md4 handles the two alike; a real ENOSPC would need a
# small file system (root). The limit is per file and every checkpoint's
# files are the same size, so a limit set by the shell at start-up would
# refuse the first checkpoint as well as the later ones: the kept one is the
# shared run's (written without a limit), the refused one the resumed run's.
# SIGXFSZ, which would otherwise kill the process, is ignored so the write
# returns the error. 300 kB lets config.json, the logs and the sample grid
# through and stops the 1.5 MB array file. md4.main is imported first: it
# quiets TensorFlow's start-up banner before anything imports TensorFlow.
FULL_DISK_SAVE = """
import resource, signal, sys
sys.path.insert(0, {root!r})
from md4 import main
from md4 import checkpointing
real_save = checkpointing.save
def save(*args, **kwargs):
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
  return real_save(*args, **kwargs)
checkpointing.save = save
sys.argv = ["main.py"] + sys.argv[1:]
main.cli()
"""

# md4's own console lines: `HH:MM:SS message`, warnings and errors named.
_PROGRESS_LINE = re.compile(r"\d\d:\d\d:\d\d (?!ERROR: |WARNING: )")


def disk_full_during_save(env):
  """Resumes a copy of the run to step 9; its checkpoint 9 cannot be written.

  Afterwards checkpoints 3 and 6 are byte for byte what they were and step
  6 restores and matches its checksums; nothing of checkpoint 9 is left
  behind, and nothing but md4's progress and the one error was printed.
  """
  run = os.path.join(env.tmp, "run")
  shutil.copytree(env.workdir, run)
  checkpoints = os.path.join(run, "checkpoints")
  kept = tree_hashes(
      os.path.join(checkpoints, "3"), os.path.join(checkpoints, "6")
  )
  result = subprocess.run(
      [
          sys.executable,
          "-c",
          FULL_DISK_SAVE.format(root=ROOT),
          f"--config={DIGITS}:tiny",
          f"--workdir={run}",
          "--config.train.num_steps=9",
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=300,
      env=command_env(),
  )
  output = (result.stdout + result.stderr).strip()
  assert result.returncode == 1, output[-3000:]
  assert sorted(os.listdir(checkpoints)) == ["3", "6"], output[-3000:]
  assert not glob.glob(
      os.path.join(run, "**", "*orbax-checkpoint-tmp*"), recursive=True
  )
  assert (
      tree_hashes(
          os.path.join(checkpoints, "3"), os.path.join(checkpoints, "6")
      )
      == kept
  )
  assert f"the last checkpoint, {checkpoints}/6, is kept" in output
  noise = [
      line for line in output.splitlines() if not _PROGRESS_LINE.match(line)
  ]
  assert len(noise) == 1 and noise[0].startswith("md4 error: "), noise
  # The kept checkpoint restores, its arrays matching their checksums.
  setup = run_lib.build(trained_digits.digits_config(), run, writable=False)
  state = checkpointing.read_state(
      checkpoints, 6, setup.abstract_state, "the kept checkpoint", ""
  )
  assert int(state.step) == 6
  assert checkpoint_integrity.verify(os.path.join(checkpoints, "6"), state)
  return result


CASES = {
    # Each command as a process.
    "main.py process": Case(
        subprocess_command(
            "--config={digits}:tiny",
            "--workdir={env.tmp}/run",
            "--config.train.num_step=4",
        ),
        "Did you mean --config.train.num_steps?",
    ),
    "main.py: wrong-typed flag": Case(
        subprocess_command(
            "--config={digits}:tiny",
            "--workdir={env.tmp}/run",
            "--config.train.num_steps=abc",
        ),
        "Run with --helpshort to list the flags.",
    ),
    "md4.sample process": Case(
        subprocess_command("--workdir={env.tmp}", module="md4.sample"),
        "Give the workdir of a training run.",
    ),
    "md4.sample: semi-autoregressive flags on images": Case(
        subprocess_command(
            "--workdir={env.workdir}",
            "--block_length=4",
            "--length=100",
            module="md4.sample",
        ),
        "drop --block_length.",
    ),
    "md4.evaluate process": Case(
        subprocess_command("--workdir={env.tmp}", module="md4.evaluate"),
        "Give the workdir of a training run.",
    ),
    "md4.evaluate: benchmark directory missing": Case(
        subprocess_command(
            "--workdir={env.tmp}",
            "--benchmark=ptb,wikitext2",
            "--benchmark_dir={env.tmp}/nope",
            module="md4.evaluate",
        ),
        "(md4/zero_shot.py lists where each goes).",
    ),
    "md4.judge process": Case(
        subprocess_command(
            "--judge={env.tmp}", "--samples={env.tmp}/none", module="md4.judge"
        ),
        "give md4.sample's output directory (or the file itself).",
    ),
    "prepare process": Case(
        subprocess_command(
            "--input={env.tmp}/nope",
            "--data_dir={env.tmp}/out",
            module="prepare_openwebtext_data",
        ),
        "give the directory or file of the corpus.",
    ),
    # The benchmarks' command lines.
    "train_step benchmark: unknown shape": Case(
        benchmark("train_step.py", "--shapes=text8,owt2"),
        "valid: text8, owt, cifar; run with --helpshort to list the flags.",
    ),
    "step_profile benchmark: unknown shape": Case(
        benchmark("step_profile.py", "--shapes=text9"),
        "valid: text8, owt, cifar; run with --helpshort to list the flags.",
    ),
    "accelerator benchmark: unknown flag": Case(
        benchmark("accelerator.py", "--dryrun"),
        "Run with --helpshort to list the flags.",
    ),
    "sampling benchmark: unknown part": Case(
        benchmark("sampling.py", "--parts=nope"),
        "valid: speed, exactness; run with --helpshort to list the flags.",
    ),
    "sampling benchmark: unknown sampler": Case(
        benchmark("sampling.py", "--samplers=ancestral,fast"),
        "run with --helpshort to list the flags.",
    ),
    "families benchmark: unknown family": Case(
        benchmark("families.py", "--families=md4,sedd"),
        "valid: md4, d3pm_uniform, d3pm_absorbing, multinomial, d3pm_gaussian,"
        " autoregressive.",
    ),
    "mesh benchmark: bad choice": Case(
        benchmark("mesh.py", "--part=speed"),
        "Run with --helpshort to list the flags.",
    ),
    "data benchmark: unknown argument": Case(
        benchmark("data.py", "--batchs=5"), "run with --help to list the flags."
    ),
    "data benchmark: unknown source": Case(
        benchmark("data.py", "--sources=digits,cifar"),
        "give a comma-separated subset.",
    ),
    "sampler_quality benchmark: judge missing": Case(
        benchmark(
            "sampler_quality.py",
            "--workdir={env.tmp}",
            "--judge={env.tmp}/nope",
        ),
        "give a GPT-2 directory in the Hugging Face layout or an"
        " autoregressive md4 run's workdir.",
    ),
    "block_sampling benchmark: block size not dividing the length": Case(
        benchmark("block_sampling.py", "--lengths=256", "--block_sizes=5"),
        "--block_sizes=5 does not divide --lengths=256; give block sizes"
        " that divide every length.",
    ),
    # A disk that fills during a save.
    "disk full during a checkpoint save": Case(
        disk_full_during_save,
        "Raise the file-size limit (ulimit -f), then rerun the same command "
        "to resume.",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_command_gives_one_clear_error_and_changes_nothing(
    name, env, tmp_path, capsys
):  # pylint: disable=redefined-outer-name
  output = bad.check_case(CASES[name], env, tmp_path, capsys)
  # check_case: status 1, no traceback and no native banner
  # (bad.NATIVE_BANNERS), the message from `md4 error:` on at most
  # bad.MAX_LINES lines and ending in the fix, no file changed.
  assert output.count("md4 error:") == 1, output[-3000:]


def test_every_benchmark_script_has_a_case():
  scripts = {
      os.path.basename(p)
      for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
  } - {"compiled_step.py"}
  cased = {
      name.split(" ", 1)[0] + ".py" for name in CASES if " benchmark: " in name
  }
  assert scripts <= cased, scripts - cased
