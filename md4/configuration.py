"""Every configuration field md4 reads: one declaration each, and validation.

`FIELDS` declares each field once (default, type, range or choices, a
one-line doc; `md4.fields.Field`); each process declares its own section
`model.<process>` in its module (`md4.diffusion`). `default_config()`, the
checks of `validate` and the README's field table (`field_table`) all come
from these declarations. Config files (`configs/<family>/<dataset>.py`)
start from `default_config()` and change what their experiment needs.
`validate` rejects a key that is not declared (naming the nearest valid
one), a value of the wrong type or out of range, and a field the run would
ignore (another process's section, a sampler setting the chosen sampler
does not read) that was changed from its default. Network fields
(`config.network`) are the chosen network's own fields, checked by
`md4.networks`.
"""

import dataclasses

import ml_collections

from md4 import diffusion
from md4 import fields
from md4 import networks
from md4 import sampling
from md4.sampling import core as sampling_core

Field = fields.Field
# `network` is open: its keys are the fields of the network named by
# `network.name`, checked by md4.networks.
_OPEN_SECTIONS = ("network",)


def _process(config):
  return diffusion.get(config.model.process)


def _no_time_draws(config) -> str | None:
  process = _process(config)
  if process.uses_time_draws:
    return None
  return f"config.model.process={process.name!r} draws no times."


def _unconditional(config) -> str | None:
  if config.model.class_conditional:
    return None
  return (
      "the model is not class-conditional "
      "(config.model.class_conditional=False)."
  )


def _sampler_ignores(setting: str):
  """ignored_unless for a train.* field that is a sampler setting."""

  def reason(config) -> str | None:
    sampler = periodic_sampler(config)
    if setting in sampling.get(sampler).setting_names:
      return None
    return (
        f"the periodic samples' sampler {sampler!r} (config.train."
        f"sampler, or the process's default) has no {setting!r} "
        "setting."
    )

  return reason


def periodic_sampler(config) -> str:
  """config.train.sampler, or the process's default sampler when empty."""
  return config.train.sampler or _process(config).default_sampler


def _in_process_section(field: Field, process_name: str) -> Field:
  """A process's field, ignored unless that process is chosen."""

  def reason(config) -> str | None:
    if config.model.process == process_name:
      return None
    return (
        f"config.model.process={config.model.process!r} does not read "
        f"the {process_name} section; set config.model.process="
        f"{process_name!r} to use it."
    )

  return dataclasses.replace(field, ignored_unless=reason)


_BASE_FIELDS = (
    Field(
        "seed",
        0,
        "Seeds parameters, data order, time and mask draws.",
        low=0,
        high=2**32 - 1,
    ),
    Field(
        "restore_from",
        "",
        "Initialise parameters (not the optimizer or step) from another "
        "run's workdir or checkpoint directory; ignored when the workdir "
        "has its own checkpoint, which is resumed.",
    ),
    Field(
        "allow_config_change",
        False,
        "Resume a workdir whose config.json has another model shape "
        "(network, data_shape, vocab_size, process).",
    ),
    # ------------------------------------------------------------ data --
    Field(
        "data.dataset",
        "digits",
        "The data set, one of md4.data.pipelines.DATASET_NAMES.",
    ),
    Field(
        "data.data_dir",
        "./data_dir",
        "Where data files live (or are downloaded).",
    ),
    Field(
        "data.data_shape",
        (8, 8, 1),
        "One example: (L,) text, (H, W, C) images.",
    ),
    Field(
        "data.vocab_size",
        17,
        "Token values per position; the mask id is this.",
        low=2,
    ),
    Field(
        "data.num_workers",
        0,
        "grain worker processes; 0 loads in-process.",
        low=0,
    ),
    Field(
        "data.pad_to",
        0,
        "MNIST only: zero-pad 28x28 to pad_to x pad_to.",
        low=0,
    ),
    Field(
        "data.path",
        "",
        "File-based data sets (openwebtext, fineweb_edu, protein, tokens, "
        "text_chars): their file or directory, relative to data_dir or "
        "absolute; empty = the data set's default place.",
    ),
    Field(
        "data.characters",
        "",
        "text_chars only: the vocabulary as a string of characters (ids "
        "in this order); empty = the text's own characters, kept in a "
        "vocab file.",
    ),
    Field(
        "data.eval_fraction",
        0.05,
        "protein, tokens (without train*/valid* files), text_chars: the "
        "share held out for evaluation under a fixed split seed.",
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
    ),
    Field(
        "data.random_flip",
        False,
        "Images: mirror each training image left-right with probability "
        "1/2 (seeded; never in evaluation).",
    ),
    # ----------------------------------------------------------- model --
    Field(
        "model.process",
        "md4",
        "The diffusion process (md4.diffusion); its fields are in "
        "model.<process>.",
        choices=lambda: diffusion.NAMES,
    ),
    Field(
        "model.antithetic",
        True,
        "Stratified time draws within a batch.",
        ignored_unless=_no_time_draws,
    ),
    Field("model.class_conditional", False, "Feed labels to the network."),
    Field(
        "model.cond_drop_prob",
        0.1,
        "Label dropout for classifier-free guidance.",
        low=0.0,
        high=1.0,
        high_open=True,
        ignored_unless=_unconditional,
    ),
)

