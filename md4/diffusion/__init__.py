"""The diffusion processes, registered by name (`config.model.process`).

Each process is one module with its math and its `process.Process`
subclass; adding one is that file and one line in `_PROCESSES`.
"""

from md4.diffusion import autoregressive
from md4.diffusion import block_diffusion
from md4.diffusion import d3pm
from md4.diffusion import genmd4
from md4.diffusion import masked
from md4.diffusion import process

_PROCESSES = (
    masked.MD4,
    genmd4.GenMD4,
    d3pm.D3PMProcess,
    autoregressive.Autoregressive,
    block_diffusion.BlockDiffusion,
)
PROCESSES: dict[str, type[process.Process]] = {p.name: p for p in _PROCESSES}
NAMES = tuple(PROCESSES)


def get(name: str) -> type[process.Process]:
  """The process class called `name`, or a ValueError listing them."""
  if name not in PROCESSES:
    raise ValueError(
        f"config.model.process={name!r} is not a process; "
        f"valid: {', '.join(NAMES)}."
    )
  return PROCESSES[name]


def from_config(config) -> process.Process:
  """The process of a full config (its section model.<process>)."""
  cls = get(config.model.process)
  return cls.from_config(
      config.model[cls.name],
      config.data.vocab_size,
      tuple(config.data.data_shape),
  )


def legacy_flat_names() -> tuple[str, ...]:
  """Every old flat model.<key> of a process field (`upgrade_saved`)."""
  return tuple(
      sorted({old for cls in _PROCESSES for old in cls.legacy_names()})
  )
