"""pyproject.toml: the package, its dependencies and its md4-* commands."""

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
import tomllib
import venv

import pytest

from md4 import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = (
    "md4-train",
    "md4-sample",
    "md4-evaluate",
    "md4-judge",
    "md4-prepare-openwebtext",
)


def pyproject():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def requirement_lines(name):
  with open(os.path.join(ROOT, name)) as f:
    return [
        line.strip()
        for line in f
        if line.strip() and not line.startswith(("#", "-r"))
    ]


def module_file(module: str) -> str:
  return os.path.join(ROOT, *module.split(".")) + ".py"


def test_dependencies_are_the_pinned_common_requirements_and_jax():
  project = pyproject()["project"]
  jax = [d for d in project["dependencies"] if re.match(r"jax\b", d)]
  rest = [d for d in project["dependencies"] if d not in jax]
  assert rest == requirement_lines("requirements_common.txt")
  pinned_jax = [
      r for r in requirement_lines("requirements.txt") if r.startswith("jax==")
  ]
  assert jax == ["jax>=0.10.2,<0.12"] and pinned_jax == ["jax==0.10.2"]
  for extra, file in (
      ("gpu", "requirements_gpu.txt"),
      ("tpu", "requirements_tpu.txt"),
  ):
    assert project["optional-dependencies"][extra] == requirement_lines(file)
  assert project["requires-python"] == ">=3.11"


def test_each_command_names_a_function_its_module_defines():
  scripts = pyproject()["project"]["scripts"]
  assert sorted(scripts) == sorted(COMMANDS)
  for target in scripts.values():
    module, function = target.split(":")
    with open(module_file(module)) as f:
      tree = ast.parse(f.read())
    names = [
        node.name for node in tree.body if isinstance(node, ast.FunctionDef)
    ]
    assert function in names, target


def test_every_package_and_config_directory_is_installed():
  setuptools = pyproject()["tool"]["setuptools"]
  packages = set(setuptools["packages"])
  assert setuptools["package-dir"] == {"md4.configs": "configs"}
  for directory, _, files in os.walk(os.path.join(ROOT, "md4")):
    if "__init__.py" in files:
      relative = os.path.relpath(directory, ROOT)
      assert relative.replace(os.sep, ".") in packages, relative
  for directory, _, files in os.walk(os.path.join(ROOT, "configs")):
    if any(f.endswith(".py") for f in files) or directory.endswith("configs"):
      relative = os.path.relpath(directory, os.path.join(ROOT, "configs"))
      name = "md4.configs" + (
          "" if relative == "." else "." + relative.replace(os.sep, ".")
      )
      assert name in packages, directory


def test_shipped_config_names_resolve_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  digits = os.path.join(ROOT, "configs", "md4", "digits.py")
  assert config_files.resolve("configs/md4/digits.py:tiny") == digits + ":tiny"
  assert config_files.resolve("md4/configs/md4/digits.py") == digits
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "mine.py").write_text("")
  assert config_files.resolve("configs/mine.py") == "configs/mine.py"
  assert config_files.resolve_argv(
      ["md4-train", "--config", "configs/md4/digits.py", "--workdir=x"]
  ) == ["md4-train", "--config", digits, "--workdir=x"]


def _can_build_offline() -> bool:
  return all(
      importlib.util.find_spec(m) for m in ("pip", "setuptools", "wheel")
  )


@pytest.mark.skipif(
    not _can_build_offline(),
    reason="needs pip, setuptools and wheel to build offline",
)
@pytest.mark.slow
def test_pip_install_gives_the_commands_and_the_shipped_configs(tmp_path):
  # A copy of the project (the install must not write into the checkout),
  # installed without dependencies into a throwaway venv that sees this
  # environment's packages.
  source = tmp_path / "src"
  shutil.copytree(
      ROOT,
      source,
      ignore=shutil.ignore_patterns(
          ".git",
          ".venv*",
          "__pycache__",
          "*.egg-info",
          "build",
          "expt*",
          "data_dir",
          ".pytest_cache",
          "tests",
          "benchmarks",
      ),
  )
  env_dir = tmp_path / "venv"
  venv.create(env_dir, with_pip=False)
  python = str(env_dir / "bin" / "python")
  purelib = subprocess.run(
      [
          python,
          "-c",
          "import sysconfig; print(sysconfig.get_paths()['purelib'])",
      ],
      capture_output=True,
      text=True,
      check=True,
  ).stdout.strip()
  with open(os.path.join(purelib, "outer.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  install = subprocess.run(
      [
          python,
          "-m",
          "pip",
          "install",
          "--quiet",
          "--no-deps",
          "--no-build-isolation",
          "--no-index",
          str(source),
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert install.returncode == 0, install.stdout + install.stderr
  for command in COMMANDS:
    assert os.access(env_dir / "bin" / command, os.X_OK), command
  # From elsewhere, a shipped config name finds the installed copy.
  found = subprocess.run(
      [
          python,
          "-c",
          (
              "from md4 import config_files; print(config_files."
              "resolve('configs/md4/digits.py:tiny'))"
          ),
      ],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      check=True,
  ).stdout
  assert found.strip() == os.path.join(
      purelib, "md4", "configs", "md4", "digits.py:tiny"
  )
