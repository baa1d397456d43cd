"""Every configuration field md4 reads, its default, and validation.

Config files (`configs/<family>/<dataset>.py`) start from `default_config()`
and change what their experiment needs. `validate` rejects any key that is
not defined here, naming the nearest valid key, so a misspelt override never
silently trains the wrong model. Network fields (`config.network`) are
checked against the chosen network's own fields by `md4.networks`.
"""

import difflib
import math
import os

import ml_collections

from md4 import networks
from md4 import sampling
from md4.diffusion import d3pm
from md4.sampling import core as sampling_core

# Sections whose keys are fixed here. `network` is open: its keys are the
# fields of the network named by `network.name`.
_CLOSED_SECTIONS = ("data", "model", "optimizer", "train", "sharding")


def default_config() -> ml_collections.ConfigDict:
  """The default value of every field, with what it means."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameters, data order, time and mask draws.
  # Initialise parameters (not the optimizer or step) from another run: a
  # workdir or a checkpoint directory. Ignored when the workdir already has
  # a checkpoint, which is resumed instead.
  c.restore_from = ""
  # Resuming a workdir whose saved config.json has another model shape
  # (network, data_shape, vocab_size, process) is refused unless True.
  c.allow_config_change = False

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "digits"  # One of md4.data.pipelines.DATASET_NAMES.
  c.data.data_dir = "./data_dir"  # Where data files live (or are downloaded).
  c.data.data_shape = (8, 8, 1)  # One example: (L,) text, (H, W, C) images.
  c.data.vocab_size = 17  # Token values per position; the mask id is this.
  c.data.num_workers = 0  # grain worker processes; 0 loads in-process.
  c.data.pad_to = 0  # MNIST only: zero-pad 28x28 to pad_to x pad_to.
  # File-based data sets (openwebtext, fineweb_edu, protein, tokens,
  # text_chars): their file or directory, relative to data_dir or absolute;
  # empty = the data set's default place under data_dir.
  c.data.path = ""
  # text_chars only: the vocabulary as a string of characters (ids in this
  # order); empty = the text file's own characters, kept in a vocab file.
  c.data.characters = ""
  # protein, tokens (without train*/valid* files) and text_chars: the share
  # of examples (characters for text_chars) held out for evaluation under a
  # fixed split seed.
  c.data.eval_fraction = 0.05
  # Image data sets only: mirror each training image left-right with
  # probability 1/2 (seeded; evaluation images are never flipped).
  c.data.random_flip = False

  c.model = ml_collections.ConfigDict()
  c.model.process = "md4"  # "md4", "genmd4" or "d3pm".
  # MD4: linear, cosine or polyK. D3PM: linear, cosine or jsd (1/(T-t+1)).
  c.model.schedule = "linear"
  c.model.eps = 1e-4  # alpha stays in [eps, 1 - eps].
  c.model.num_steps = 0  # 0: continuous-time ELBO; T > 0: T-step ELBO.
  c.model.transition = "uniform"  # D3PM noise: uniform, absorbing, gaussian.
  c.model.hybrid_coeff = 0.0  # D3PM: lambda of the auxiliary CE loss.
  # D3PM reverse step from the denoiser's p~(x_0 | x_t). "soft_x0": the
  # papers' (Austin et al. Eq. 4, Hoogeboom et al.), q(x_t | x_{t-1})
  # sum_k p~(k) q(x_{t-1} | x_0 = k). "posterior_mixture": sum_k p~(k)
  # q(x_{t-1} | x_t, x_0 = k), the form whose bound optimum p~ = q(x_0 | x_t)
  # is also the hybrid CE term's; checkpoints do not transfer between them.
  c.model.d3pm_parameterization = "soft_x0"
  c.model.antithetic = True  # Stratified time samples within a batch.
  c.model.class_conditional = False  # Feed labels to the denoiser.
  c.model.cond_drop_prob = 0.1  # Label dropout for classifier-free guidance.
  c.model.power_init = 1.0  # GenMD4: initial exponent of every value.
  # GenMD4: the diffusion integral runs over [t1, 1] (reconstruction at t1);
  # must be > 0, its integrand is w / t.
  c.model.t1 = 1e-4

  c.network = ml_collections.ConfigDict()
  c.network.name = "unet"  # transformer, unet or uvit.
  c.network.dtype = "float32"  # Compute dtype; parameters stay float32.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-4  # Peak learning rate.
  c.optimizer.lr_schedule = "cosine"  # After warm-up: cosine or constant.
  c.optimizer.warmup_steps = 2000  # Linear warm-up from 0.
  c.optimizer.min_lr_ratio = 0.0  # Cosine decays to this times the peak.
  c.optimizer.b1 = 0.9  # AdamW first-moment decay.
  c.optimizer.b2 = 0.999  # AdamW second-moment decay.
  c.optimizer.weight_decay = 0.0  # Decoupled weight decay (AdamW).
  c.optimizer.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables.
  # Scales the updates of every embedding table (token and label
  # embeddings) after AdamW; 1 leaves them as the other parameters.
  c.optimizer.embedding_lr_multiplier = 1.0
  c.optimizer.ema_decay = 0.9999  # EMA of parameters; 0 keeps no EMA.
  # EMA warm-up: the decay at step k is min(ema_decay, (1 + k) / (10 + k)),
  # so early evaluations measure the trained parameters, not the initial
  # ones. A deviation from the reference (no warm-up); the difference is
  # gone after a few multiples of 1 / (1 - ema_decay) steps. False: the
  # reference's EMA.
  c.optimizer.ema_warmup = True

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # Global batch over all devices and processes.
  c.train.num_steps = 10_000  # Total optimisation steps.
  c.train.micro_batches = 1  # Gradient accumulation: batch split k ways.
  c.train.log_every = 100  # Steps between training metric writes.
  c.train.eval_every = 1000  # Steps between evaluations (and at the end).
  c.train.eval_batch_size = 64  # Global eval batch.
  c.train.eval_max_batches = 0  # Per split per evaluation; 0 means all.
  c.train.checkpoint_every = 1000  # Steps between checkpoints (and at end).
  c.train.keep_checkpoints = 3  # How many recent checkpoints to keep.
  c.train.keep_period = 0  # Also keep every k-th step's checkpoint; 0 off.
  c.train.sample_every = 1000  # Steps between sample writes (and at end).
  c.train.num_samples = 16  # Samples per write.
  c.train.sample_steps = 100  # Time steps T of the periodic samples.
  # The periodic samples' sampler (md4.sampling.SAMPLERS, with its default
  # settings) and time grid, the reference's by default. D3PM samples with
  # its own T-step reverse chain and reads neither.
  c.train.sampler = "ancestral"
  c.train.sampling_grid = "cosine"  # "uniform" or "cosine" (sin(pi u / 2)).
  # Profiler trace of profile_steps steps after every profile_every-th step,
  # written to <workdir>/profile/ for TensorBoard (process 0); 0 is off.
  c.train.profile_every = 0
  c.train.profile_steps = 5
  # Check every step's metrics and gradients for NaN/Inf (one scalar read
  # per step); a non-finite step's update is discarded and the run stops.
  c.train.check_nans = True
  # With check_nans: non-finite steps skipped (update discarded) before the
  # run stops; 0 stops at the first.
  c.train.max_bad_steps = 0

  c.sharding = ml_collections.ConfigDict()
  c.sharding.mesh = (-1, 1, 1)  # (data, fsdp, tensor); -1 = the rest.
  c.sharding.rules = ()  # ((logical, mesh axes), ...); empty = defaults.
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects unknown keys (with the nearest valid one) and bad values."""
  reference = default_config()
  _check_keys(config, reference, "config")
  for section in _CLOSED_SECTIONS:
    _check_keys(config[section], reference[section], f"config.{section}")
  _check_values(config)


