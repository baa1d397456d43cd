"""One declaration per config field: default, type, range or choices, doc.

`md4.configuration` declares the fields of every closed section, each
process (`md4.diffusion`) the fields of its own section `model.<process>`.
From these declarations come `default_config()`, the validation of types,
ranges and choices, the check that a field the run would ignore was left at
its default, and the README's field table (`markdown_table`).
"""

from collections.abc import Callable, Iterable, Sequence
import dataclasses
import difflib
import math
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Field:
  """A config field.

  Attributes:
    name: dotted path from the config's root, e.g. "train.batch_size".
    default: the value when a config file does not set it; its type is the
      field's type (bool, int, float - ints accepted -, str, tuple).
    doc: one line: what it means, in the README's table.
    low, high: bounds of a number, inclusive unless low_open / high_open.
    choices: valid values of a string, or a function returning them (for
      registries filled at import time).
    ignored_unless: `reason = ignored_unless(config)`: None when the run
      reads the field, else why not and what to set instead; a field the
      run ignores must keep its default.
  """

  name: str
  default: Any
  doc: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
  ignored_unless: Callable[[ml_collections.ConfigDict], str | None] | None = (
      None
  )

  @property
  def valid_choices(self) -> tuple[str, ...] | None:
    if self.choices is None:
      return None
    return tuple(self.choices() if callable(self.choices) else self.choices)

  def check(self, value) -> None:
    """Raises ValueError naming the field, its value and what is valid."""
    where = f"config.{self.name}"
    default = self.default
    if isinstance(default, bool):
      if not isinstance(value, bool):
        raise ValueError(f"{where} must be True or False, got {value!r}.")
      return
    if isinstance(default, (int, float)):
      kind = int if isinstance(default, int) else (int, float)
      if isinstance(value, bool) or not isinstance(value, kind):
        wanted = "an integer" if kind is int else "a number"
        raise ValueError(
            f"{where} must be {wanted}, got {value!r} ({type(value).__name__})."
        )
      if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value!r}.")
      self._check_bounds(value)
      return
    if isinstance(default, str):
      if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}.")
      valid = self.valid_choices
      if valid is not None and value not in valid:
        raise ValueError(
            f"{where}={value!r} is not valid; valid: {', '.join(valid)}."
            + did_you_mean(value, valid)
        )
      return
    if isinstance(default, tuple) and not isinstance(value, (tuple, list)):
      raise ValueError(f"{where} must be a tuple, got {value!r}.")

  def _check_bounds(self, value) -> None:
    low_ok = self.low is None or (
        value > self.low if self.low_open else value >= self.low
    )
    high_ok = self.high is None or (
        value < self.high if self.high_open else value <= self.high
    )
    if not (low_ok and high_ok):
      raise ValueError(
          f"config.{self.name}={value!r} is out of range; it "
          f"must lie in {self.range_text()}."
      )

  def range_text(self) -> str:
    """The valid values, as the README's table and the errors show them."""
    valid = self.valid_choices
    if valid is not None:
      return ", ".join(v if v else "'' (empty)" for v in valid)
    if self.low is None and self.high is None:
      return ""
    left = "(" if self.low_open else "["
    right = ")" if self.high_open else "]"
    low = "-inf" if self.low is None else f"{self.low:g}"
    high = "inf" if self.high is None else f"{self.high:g}"
    return f"{left}{low}, {high}{right}"


def get(config: ml_collections.ConfigDict, name: str):
  """The value at a dotted path."""
  value = config
  for part in name.split("."):
    value = value[part]
  return value


def set_value(config: ml_collections.ConfigDict, name: str, value) -> None:
  """Sets the value at a dotted path."""
  *sections, key = name.split(".")
  node = config
  for part in sections:
    node = node[part]
  node[key] = value


def build(declared: Iterable[Field]) -> ml_collections.ConfigDict:
  """A ConfigDict holding every declared field's default."""
  config = ml_collections.ConfigDict()
  for field in declared:
    *sections, key = field.name.split(".")
    node = config
    for section in sections:
      if section not in node:
        node[section] = ml_collections.ConfigDict()
      node = node[section]
    node[key] = field.default
  return config


def did_you_mean(word: str, valid: Iterable[str], spell: str = "{!r}") -> str:
  """ " Did you mean X?" for the valid name nearest to `word`, or "".

  The one spelling suggestion of md4's messages (misspelt fields, flags,
  choices, network fields, overrides); `spell` formats the name.
  """
  near = difflib.get_close_matches(word, list(valid), n=1)
  return f" Did you mean {spell.format(near[0])}?" if near else ""


def unknown_key_error(
    key: str,
    valid: Iterable[str],
    where: str,
) -> ValueError:
  """ "<where>.<key> is not a known field. Did you mean ...?" - the
  message for a misspelt key in a config file."""
  valid = sorted(valid)
  hint = did_you_mean(key, valid, spell=where + ".{}")
  return ValueError(
      f"{where}.{key} is not a known field.{hint} Valid fields: "
      f"{', '.join(valid)}."
  )


def check_keys(
    given: ml_collections.ConfigDict,
    reference: ml_collections.ConfigDict,
    where: str,
    open_sections: Sequence[str] = (),
) -> None:
  """Rejects keys of `given` missing from `reference`, recursively.

  Sections named in `open_sections` (paths from the root) are not entered.
  """
  for key in given.keys():
    if key not in reference:
      raise unknown_key_error(key, reference.keys(), where)
    path = f"{where}.{key}"
    if (
        isinstance(reference[key], ml_collections.ConfigDict)
        and path.removeprefix("config.") not in open_sections
    ):
      if not isinstance(given[key], ml_collections.ConfigDict):
        raise ValueError(
            f"{path} is a section of fields, got "
            f"{given[key]!r}; set its fields, e.g. "
            f"{path}.<field>=value."
        )
      check_keys(given[key], reference[key], path, open_sections)


def check_values(
    config: ml_collections.ConfigDict, declared: Iterable[Field]
) -> None:
  """Types, ranges and choices, then fields the run ignores."""
  declared = tuple(declared)
  for field in declared:
    field.check(get(config, field.name))
  for field in declared:
    if field.ignored_unless is None:
      continue
    value = get(config, field.name)
    if same(value, field.default):
      continue
    reason = field.ignored_unless(config)
    if reason:
      raise ValueError(
          f"config.{field.name}={value!r} is ignored: {reason} "
          f"Remove it (or set it back to {field.default!r})."
      )


def same(a, b) -> bool:
  """Equal as config values (tuples and lists alike; 1 == 1.0)."""
  if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
    return tuple(a) == tuple(b)
  return (
      type(a) is type(b)
      and a == b
      or (
          isinstance(a, (int, float))
          and not isinstance(a, bool)
          and isinstance(b, float)
          and a == b
      )
  )


def markdown_table(declared: Iterable[Field]) -> str:
  """The README's table: field, default, valid values, meaning."""
  rows = ["| field | default | valid | meaning |", "|---|---|---|---|"]
  for field in declared:
    valid = field.range_text().replace("|", "\\|")
    doc = field.doc.replace("|", "\\|")
    rows.append(f"| `{field.name}` | `{field.default!r}` | {valid} | {doc} |")
  return "\n".join(rows) + "\n"
