"""Building blocks of the config files: the network recipes (`transformer`,
`unet`, `TRANSFORMER_SIZES`), the `:variant` and file helpers (`variant`,
`load_file`, `sibling`) and the shared data recipes (`use_digits`,
`use_cpu_unet`). `md4.configuration` declares and validates the fields;
this module only fills them.
"""

import importlib.util
import os

import ml_collections

# The paper's DiT sizes (Shi et al., 2024): layers, width, heads.
TRANSFORMER_SIZES = {
    "tiny": (2, 64, 4),  # CPU smoke runs.
    "cpu": (4, 256, 8),  # Laptop-scale runs and the CPU benchmarks.
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
}


def transformer(
    size: str, dropout_rate: float, embed_dim: int = 0
) -> ml_collections.ConfigDict:
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
    raise ValueError(
        f"transformer size {size!r}; valid: {', '.join(TRANSFORMER_SIZES)}."
    )
  layers, width, heads = TRANSFORMER_SIZES[size]
  return ml_collections.ConfigDict(
      dict(
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
          causal=False,  # Causal attention (the autoregressive baseline).
          remat=False,  # Recompute block activations in the backward pass.
          # MD4 loss: -1 picks by vocabulary (chunked from 1,024 values), 0 full
          # [B, L, V] logits, N > 0 forms N positions' logits at a time.
          logits_chunk=-1,
      )
  )


def variant(arg: str | None, valid: tuple[str, ...]) -> str:
  """The `:variant` suffix of a config path, checked against the valid ones."""
  arg = arg or valid[0]
  if arg not in valid:
    raise ValueError(
        f"config variant {arg!r} is not defined; valid: {', '.join(valid)}."
    )
  return arg


def unet(
    ch: int,
    num_res_blocks: int,
    dropout_rate: float,
    ch_mult=(1,),
    attn_resolutions=(),
    embed_dim: int = 128,
    cond_width: int = 128,
) -> ml_collections.ConfigDict:
  """config.network for the image U-Net (defaults: the reference's widths)."""
  return ml_collections.ConfigDict(
      dict(
          name="unet",
          dtype="float32",
          embed_dim=embed_dim,  # Per-channel token embedding width.
          ch=ch,  # Base channel count.
          ch_mult=tuple(ch_mult),  # Channel multiplier per resolution level.
          num_res_blocks=num_res_blocks,  # Residual blocks per level.
          attn_resolutions=tuple(
              attn_resolutions
          ),  # Sizes with self-attention.
          num_heads=1,  # Heads of those attention layers.
          cond_width=cond_width,  # Time/label conditioning width.
          dropout_rate=dropout_rate,
          time_features="t",  # "t" or "none".
          remat=False,  # Recompute residual blocks in the backward pass.
      )
  )


def load_module(path: str):
  """A config file as a module (to reuse its helpers in another config)."""
  spec = importlib.util.spec_from_file_location("md4_config", path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs a config file's get_config(arg); lets one config extend another."""
  return load_module(path).get_config(arg)


def sibling(config_file: str, relative: str) -> str:
  """The path of another config file relative to this one's directory."""
  return os.path.join(os.path.dirname(os.path.abspath(config_file)), relative)


def use_digits(c: ml_collections.ConfigDict) -> None:
  """Switches a config to the bundled digits (offline, trains in minutes).

  The one digits recipe: `configs/md4/digits.py` (the README's main job)
  is this on the defaults, and every `:digits` variant applies it.
  """
  c.data.dataset = "digits"
  c.data.data_shape = (8, 8, 1)
  c.data.vocab_size = 17  # Grey levels 0..16.
  c.data.pad_to = 0
  c.network = unet(
      ch=32,
      num_res_blocks=2,
      dropout_rate=0.1,
      attn_resolutions=(8,),
      embed_dim=16,
      cond_width=128,
  )
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.01
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
  c.network = unet(
      ch=32,
      num_res_blocks=1,
      dropout_rate=0.0,
      ch_mult=(1, 2),
      embed_dim=32,
      cond_width=32,
  )
  c.train.batch_size = 16
  c.train.eval_batch_size = 100
  c.train.eval_max_batches = 2
  c.train.num_steps = num_steps
  c.train.eval_every = c.train.checkpoint_every = num_steps // 2
  c.train.sample_every = num_steps // 2
  c.train.log_every = 50
  c.train.num_samples = 16