def _check_keys(given, reference, where: str) -> None:
  valid = list(reference.keys())
  for key in given.keys():
    if key not in reference:
      near = difflib.get_close_matches(key, valid, n=1)
      hint = f"; did you mean {where}.{near[0]}?" if near else ""
      raise ValueError(
          f"{where}.{key} is not a known field{hint} Valid fields: "
          f"{', '.join(sorted(valid))}.")


# Field -> (kind, low, high): kind "int", "float" or "bool"; bounds are
# inclusive, None for unbounded. Strings with fixed choices are in _CHOICES.
_RANGES = {
    "seed": ("int", 0, 2**32 - 1),
    "allow_config_change": ("bool", None, None),
    "data.vocab_size": ("int", 2, None),
    "data.num_workers": ("int", 0, None),
    "data.pad_to": ("int", 0, None),
    "data.eval_fraction": ("float", 0.0, 1.0),
    "model.eps": ("float", 0.0, 0.5),
    "model.num_steps": ("int", 0, None),
    "model.hybrid_coeff": ("float", 0.0, None),
    "model.antithetic": ("bool", None, None),
    "model.class_conditional": ("bool", None, None),
    "model.cond_drop_prob": ("float", 0.0, 1.0),
    "model.power_init": ("float", 0.0, None),
    "model.t1": ("float", 0.0, 1.0),
    "optimizer.learning_rate": ("float", 0.0, None),
    "optimizer.warmup_steps": ("int", 0, None),
    "optimizer.min_lr_ratio": ("float", 0.0, 1.0),
    "optimizer.b1": ("float", 0.0, 1.0),
    "optimizer.b2": ("float", 0.0, 1.0),
    "optimizer.weight_decay": ("float", 0.0, None),
    "optimizer.grad_clip_norm": ("float", 0.0, None),
    "optimizer.embedding_lr_multiplier": ("float", 0.0, None),
    "optimizer.ema_decay": ("float", 0.0, 1.0),
    "optimizer.ema_warmup": ("bool", None, None),
    "train.batch_size": ("int", 1, None),
    "train.num_steps": ("int", 1, None),
    "train.micro_batches": ("int", 1, None),
    "train.log_every": ("int", 1, None),
    "train.eval_every": ("int", 1, None),
    "train.eval_batch_size": ("int", 1, None),
    "train.eval_max_batches": ("int", 0, None),
    "train.checkpoint_every": ("int", 1, None),
    "train.keep_checkpoints": ("int", 1, None),
    "train.keep_period": ("int", 0, None),
    "train.sample_every": ("int", 1, None),
    "train.num_samples": ("int", 1, None),
    "train.sample_steps": ("int", 1, None),
    "train.profile_every": ("int", 0, None),
    "train.profile_steps": ("int", 1, None),
    "train.check_nans": ("bool", None, None),
    "train.max_bad_steps": ("int", 0, None),
}
# Bounds that the value must not reach (open intervals).
_EXCLUSIVE_HIGH = ("model.eps", "model.t1", "optimizer.b1", "optimizer.b2",
                   "optimizer.ema_decay", "model.cond_drop_prob",
                   "data.eval_fraction")