_NETWORK_FIELDS = (
    Field(
        "network.name",
        "unet",
        "The network (md4.networks); its other fields are its own.",
        choices=lambda: tuple(networks.NETWORKS),
    ),
    Field(
        "network.dtype",
        "float32",
        "Compute dtype; parameters stay float32.",
        choices=lambda: tuple(networks.COMPUTE_DTYPES),
    ),
)

_TRAINING_FIELDS = (
    # ------------------------------------------------------- optimizer --
    Field("optimizer.learning_rate", 3e-4, "Peak learning rate.", low=0.0),
    Field(
        "optimizer.lr_schedule",
        "cosine",
        "After warm-up: cosine or constant.",
        choices=("cosine", "constant"),
    ),
    Field("optimizer.warmup_steps", 2000, "Linear warm-up from 0.", low=0),
    Field(
        "optimizer.min_lr_ratio",
        0.0,
        "Cosine decays to this times the peak.",
        low=0.0,
        high=1.0,
    ),
    Field(
        "optimizer.b1",
        0.9,
        "AdamW first-moment decay.",
        low=0.0,
        high=1.0,
        high_open=True,
    ),
    Field(
        "optimizer.b2",
        0.999,
        "AdamW second-moment decay.",
        low=0.0,
        high=1.0,
        high_open=True,
    ),
    Field(
        "optimizer.weight_decay",
        0.0,
        "Decoupled weight decay (AdamW).",
        low=0.0,
    ),
    Field(
        "optimizer.grad_clip_norm",
        1.0,
        "Global-norm gradient clipping; 0 disables.",
        low=0.0,
    ),
    Field(
        "optimizer.embedding_lr_multiplier",
        1.0,
        "Scales the updates of every embedding table after AdamW.",
        low=0.0,
    ),
    Field(
        "optimizer.ema_decay",
        0.9999,
        "EMA of parameters; 0 keeps no EMA.",
        low=0.0,
        high=1.0,
        high_open=True,
    ),
    Field(
        "optimizer.ema_warmup",
        True,
        "EMA decay min(ema_decay, (1 + k) / (10 + k)) at step k (a "
        "deviation from the reference); False: the reference's EMA.",
    ),
    # ----------------------------------------------------------- train --
    Field(
        "train.batch_size",
        64,
        "Global batch over all devices and processes.",
        low=1,
    ),
    Field("train.num_steps", 10_000, "Total optimisation steps.", low=1),
    Field(
        "train.micro_batches",
        1,
        "Gradient accumulation: the batch split k ways.",
        low=1,
    ),
    Field(
        "train.log_every", 100, "Steps between training metric writes.", low=1
    ),
    Field(
        "train.eval_every",
        1000,
        "Steps between evaluations (and at the end).",
        low=1,
    ),
    Field("train.eval_batch_size", 64, "Global evaluation batch.", low=1),
    Field(
        "train.eval_max_batches",
        0,
        "Batches per split per evaluation; 0 means all.",
        low=0,
    ),
    Field(
        "train.checkpoint_every",
        1000,
        "Steps between checkpoints (and at the end).",
        low=1,
    ),
    Field("train.keep_checkpoints", 3, "Recent checkpoints kept.", low=1),
    Field(
        "train.keep_period",
        0,
        "Also keep every k-th step's checkpoint; 0 off.",
        low=0,
    ),
    Field(
        "train.sample_every",
        1000,
        "Steps between sample writes (and at the end).",
        low=1,
    ),
    Field("train.num_samples", 16, "Samples per write.", low=1),
    Field(
        "train.sampler",
        "",
        "The periodic samples' sampler (md4.sampling), with its default "
        "settings; empty = the process's default sampler.",
        choices=lambda: ("",) + sampling.NAMES,
    ),
    Field(
        "train.sample_steps",
        100,
        "Time steps T of the periodic samples (step-based samplers).",
        low=1,
        ignored_unless=_sampler_ignores("num_steps"),
    ),
    Field(
        "train.sampling_grid",
        "cosine",
        "Time grid of the periodic samples: uniform, or cosine "
        "(sin(pi u / 2), the reference's).",
        choices=sampling_core.GRIDS,
        ignored_unless=_sampler_ignores("grid"),
    ),
    Field(
        "train.profile_every",
        0,
        "Profiler trace after every k-th step into <workdir>/profile/; 0 off.",
        low=0,
    ),
    Field("train.profile_steps", 5, "Steps in each profiler trace.", low=1),
    Field(
        "train.check_nans",
        True,
        "Check each step's metrics and gradients for NaN/Inf; a "
        "non-finite step's update is discarded and the run stops.",
    ),
    Field(
        "train.max_bad_steps",
        0,
        "With check_nans: non-finite steps skipped before the run stops.",
        low=0,
    ),
    # -------------------------------------------------------- sharding --
    Field(
        "sharding.mesh",
        (-1, 1, 1),
        "Mesh sizes (data, fsdp, tensor); -1 = the rest.",
    ),
    Field(
        "sharding.rules",
        (),
        "((logical axis, mesh axes), ...); empty = the defaults.",
    ),
)


