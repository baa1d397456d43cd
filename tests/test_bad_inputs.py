"""Users' mistakes against every command: one clear error, nothing lost.

Each case runs one mistake through a command's error boundary, in process
where the boundary allows it (`main.run`, `main.check_config_arguments`,
`md4.sample.sample_to_files`, `md4.evaluate.negative_elbo`,
`prepare_openwebtext_data.main`). It asserts the exit status, that
nothing printed holds a traceback, that the message is a few lines ending
in the fix it names, and that every file that was in the workdir, the data
directory and the case's own directory before is unchanged (sha256). Each
command as a real process (main.py, md4.sample, md4.evaluate, the prepare
script, the benchmarks, and a disk that fills during a save) is in
tests/test_bad_commands.py.

One trained digits run (tests/trained_digits.py) is copied once and shared;
md4.sample cases restore it once (`run_lib.restore` is memoised here)
unless the restore itself is what they test.
"""

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any, Callable

import jax
import numpy as np
from PIL import Image
import file_trees
import pytest
import trained_digits

from md4 import checkpointing
from md4 import config_recipes
from md4 import error_boundary
from md4 import evaluate
from md4 import main
from md4 import run as run_lib
from md4 import sample as sample_command
from md4 import sample_writing
from md4 import train
from md4 import workdir_lock
from md4.sampling import known_tokens
from md4.sampling import core

pytestmark = pytest.mark.slow

ROOT = trained_digits.ROOT
DIGITS = os.path.join(ROOT, "configs", "md4", "digits.py")
MAX_LINES = 10