_EXCLUSIVE_LOW = ("model.eps", "model.power_init", "model.t1",
                  "data.eval_fraction")
_CHOICES = {
    "model.process": ("md4", "genmd4", "d3pm"),
    "model.transition": d3pm.TRANSITIONS,
    "model.d3pm_parameterization": d3pm.PARAMETERIZATIONS,
    "optimizer.lr_schedule": ("cosine", "constant"),
    "network.dtype": tuple(networks.COMPUTE_DTYPES),
    "train.sampler": sampling.NAMES,
    "train.sampling_grid": sampling_core.GRIDS,
}


def _get(config, name: str):
  value = config
  for part in name.split("."):
    value = value[part]
  return value


def _check_range(name: str, value, kind: str, low, high) -> None:
  """One field's type and bounds; the error names the field and the fix."""
  if kind == "bool":
    if not isinstance(value, bool):
      raise ValueError(f"config.{name} must be True or False, got {value!r}.")
    return
  types = (int,) if kind == "int" else (int, float)
  if isinstance(value, bool) or not isinstance(value, types):
    wanted = "an integer" if kind == "int" else "a number"
    raise ValueError(f"config.{name} must be {wanted}, got {value!r} "
                     f"({type(value).__name__}).")
  if kind == "float" and not math.isfinite(value):
    raise ValueError(f"config.{name} must be finite, got {value!r}.")
  low_ok = low is None or (value > low if name in _EXCLUSIVE_LOW
                           else value >= low)
  high_ok = high is None or (value < high if name in _EXCLUSIVE_HIGH
                             else value <= high)
  if not (low_ok and high_ok):
    left = "(" if name in _EXCLUSIVE_LOW else "["
    right = ")" if name in _EXCLUSIVE_HIGH else "]"
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ValueError(f"config.{name}={value!r} is out of range; it must lie "
                     f"in {left}{lo}, {hi}{right}.")


