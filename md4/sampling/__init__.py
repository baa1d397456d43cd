"""The samplers, registered by name (`md4.sample --sampler`).

Every sampler is called as

    result = get(name).draw(reverse, rng, num_samples, settings, known)

with a `core.Reverse` (the denoiser and the process), its own settings (a
dataclass declared in the sampler's file, `core.Settings` or a subclass),
optional `core.Known` tokens, and returns a `core.Result` (samples, network
calls, history frames). A sampler needs capabilities of the process
(`md4.diffusion.process`); `Sampler.reason_not_applicable` says why one does
not apply. `md4.sample` builds its flags from the settings classes listed
here, and rejects a flag that the chosen sampler does not read. Adding a
sampler is its file and one entry in `_SAMPLERS`.
"""

import dataclasses
from collections.abc import Callable

from md4.diffusion import process as process_lib
from md4.sampling import ancestral
from md4.sampling import autoregressive
from md4.sampling import block_diffusion
from md4.sampling import cached
from md4.sampling import confidence
from md4.sampling import core
from md4.sampling import first_hitting
from md4.sampling import remask
from md4.sampling import reverse_chain

_UNMASKING = (process_lib.UNMASKING,)
_VALUE_INDEPENDENT = (process_lib.UNMASKING, process_lib.VALUE_INDEPENDENT)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """One registered sampler.

  Attributes:
    name: its `--sampler` name.
    draw: `(reverse, rng, num_samples, settings, known) -> core.Result`.
    settings: its settings dataclass (`core.BaseSettings` or a subclass).
    requires: the process capabilities it needs.
    summary: one line for the README's table.
    exact: "yes", "T-step" (exact for its grid) or "no".
    known_tokens: it can keep given tokens (prompts, infilling, inpainting).
  """

  name: str
  draw: Callable[..., core.Result]
  settings: type[core.BaseSettings]
  requires: tuple[str, ...]
  summary: str
  exact: str
  known_tokens: bool = True

  @property
  def setting_names(self) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(self.settings))

  def make_settings(self, **values) -> core.BaseSettings:
    """Its settings from the values of the fields it has (others dropped)."""
    return self.settings(
        **{k: v for k, v in values.items() if k in self.setting_names}
    )

  def reason_not_applicable(self, process) -> str | None:
    """None when the sampler applies to the process, else why not."""
    for capability in self.requires:
      reason = process_lib.reason_missing(
          process,
          capability,
          f"--sampler={self.name}",
          f"Use --sampler={process.default_sampler} (the process's default)"
          f" or one of: {', '.join(names_for(process))}.",
      )
      if reason:
        return reason
    return None


_SAMPLERS = (
    Sampler(
        "ancestral",
        ancestral.sample_ancestral,
        core.Settings,
        _UNMASKING,
        "reverse process on a time grid",
        "T-step",
    ),
    Sampler(
        "topp",
        ancestral.sample_topp,
        ancestral.TopPSettings,
        _UNMASKING,
        "ancestral on the nucleus of mu",
        "no",
    ),
    Sampler(
        "mean",
        ancestral.sample_mean,
        core.Settings,
        _UNMASKING,
        "ancestral drawn in two steps: reveal?, then value",
        "T-step",
    ),
    Sampler(
        "confidence",
        confidence.sample_confidence,
        confidence.ConfidenceSettings,
        _UNMASKING,
        "MaskGIT: reveal the most confident tokens",
        "no",
    ),
    Sampler(
        "remask",
        remask.sample_remask,
        remask.RemaskSettings,
        _VALUE_INDEPENDENT,
        "ReMDM remasking with remask_strength",
        "T-step",
    ),
    Sampler(
        "cached",
        cached.sample_cached,
        core.Settings,
        _VALUE_INDEPENDENT,
        "ancestral, network called only at reveal steps",
        "T-step",
    ),
    Sampler(
        "first_hitting",
        first_hitting.sample_first_hitting,
        core.BaseSettings,
        _VALUE_INDEPENDENT,
        "one token per call at its exact time",
        "yes",
    ),
    Sampler(
        "reverse_chain",
        reverse_chain.sample_reverse_chain,
        core.BaseSettings,
        (process_lib.TRANSITION_CHAIN,),
        "the T-step reverse chain of a transition process (D3PM)",
        "yes",
        known_tokens=False,
    ),
    Sampler(
        "autoregressive",
        autoregressive.sample_autoregressive,
        autoregressive.Settings,
        (process_lib.NEXT_TOKEN,),
        "left to right, one token per call, temperature and top-p",
        "yes at temperature 1, topp 1",
    ),
    Sampler(
        "block",
        block_diffusion.sample_block,
        block_diffusion.BlockSettings,
        (process_lib.BLOCKS,),
        "block diffusion: block by block, KV cache over finished blocks",
        "T-step",
    ),
)
SAMPLERS: dict[str, Sampler] = {s.name: s for s in _SAMPLERS}
NAMES = tuple(SAMPLERS)


def get(name: str) -> Sampler:
  """The sampler called `name`, or a ValueError listing them."""
  if name not in SAMPLERS:
    raise ValueError(
        f"--sampler={name!r} is not a sampler; valid: {', '.join(NAMES)}."
    )
  return SAMPLERS[name]


def names_for(process) -> tuple[str, ...]:
  """The samplers that apply to a process."""
  return tuple(
      s.name
      for s in _SAMPLERS
      if all(c in process.capabilities for c in s.requires)
  )


def own_settings() -> dict[str, dataclasses.Field]:
  """Each sampler-specific setting (not in `core.Settings`), by flag name."""
  common = {f.name for f in dataclasses.fields(core.Settings)}
  found = {}
  for sampler in _SAMPLERS:
    for field in dataclasses.fields(sampler.settings):
      if field.name not in common:
        found.setdefault(core.flag_name(field), field)
  return found


def markdown_table() -> str:
  """The README's table of samplers."""
  common = {f.name for f in dataclasses.fields(core.Settings)}
  rows = [
      "| sampler | what | exact | needs | own settings |",
      "|---|---|---|---|---|",
  ]
  for s in _SAMPLERS:
    own = [
        f"`--{core.flag_name(f)}`"
        for f in dataclasses.fields(s.settings)
        if f.name not in common
    ]
    rows.append(
        f"| `{s.name}` | {s.summary} | {s.exact} | "
        f"{', '.join(s.requires)} | {', '.join(own) or '-'} |"
    )
  return "\n".join(rows)