def _process_fields() -> tuple[Field, ...]:
  return tuple(
      _in_process_section(f, cls.name)
      for cls in diffusion.PROCESSES.values()
      for f in cls.FIELDS
  )


def declared_fields() -> tuple[Field, ...]:
  """Every declared field, in the README table's order."""
  return _BASE_FIELDS + _process_fields() + _NETWORK_FIELDS + _TRAINING_FIELDS


def default_config() -> ml_collections.ConfigDict:
  """The default value of every declared field."""
  config = fields.build(declared_fields())
  for cls in diffusion.PROCESSES.values():  # A process may have no fields.
    if cls.name not in config.model:
      config.model[cls.name] = ml_collections.ConfigDict()
  return config


def field_table() -> str:
  """The README's table of every field (tests keep the README current)."""
  return fields.markdown_table(declared_fields())


def check_batch_sizes(
    config: ml_collections.ConfigDict,
    data_parallel: int = 1,
    processes: int = 1,
    mesh_doc: str = "",
) -> None:
  """The one check that the batch sizes divide as the run splits them.

  `validate` calls it without a mesh (micro-batches only); `run.build`
  again with the mesh's data-parallel size and the process count.
  """
  train = config.train
  if train.batch_size % train.micro_batches:
    raise ValueError(
        f"config.train.batch_size={train.batch_size} must be divisible"
        f" by config.train.micro_batches={train.micro_batches}."
    )
  for name, size in (
      ("train.batch_size", train.batch_size),
      ("train.eval_batch_size", train.eval_batch_size),
      (
          "train.batch_size / train.micro_batches",
          train.batch_size // train.micro_batches,
      ),
  ):
    if size % data_parallel or size % processes:
      raise ValueError(
          f"config.{name}={size} must be divisible by the data-parallel size "
          f"{data_parallel}{mesh_doc} and the process count {processes}."
      )


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects unknown keys (with the nearest valid one) and bad values."""
  fields.check_keys(config, default_config(), "config", _OPEN_SECTIONS)
  fields.check_values(config, declared_fields())
  _check_shapes(config)
  check_batch_sizes(config)
  # The process checks its own combinations (e.g. D3PM's absorbing noise
  # needs abar_T = 0); its errors name the fields and the fix.
  process = diffusion.from_config(config)
  process.check_network(config.network)
  reason = sampling.get(periodic_sampler(config)).reason_not_applicable(process)
  if reason:
    raise ValueError(
        f"config.train.sampler={periodic_sampler(config)!r}: {reason}"
    )


def _check_shapes(config) -> None:
  shape = config.data.data_shape
  if (
      not isinstance(shape, (tuple, list))
      or not shape
      or not all(
          isinstance(d, int) and not isinstance(d, bool) and d > 0
          for d in shape
      )
  ):
    raise ValueError(
        "config.data.data_shape must be a non-empty tuple of positive "
        f"integers ((L,) for text, (H, W, C) for images), got {shape!r}."
    )
  mesh = config.sharding.mesh
  if (
      not isinstance(mesh, (tuple, list))
      or len(mesh) != 3
      or not all(isinstance(d, int) and (d == -1 or d >= 1) for d in mesh)
      or list(mesh).count(-1) > 1
  ):
    raise ValueError(
        "config.sharding.mesh must be three sizes (data, fsdp, tensor), each"
        f" >= 1 or one of them -1 for the rest, got {mesh!r}."
    )


def upgrade_saved(saved: dict) -> dict:
  """A saved config.json's dict in today's layout.

  Runs trained before the process sections kept every process's fields
  flat in `model`; the chosen process's move to `model.<process>` (its
  `legacy_names` give their old names), the others are dropped: that run
  never read them.
  """
  model = saved.get("model")
  if not isinstance(model, dict):
    return saved
  cls = diffusion.get(model.get("process", "md4"))
  legacy = cls.legacy_names()
  flat = set(diffusion.legacy_flat_names())
  if not flat & set(model):
    return saved
  section = dict(model.get(cls.name, {}))
  section.update(
      {new: model[old] for old, new in legacy.items() if old in model}
  )
  upgraded = {k: v for k, v in model.items() if k not in flat}
  upgraded[cls.name] = section
  return dict(saved, model=upgraded)


def drop_ignored(config: ml_collections.ConfigDict) -> list[str]:
  """Sets back to default what a saved config changed but its run ignored.

  A config.json of an older md4 may hold such values (e.g. sample_steps of
  a D3PM run, whose reverse chain has its own steps); today's `validate`
  would reject them. A periodic sampler that does not apply to the process
  becomes the process's default. Returns the fields reset.
  """
  reset = []
  process = diffusion.from_config(config)
  if config.train.sampler and sampling.get(
      config.train.sampler
  ).reason_not_applicable(process):
    config.train.sampler = ""
    reset.append("train.sampler")
  for field in declared_fields():
    value = fields.get(config, field.name)
    if field.ignored_unless is None or fields.same(value, field.default):
      continue
    if field.ignored_unless(config):
      fields.set_value(config, field.name, field.default)
      reset.append(field.name)
  return reset


def switch_process(c: ml_collections.ConfigDict, name: str) -> None:
  """Sets config.model.process, for a config built on another family's file.

  Every other process's section goes back to its defaults, and so does
  each field the new process's run would ignore (`drop_ignored`: e.g. the
  grid steps of periodic samples, for a process with its own chain).
  """
  defaults = default_config()
  c.model.process = name
  for other in diffusion.NAMES:
    if other != name:
      c.model[other] = defaults.model[other]
  drop_ignored(c)