def _check_shapes(config) -> None:
  shape = config.data.data_shape
  if (not isinstance(shape, (tuple, list)) or not shape or
      not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
              for d in shape)):
    raise ValueError(
        f"config.data.data_shape must be a non-empty tuple of positive "
        f"integers ((L,) for text, (H, W, C) for images), got {shape!r}.")
  mesh = config.sharding.mesh
  if (not isinstance(mesh, (tuple, list)) or len(mesh) != 3 or
      not all(isinstance(d, int) and (d == -1 or d >= 1) for d in mesh) or
      list(mesh).count(-1) > 1):
    raise ValueError(
        f"config.sharding.mesh must be three sizes (data, fsdp, tensor), each"
        f" >= 1 or one of them -1 for the rest, got {mesh!r}.")


def _check_values(config) -> None:
  """Type, range and combination checks that must fail before any work."""
  for name, (kind, low, high) in _RANGES.items():
    _check_range(name, _get(config, name), kind, low, high)
  for name, valid in _CHOICES.items():
    value = _get(config, name)
    if value not in valid:
      raise ValueError(f"config.{name}={value!r} is not valid; valid: "
                       f"{', '.join(valid)}.")
  _check_shapes(config)
  if config.train.batch_size % config.train.micro_batches:
    raise ValueError(
        f"config.train.batch_size={config.train.batch_size} must be divisible"
        f" by config.train.micro_batches={config.train.micro_batches}.")
  if config.model.process == "d3pm" and config.model.num_steps < 1:
    raise ValueError("config.model.num_steps must be the number of steps T "
                     f"(>= 1) for D3PM, got {config.model.num_steps}.")
  if config.model.process == "d3pm":
    # The process checks its combinations (absorbing noise needs abar_T = 0,
    # Gaussian noise >= 3 values); its errors name the fields and the fix.
    d3pm.D3PM(config.model.transition, config.data.vocab_size,
              config.model.num_steps, config.model.schedule,
              config.model.d3pm_parameterization)
  _check_sampler(config)
  if config.model.process == "genmd4" and config.model.num_steps != 0:
    raise ValueError(
        "config.model.num_steps must be 0 for GenMD4 (its ELBO is "
        f"continuous-time only), got {config.model.num_steps}; set "
        "config.model.num_steps=0 or use model.process='md4'.")


def _check_sampler(config) -> None:
  """The periodic samples' sampler must apply to the model's process."""
  sampler, process = config.train.sampler, config.model.process
  if process == "d3pm" and sampler != "ancestral":
    raise ValueError(
        f"config.train.sampler={sampler!r} does not apply to D3PM: its "
        "periodic samples use its T-step reverse chain. Set "
        "config.train.sampler='ancestral'.")
  if process == "genmd4" and sampler in sampling.MD4_ONLY:
    raise ValueError(
        f"config.train.sampler={sampler!r} needs an MD4 model: with GenMD4 "
        "the reveal probability of a token depends on its value. Use one of "
        f"{', '.join(n for n in sampling.NAMES if n not in sampling.MD4_ONLY)}"
        ".")


# The paper's DiT sizes (Shi et al., 2024): layers, width, heads.
TRANSFORMER_SIZES = {
    "tiny": (2, 64, 4),  # CPU smoke runs.
    "cpu": (4, 256, 8),  # Laptop-scale runs and the CPU benchmarks.
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
}