def _load_prepare_script():
  spec = importlib.util.spec_from_file_location(
      "prepare_openwebtext_data",
      os.path.join(ROOT, "prepare_openwebtext_data.py"),
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


prepare_script = _load_prepare_script()


@dataclasses.dataclass
class Env:
  """What the cases share: the trained workdir (a copy), a data dir."""

  workdir: str
  data: str
  tmp: str = ""  # The case's own directory, made fresh for each case.


def tree_hashes(*paths):
  """Full path -> sha256 of every file below each of `paths`."""
  return {
      os.path.join(path, name): digest
      for path in paths
      for name, digest in file_trees.tree_hashes(path).items()
  }


def tiny():
  return trained_digits.digits_config()


def run_main(mutate=None, workdir=None):
  """main.run (training) on a mutated digits:tiny config."""

  def call(env):
    config = tiny()
    if mutate:
      mutate(config, env)
    return main.run(config, workdir(env) if workdir else env.workdir)

  return call


set_fields = file_trees.set_fields


def in_tmp(name):
  return lambda env: os.path.join(env.tmp, name)


# ------------------------------------------------- main.py: arguments --


def config_arguments(*args, config=DIGITS + ":tiny"):
  def call(env):
    argv = [
        "main.py",
        f"--config={config(env) if callable(config) else config}",
        f"--workdir={env.tmp}/run",
        *args,
    ]
    error_boundary.check_call(main.check_config_arguments, argv)

  return call


def config_file(text):
  """A config file of the given text in the case's directory."""

  def path(env):
    file = os.path.join(env.tmp, "my_config.py")
    with open(file, "w") as f:
      f.write(textwrap.dedent(text))
    return file

  return path


# ----------------------------------------------------------- data ------


def text_network(config):
  """The text8:tiny network, for text data in a digits config."""
  config.network = config_recipes.load_file(
      os.path.join(ROOT, "configs", "md4", "text8.py"), "tiny"
  ).network


def tokens_data(config, env):
  config.data.dataset = "tokens"
  config.data.path = os.path.join(env.data, "tokens")
  config.data.data_shape = (16,)
  config.data.vocab_size = 50
  text_network(config)


def eval_of_bad_tokens(env):
  """train.evaluate over the tokens split with a token beyond the vocab."""
  config = tiny()
  tokens_data(config, env)
  setup = run_lib.build(config, env.tmp, writable=False)
  never = lambda *unused: pytest.fail("evaluated a batch with bad tokens")
  error_boundary.check_call(train.evaluate, setup, never, None, 0)


def md4_evaluate_of_bad_tokens(env):
  config = tiny()
  tokens_data(config, env)
  setup = run_lib.build(config, env.tmp, writable=False)
  run = run_lib.RestoredRun(env.tmp, config, setup, None, 0)
  error_boundary.check_call(
      evaluate.negative_elbo, run, "valid", progress=False
  )


def text_chars(text, **fields):
  def mutate(config, env):
    path = os.path.join(env.data, "chars", text)
    config.data.dataset = "text_chars"
    config.data.data_dir = env.data
    config.data.path = path
    config.data.data_shape = (16,)
    config.data.vocab_size = fields.get("vocab_size", 3)
    text_network(config)

  return mutate


# --------------------------------------------------------- md4.sample --


def sample(workdir=None, **fields):
  """md4.sample's logic with the given flags; callables get the Env."""

  def call(env):
    given = {"num_samples": 2, "batch_size": 2, "steps": 2, **fields}
    given = {k: v(env) if callable(v) else v for k, v in given.items()}
    request = sample_command.Request(
        workdir=workdir(env) if workdir else env.workdir, **given
    )
    error_boundary.check_call(sample_command.sample_to_files, request)

  return call


def mask_png(size, valid=True):
  def path(env):
    file = os.path.join(env.tmp, "mask.png")
    if valid:
      Image.fromarray(np.full(size, 255, np.uint8)).save(file)
    else:
      with open(file, "w") as f:
        f.write("not a png")
    return file

  return path


def empty_workdir(env):
  os.makedirs(os.path.join(env.tmp, "empty"))
  return os.path.join(env.tmp, "empty")


def config_only(env):
  directory = os.path.join(env.tmp, "config_only")
  os.makedirs(directory)
  shutil.copy(os.path.join(env.workdir, run_lib.CONFIG_FILE), directory)
  return directory


def damaged_copy(env):
  """The trained run with step 6's arrays swapped for step 3's on disk."""
  directory = os.path.join(env.tmp, "damaged")
  shutil.copytree(env.workdir, directory)
  checkpoints = os.path.join(directory, "checkpoints")
  shutil.rmtree(os.path.join(checkpoints, "6", "state"))
  shutil.copytree(
      os.path.join(checkpoints, "3", "state"),
      os.path.join(checkpoints, "6", "state"),
  )
  return directory


# -------------------------------------------------------- other cases --


def live_lock(env):
  """main.run while another process holds the workdir's lock."""
  code = (
      f"import sys, time; sys.path.insert(0, {ROOT!r}); "
      "from md4 import workdir_lock; "
      f"workdir_lock.WorkdirLock({env.workdir!r}).acquire(); "
      "print('locked', flush=True); time.sleep(120)"
  )
  holder = subprocess.Popen(
      [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    main.run(tiny(), env.workdir)
  finally:
    holder.kill()
    holder.wait()
    os.remove(workdir_lock.lock_path(env.workdir))  # Left by the kill.


def restore_from_other_shape(config, env):
  config.network.ch = 8
  config.restore_from = env.workdir


def prepare(*args):
  def call(env):
    given = args[0](env) if callable(args[0]) else list(args)
    prepare_script.main(
        [f"--data_dir={env.data}/prepared", "--num_proc=1", *given]
    )

  return call


def corpus_without_files(env):
  os.makedirs(os.path.join(env.tmp, "corpus"))
  with open(os.path.join(env.tmp, "corpus", "README"), "w") as f:
    f.write("no corpus here")
  return [f"--input={env.tmp}/corpus"]


def nan_state_not_saved(env):
  """checkpointing.save of a NaN state (config.train.check_nans=False)."""
  workdir = os.path.join(env.tmp, "run")
  shutil.copytree(env.workdir, workdir)
  before = tree_hashes(workdir)
  manager = checkpointing.make_manager(workdir, 2, 0)
  state = {"params": {"w": jax.numpy.full((3,), np.nan)}}
  try:
    error_boundary.check_call(checkpointing.save, manager, 9, state, None)
  finally:
    manager.close()
    assert tree_hashes(workdir) == before  # Step 3 is not rotated out.


def leaves_no_workdir(call):
  """The call, then a check that the workdir it was given is not left."""

  def checked(env):
    try:
      return call(env)
    finally:
      assert not os.path.exists(os.path.join(env.tmp, "run")), os.listdir(
          os.path.join(env.tmp, "run")
      )

  return checked


# What TensorFlow and XLA print at start-up unless the command quiets them.
NATIVE_BANNERS = (
    "oneDNN custom operations",
    "absl::InitializeLog",
    "cpu_feature_guard",
    "This TensorFlow binary",
)


@dataclasses.dataclass(frozen=True)
class Case:
  call: Callable[[Env], Any]
  fix: str  # How the message ends.
  code: int = 1


CASES = {
    # main.py: the command line and the config file.
    "misspelt field": Case(
        config_arguments("--config.train.num_step=4"),
        "Did you mean --config.train.num_steps?",
    ),
    "misspelt section": Case(
        config_arguments("--config.trian.num_steps=4"),
        "Did you mean --config.train?",
    ),
    "field below a value": Case(
        config_arguments("--config.seed.x=1"),
        "config.seed is a value, not a section.",
    ),
    "config file missing": Case(
        config_arguments(config="nope/digits.py"), "e.g. configs/md4/digits.py."
    ),
    "unknown variant": Case(
        config_arguments(config=DIGITS + ":huge"), "valid: default, tiny."
    ),
    "config syntax error": Case(
        config_arguments(config=config_file("def get_config(:\n")),
        "is not valid Python (invalid syntax); fix the config file.",
    ),
    "config without get_config": Case(
        config_arguments(config=config_file("X = 1\n")),
        "returns its ConfigDict from get_config.",
    ),
    "get_config raises": Case(
        config_arguments(
            config=config_file(
                "def get_config(arg=None):\n  return {}['model']\n"
            )
        ),
        "my_config.py line 2); fix the config file.",
    ),
    "config import fails": Case(
        config_arguments(config=config_file("import no_such_module\n")),
        "fix the config file.",
    ),
    # main.py: config values.
    "zero checkpoints kept": Case(
        run_main(set_fields(train__keep_checkpoints=0)),
        "it must lie in [1, inf].",
    ),
    "unknown data set": Case(
        run_main(set_fields(data__dataset="nope")), "tokens, text_chars."
    ),
    "unknown network": Case(
        run_main(set_fields(network__name="nope")),
        "valid: transformer, unet, uvit.",
    ),
    "unknown schedule": Case(
        run_main(set_fields(model__md4__schedule="cosinee")),
        "polyK (e.g. poly3, poly0.5).",
    ),
    # main.py: the workdir and its run.
    "model shape changed": Case(
        run_main(set_fields(network__ch=8)),
        "(possible only where the parameter shapes stay the same).",
    ),
    "allowed shape change": Case(
        run_main(set_fields(network__ch=8, allow_config_change=True)),
        "The checkpoints are intact; nothing was changed.",
    ),
    "restore_from another shape": Case(
        run_main(restore_from_other_shape, in_tmp("run")),
        "or restore from a run of this shape.",
    ),
    "restore_from nothing": Case(
        run_main(
            lambda c, env: setattr(c, "restore_from", env.tmp), in_tmp("run")
        ),
        "or one of its checkpoints/<step> directories.",
    ),
    "workdir is a file": Case(
        run_main(
            workdir=lambda env: os.path.join(env.workdir, "config.json", "run")
        ),
        "choose a directory you can write to.",
    ),
    "disk too small": Case(
        run_main(set_fields(network__ch=1 << 17), in_tmp("run")),
        "or choose a --workdir on a larger disk.",
    ),
    "workdir in use": Case(live_lock, "or choose another --workdir."),
    "num_steps below the saved step": Case(
        run_main(set_fields(train__num_steps=4)),
        "Raise config.train.num_steps to train further.",
        code=0,
    ),
    "error after the workdir probe": Case(
        leaves_no_workdir(
            run_main(set_fields(data__data_shape=(9, 9, 1)), in_tmp("run"))
        ),
        "set data_config.data_shape = (8, 8, 1).",
    ),
    "NaN state with check_nans=False": Case(
        nan_state_not_saved, "or check the data, then rerun."
    ),
    # Data.
    "eval split token beyond vocab": Case(
        eval_of_bad_tokens, "if the ids are right."
    ),
    "md4.evaluate token beyond vocab": Case(
        md4_evaluate_of_bad_tokens, "if the ids are right."
    ),
    "empty text file": Case(
        run_main(text_chars("empty.txt"), in_tmp("run")),
        "or set data_config.path to another file.",
    ),
    "text grew new characters": Case(
        run_main(text_chars("grown.txt"), in_tmp("run")),
        "to rebuild it from the text.",
    ),
    "tokens directory missing": Case(
        run_main(
            lambda c, env: (
                tokens_data(c, env),
                setattr(c.data, "path", os.path.join(env.tmp, "none")),
            ),
            in_tmp("run"),
        ),
        "to their directory.",
    ),
    # md4.sample.
    "sample: empty workdir": Case(
        sample(empty_workdir), "Give the workdir of a training run."
    ),
    "sample: no checkpoint": Case(
        sample(config_only), "train first (md4/main.py)."
    ),
    "sample: step not saved": Case(sample(step=5), "saved steps: 3, 6."),
    "sample: prompt on images": Case(sample(prompt="the"), "use --inpaint."),
    "sample: two conditions": Case(
        sample(prompt="a", inpaint="top"), "got --prompt, --inpaint."
    ),
    "sample: unknown region": Case(
        sample(inpaint="middle"), "nor a .png file."
    ),
    "sample: mask not an image": Case(
        sample(inpaint=mask_png((8, 8), valid=False)),
        "or a region (top, bottom, left, right, center, border).",
    ),
    "sample: mask of another shape": Case(
        sample(inpaint=mask_png((8, 20))),
        "give a mask of that size (or a multiple of it).",
    ),
    "sample: unknown inpaint split": Case(
        sample(inpaint="top", inpaint_split="valid"), "valid: train, test."
    ),
    "sample: zero steps": Case(
        sample(steps=0), "or drop --steps for config.train.sample_steps."
    ),
    "sample: stop at end of text on images": Case(
        sample(stop_at_eos=True), "drop --stop_at_eos."
    ),
    "sample: blocks on images": Case(sample(blocks=2), "drop --blocks."),
    "sample: label of an unconditional model": Case(
        sample(label=3), "drop --label."
    ),
    "sample: misspelt override": Case(
        sample(overrides=("data.data_dri=/x",)), "Did you mean 'data.data_dir'?"
    ),
    "sample: override without a value": Case(
        sample(overrides=("data.data_dir",)), "e.g. data.data_dir=/data."
    ),
    "sample: output under a file": Case(
        sample(
            output_dir=lambda env: os.path.join(
                env.workdir, "config.json", "out"
            )
        ),
        "(a run's workdir may be read-only).",
    ),
    "sample: damaged checkpoint": Case(
        sample(damaged_copy), "or restore the files from a copy."
    ),
    # md4.evaluate.
    "evaluate: unknown split": Case(
        lambda env: error_boundary.check_call(
            evaluate.negative_elbo,
            run_lib.restore(env.workdir),
            "valid",
            progress=False,
        ),
        "valid: test.",
    ),
    "evaluate: zero time samples": Case(
        lambda env: error_boundary.check_call(
            evaluate.negative_elbo,
            run_lib.restore(env.workdir),
            "test",
            num_time_samples=0,
            progress=False,
        ),
        "give --num_time_samples >= 1 and --num_examples >= 0.",
    ),
    "evaluate: output under a file": Case(
        lambda env: error_boundary.check_call(
            sample_writing.check_output_dir,
            os.path.join(env.workdir, "config.json"),
            "--output",
        ),
        "(a run's workdir may be read-only).",
    ),
    "prompt longer than the sequence": Case(
        lambda env: error_boundary.check_call(
            known_tokens.text_known,
            "abcdefghi",
            lambda t: np.zeros(len(t), np.int32),
            8,
            1,
        ),
        "(config.data.data_shape); shorten it.",
    ),
    "prompt token beyond vocab": Case(
        lambda env: error_boundary.check_call(
            known_tokens.check_known_tokens,
            core.Known(np.ones((1, 4), bool), np.full((1, 4), 99)),
            17,
            "--prompt='99'",
        ),
        "give only ids the run was trained on.",
    ),
    # prepare_openwebtext_data.py.
    "prepare: input missing": Case(
        prepare(lambda env: [f"--input={env.tmp}/nope"]),
        "give the directory or file of the corpus.",
    ),
    "prepare: input without corpus": Case(
        prepare(corpus_without_files), ".txt.gz, .jsonl.gz."
    ),
    "prepare: zero seq_len": Case(
        prepare("--seq_len=0"), "run with --help to list the flags."
    ),
    "prepare: unknown flag": Case(
        prepare("--sequence_length=8"), "run with --help to list the flags."
    ),
    "prepare: eval fraction of 1": Case(
        prepare("--eval_fraction=1"), "run with --help to list the flags."
    ),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  trained, _ = trained_digits.trained_run()
  root = tmp_path_factory.mktemp("bad_inputs")
  workdir = str(root / "run")
  shutil.copytree(trained, workdir)
  data = root / "data"
  tokens = data / "tokens"
  tokens.mkdir(parents=True)
  np.save(tokens / "train.npy", np.zeros((8, 16), np.int32))
  valid = np.zeros((40, 16), np.int32)
  valid[13, 7] = 77  # Beyond vocab_size 50, in a row the sample check skips.
  np.save(tokens / "valid.npy", valid)
  chars = data / "chars"
  chars.mkdir()
  (chars / "empty.txt").write_text("")
  (chars / "grown.txt").write_text("abcab" * 100 + "xyz")
  (chars / "grown.txt.vocab.json").write_text('{"characters": ["a","b","c"]}')
  # md4.sample restores the shared run once.
  real_restore = run_lib.restore
  cache = {}

  def restore(workdir, step=None, overrides=()):
    key = (workdir, step, tuple(overrides))
    if workdir != str(root / "run"):
      return real_restore(workdir, step, overrides)
    if key not in cache:
      cache[key] = real_restore(workdir, step, overrides)
    return cache[key]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(run_lib, "restore", restore)
    yield Env(workdir, str(data))


def _outcome(result, capsys) -> tuple[int, str]:
  """(exit status, everything printed) of a case's call."""
  if isinstance(result, subprocess.CompletedProcess):
    return result.returncode, result.stdout + result.stderr
  captured = capsys.readouterr()
  return result[0], captured.out + captured.err + result[1]


def check_case(case, env, tmp_path, capsys) -> str:
  """Runs a case; asserts its status, message and that nothing changed.

  Returns everything the case printed.
  """
  env = dataclasses.replace(env, tmp=str(tmp_path))
  before = tree_hashes(env.workdir, env.data)
  try:
    called = case.call(env)
    result = (
        called
        if isinstance(called, subprocess.CompletedProcess)
        else (0, called or "")
    )
  except SystemExit as e:
    result = (
        1 if isinstance(e.code, str) else e.code,
        e.code if isinstance(e.code, str) else "",
    )
  code, output = _outcome(result, capsys)
  output = output.strip()
  assert code == case.code, output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  assert not [b for b in NATIVE_BANNERS if b in output], output[-3000:]
  message = output[output.rfind("md4 error: ") :] if case.code else output
  assert 0 < len(message.splitlines()) <= MAX_LINES, output[-3000:]
  assert message.endswith(case.fix), message
  after = tree_hashes(env.workdir, env.data)
  assert {p: h for p, h in after.items() if p in before} == before
  if case.code:
    assert set(after) == set(before), set(after) ^ set(before)
  return output


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_error_and_changes_nothing(
    name, env, tmp_path, capsys
):
  check_case(CASES[name], env, tmp_path, capsys)


def test_there_are_at_least_forty_cases():
  assert len(CASES) >= 40  # And the commands' own, in test_bad_commands.py.


def test_verbosity_1_prints_the_traceback_above_the_message(capsys):
  def fail():
    raise ValueError("config.x is wrong; set it right.")

  with pytest.raises(SystemExit) as exit_info:
    error_boundary.check_call(fail, argv=["cmd", "--verbosity=1"])
  assert exit_info.value.code == "md4 error: config.x is wrong; set it right."
  err = capsys.readouterr().err
  assert err.startswith("Traceback") and "in fail" in err
  with pytest.raises(SystemExit):
    error_boundary.check_call(fail, argv=["cmd"])
  assert not capsys.readouterr().err


def test_an_internal_error_keeps_its_traceback():
  with pytest.raises(ZeroDivisionError):
    error_boundary.check_call(lambda: 1 / 0, argv=["cmd"])
  with pytest.raises(KeyError):
    error_boundary.check_call(lambda: {}["x"], argv=["cmd"])


def test_a_read_only_run_samples_into_an_output_dir_elsewhere(
    env, tmp_path, monkeypatch
):
  archived = str(tmp_path / "archived")
  shutil.copytree(env.workdir, archived)
  before = tree_hashes(archived)

  def read_only(workdir):
    raise ValueError(
        f"--workdir={workdir!r} is not writable (Read-only file system)"
    )

  monkeypatch.setattr(run_lib, "check_workdir", read_only)
  out = str(tmp_path / "out")
  summary = sample_command.sample_to_files(
      sample_command.Request(
          archived, output_dir=out, num_samples=2, batch_size=2, steps=2
      )
  )
  assert os.path.exists(os.path.join(out, "samples.png"))
  assert summary["checkpoint_step"] == 6
  assert tree_hashes(archived) == before  # Nothing added or changed.


def test_free_space_is_wanted_for_keep_checkpoints_plus_one(env, tmp_path):
  state = {"w": jax.ShapeDtypeStruct((1024,), np.float32)}  # 4 KiB.
  assert run_lib.disk_space_needed(str(tmp_path), state, 3) == (4, 4 * 4096)
  # The shared run holds 2 checkpoints already: 2 more at most at once.
  assert run_lib.disk_space_needed(env.workdir, state, 3) == (2, 2 * 4096)


def test_the_summary_says_how_many_steps_were_discarded():
  config = tiny()
  config.train.max_bad_steps = 100
  summary = main.summarize(
      {
          "preempted": False,
          "step": 6,
          "trained_steps": 6,
          "bad_steps": 4,
          "eval": {},
          "set_aside": [],
          "tensorboard": "w",
          "checkpoints": "w/checkpoints",
      },
      config,
  )
  assert (
      "  non-finite:  4 of 6 steps had NaN/Inf and were discarded "
      "(config.train.max_bad_steps=100)"
  ) in summary
