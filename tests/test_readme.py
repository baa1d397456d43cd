"""The README's commands use only flags, config fields and files that exist."""

import ast
import os
import re

import pytest

from md4 import config_files
from md4 import config_recipes
from md4 import configuration
from md4 import networks
from md4 import sampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Command -> the file whose flags it takes.
PROGRAMS = {
    "md4-train": "md4/main.py",
    "md4-sample": "md4/sample.py",
    "md4-evaluate": "md4/evaluate.py",
    "md4-judge": "md4/judge.py",
    "md4-prepare-openwebtext": "prepare_openwebtext_data.py",
}
_ALIASES = (
    (r"python md4/main\.py|python -m md4\.main|md4-train", "md4-train"),
    (r"python -m md4\.sample|md4-sample", "md4-sample"),
    (r"python -m md4\.evaluate|md4-evaluate", "md4-evaluate"),
    (r"python -m md4\.judge|md4-judge", "md4-judge"),
    (
        r"python prepare_openwebtext_data\.py|md4-prepare-openwebtext",
        "md4-prepare-openwebtext",
    ),
)
# absl's own flags (logging, help), accepted by every absl program.
ABSL_FLAGS = (
    "verbosity",
    "v",
    "help",
    "helpfull",
    "helpshort",
    "helpxml",
    "flagfile",
    "undefok",
    "logtostderr",
    "alsologtostderr",
    "log_dir",
    "stderrthreshold",
    "only_check_args",
    "pdb",
    "pdb_post_mortem",
    "run_with_pdb",
    "run_with_profiling",
    "logger_levels",
)


def read(name):
  with open(os.path.join(ROOT, name)) as f:
    return f.read()


def code_lines(text: str) -> list[list[str]]:
  """Each indented code block as its lines, continuations (`\\`) joined."""
  blocks, block, previous_blank = [], None, True
  for line in text.splitlines():
    if line.startswith("    ") and (block is not None or previous_blank):
      if block is None:
        block = []
        blocks.append(block)
      content = line[4:]
      if block and block[-1].endswith("\\"):
        block[-1] = block[-1][:-1] + " " + content.strip()
      else:
        block.append(content)
    elif line.strip():
      block = None
    previous_blank = not line.strip()
  return blocks


def commands(text: str) -> list[tuple[str, str]]:
  """(program, its arguments) for every md4 command in the code blocks.

  A line starting with `...` continues the block's previous command.
  """
  pattern = "|".join(f"(?:{a})" for a, _ in _ALIASES)
  found = []
  for block in code_lines(text):
    last = None
    for line in block:
      line = re.sub(r"\s+#.*$", "", line)
      if line.lstrip().startswith("...") and last:
        found.append((last, line.lstrip()[3:]))
        continue
      for match in re.finditer(pattern, line):
        program = next(
            p for a, p in _ALIASES if re.fullmatch(a, match.group(0))
        )
        found.append((program, line[match.end() :]))
        last = program
  return found


def defined_flags(path: str) -> set[str]:
  """Names passed to flags.DEFINE_* / DEFINE_config_file / add_argument."""
  names = set()
  for node in ast.walk(ast.parse(read(path))):
    if not (
        isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
      continue
    func = node.func
    name = getattr(func, "attr", getattr(func, "id", ""))
    if name.startswith("DEFINE_"):
      names.add(node.args[0].value)
    elif name == "add_argument" and node.args[0].value.startswith("--"):
      names.add(node.args[0].value[2:])
  if path.endswith(os.path.join("md4", "sample.py")):
    # The samplers' own settings: flags made from md4.sampling's registry.
    names |= set(sampling.own_settings())
  return names


def config_field_exists(dotted: str) -> bool:
  node = configuration.default_config()
  *sections, field = dotted.split(".")
  if sections == ["network"]:
    fields = set(node.network.keys())
    for name in networks.NETWORKS:
      fields |= set(networks.network_fields(name))
    return field in fields
  for section in sections:
    if section not in node:
      return False
    node = node[section]
  return field in node


README_COMMANDS = commands(read("README.md"))


def test_the_readme_has_commands_of_every_program():
  assert {p for p, _ in README_COMMANDS} == set(PROGRAMS)


@pytest.mark.parametrize("program, args", README_COMMANDS)
def test_readme_command_uses_existing_flags_and_config_fields(program, args):
  flags = defined_flags(PROGRAMS[program]) | set(ABSL_FLAGS)
  for match in re.finditer(r"(?:^|\s|\")--([A-Za-z_][\w.]*)(=(\S+))?", args):
    name, value = match.group(1), match.group(3)
    if name.startswith("config."):
      assert config_field_exists(name[len("config.") :]), (name, args)
      continue
    assert name in flags, (program, name, args)
    if name == "override":
      assert config_field_exists(value.split("=")[0]), (value, args)
    if name == "config" and program == "md4-train":
      path, _, variant = config_files.resolve(
          os.path.join(ROOT, value.strip("\"'"))
      ).partition(":")
      assert os.path.exists(path), value
      config_recipes.load_file(path, variant or None)


def test_quickstart_commands_are_make_targets_and_ci_runs_the_test_command():
  readme = read("README.md")
  quickstart = readme[readme.index("## Quickstart") :]
  quickstart = quickstart[: quickstart.index("\n## ", 3)]
  targets = re.findall(r"^    make (\w+)", quickstart, re.M)
  assert targets == ["demo", "test"]
  makefile = read("Makefile")
  for target in targets:
    assert re.search(rf"^{target}:", makefile, re.M), target
  tests = readme[readme.index("## Tests") :]
  test_command = code_lines(tests)[0][0]
  assert test_command == 'python -m pytest -q -m "" tests'
  assert test_command in read(".ci/run")
  assert test_command in makefile


def test_table_of_contents_links_name_headings():
  readme = read("README.md")
  anchors = {
      re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
      for h in re.findall(r"^#+ (.*)$", readme, re.M)
  }
  links = re.findall(r"\]\(#([\w\-]+)\)", readme)
  assert links and set(links) <= anchors, set(links) - anchors


def _between(text: str, name: str) -> str:
  start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
  assert start in text and end in text, name
  return text[text.index(start) + len(start) : text.index(end)]


def test_readme_field_table_is_the_one_the_declarations_generate():
  """python -c 'from md4 import configuration; print(configuration.field_table())'
  prints the table to paste between the README's markers."""
  assert _between(read("README.md"), "fields") == (configuration.field_table())


def test_readme_sampler_table_is_the_one_the_registry_generates():
  assert _between(read("README.md"), "samplers") == (
      sampling.markdown_table() + "\n"
  )