def transformer(size: str, dropout_rate: float,
                embed_dim: int = 0) -> ml_collections.ConfigDict:
  """config.network for the reference MD4 text transformer of a named size.

  As the reference builds it: the conditioning vector is width / num_heads
  wide (its `feature_dim`), sigmoid-gated MLP, adaLN-zero.

  Args:
    size: a key of TRANSFORMER_SIZES.
    dropout_rate: network.dropout_rate.
    embed_dim: 0 embeds tokens at the width (OpenWebText); E > 0 embeds them
      E wide and projects to the width (the reference's text8 model, E = 64).
  """
  if size not in TRANSFORMER_SIZES:
    raise ValueError(f"transformer size {size!r}; valid: "
                     f"{', '.join(TRANSFORMER_SIZES)}.")
  layers, width, heads = TRANSFORMER_SIZES[size]
  return ml_collections.ConfigDict(dict(
      name="transformer",
      dtype="float32",
      num_layers=layers,  # Transformer blocks.
      width=width,  # Residual stream width.
      num_heads=heads,  # Attention heads (head dim = width / heads).
      # glu (sigmoid-gated), geglu (GELU-gated), swiglu (SiLU-gated), all
      # without biases, or gelu (plain, with biases).
      mlp_type="glu",
      mlp_ratio=4.0,  # MLP hidden = 2/3 * ratio * width for gated MLPs.
      cond_width=width // heads,  # Time/label conditioning vector width.
      cond_type="adaln_zero",  # adaln_zero (zero-init modulation) or adaln.
      # 0: tokens embedded at the width; E > 0: E wide, then a Dense.
      embed_dim=embed_dim,
      depth_scaled_init=True,  # Output projections scaled by 1/sqrt(2 L).
      use_rope=True,  # Rotary position embeddings.
      dropout_rate=dropout_rate,
      time_features="t",  # "t" or "none" (time-agnostic denoiser).
      remat=False,  # Recompute block activations in the backward pass.
      # MD4 loss: -1 picks by vocabulary (chunked from 1,024 values), 0 full
      # [B, L, V] logits, N > 0 forms N positions' logits at a time.
      logits_chunk=-1,
  ))


def variant(arg: str | None, valid: tuple[str, ...]) -> str:
  """The `:variant` suffix of a config path, checked against the valid ones."""
  arg = arg or valid[0]
  if arg not in valid:
    raise ValueError(f"config variant {arg!r} is not defined; valid: "
                     f"{', '.join(valid)}.")
  return arg


def unet(ch: int, num_res_blocks: int, dropout_rate: float,
         ch_mult=(1,), attn_resolutions=(), embed_dim: int = 128,
         cond_width: int = 128) -> ml_collections.ConfigDict:
  """config.network for the image U-Net (defaults: the reference's widths)."""
  return ml_collections.ConfigDict(dict(
      name="unet",
      dtype="float32",
      embed_dim=embed_dim,  # Per-channel token embedding width.
      ch=ch,  # Base channel count.
      ch_mult=tuple(ch_mult),  # Channel multiplier per resolution level.
      num_res_blocks=num_res_blocks,  # Residual blocks per level.
      attn_resolutions=tuple(attn_resolutions),  # Sizes with self-attention.
      num_heads=1,  # Heads of those attention layers.
      cond_width=cond_width,  # Time/label conditioning width.
      dropout_rate=dropout_rate,
      time_features="t",  # "t" or "none".
      remat=False,  # Recompute residual blocks in the backward pass.
  ))


def load_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs a config file's get_config(arg); lets one config extend another."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("md4_config", path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def sibling(config_file: str, relative: str) -> str:
  """The path of another config file relative to this one's directory."""
  return os.path.join(os.path.dirname(os.path.abspath(config_file)), relative)


def use_digits(c: ml_collections.ConfigDict) -> None:
  """Switches a config to the bundled digits (offline, trains in minutes)."""
  c.data.dataset = "digits"
  c.data.data_shape = (8, 8, 1)
  c.data.vocab_size = 17
  c.data.pad_to = 0
  c.network = unet(ch=32, num_res_blocks=2, dropout_rate=0.1,
                   attn_resolutions=(8,), embed_dim=16, cond_width=32)
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.ema_decay = 0.995
  c.train.batch_size = 64
  c.train.eval_batch_size = 100
  c.train.eval_max_batches = 0
  c.train.num_steps = 2000
  c.train.log_every = 100
  c.train.eval_every = c.train.checkpoint_every = 1000
  c.train.sample_every = 1000
  c.train.num_samples = 64


def use_cpu_unet(c: ml_collections.ConfigDict, num_steps: int = 500) -> None:
  """Shrinks an image config to a laptop-sized U-Net run."""
  c.network = unet(ch=32, num_res_blocks=1, dropout_rate=0.0, ch_mult=(1, 2),
                   embed_dim=32, cond_width=32)
  c.train.batch_size = 16
  c.train.eval_batch_size = 100
  c.train.eval_max_batches = 2
  c.train.num_steps = num_steps
  c.train.eval_every = c.train.checkpoint_every = num_steps // 2
  c.train.sample_every = num_steps // 2
  c.train.log_every = 50
  c.train.num_samples = 16
