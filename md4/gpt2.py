"""GPT-2 in JAX, read from a local Hugging Face directory: the judge of
generative perplexity (`md4.judge`).

A directory in the Hugging Face layout of any GPT-2 size holds

    config.json          n_embd, n_head, n_layer, n_positions, vocab_size,
                         layer_norm_epsilon, activation_function
    model.safetensors    the weights (read with `safetensors`, as NumPy)
    vocab.json + merges.txt (or tokenizer.json)   the tokenizer

The forward pass is GPT-2's (Radford et al., 2019): token and learned
position embeddings; per block, pre-LayerNorm causal multi-head attention
and a pre-LayerNorm 4x MLP with GELU (tanh form, `gelu_new`), each added to
the residual stream; a final LayerNorm; logits by the tied token embedding.
Hugging Face stores the projections as `Conv1D` weights [in, out], so a
projection is `x @ W + b`. The blocks run under `lax.scan` (one compiled
block for any depth), in float32.
"""

import dataclasses
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Per-block weights, Hugging Face names after `h.<i>.`.
BLOCK_WEIGHTS = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)
TOP_WEIGHTS = ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")
_ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


class JudgeError(ValueError):
  """A judge directory that cannot be used, with what to do about it."""


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  width: int
  num_heads: int
  num_layers: int
  context: int
  vocab_size: int
  layer_norm_eps: float
  activation: str


def read_config(directory: pathlib.Path) -> GPT2Config:
  path = directory / CONFIG_FILE
  if not path.is_file():
    raise JudgeError(
        f"{path} does not exist: a GPT-2 judge is a Hugging Face model"
        f" directory with {CONFIG_FILE}, {WEIGHTS_FILE} and the tokenizer"
        " (vocab.json + merges.txt); download e.g. `gpt2-large` there."
    )
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise JudgeError(f"{path} is not JSON ({e.msg}).") from None
  model_type = raw.get("model_type", "gpt2")
  if model_type != "gpt2":
    raise JudgeError(
        f"{path} describes a {model_type!r} model; the JAX judge runs GPT-2"
        " models (model_type 'gpt2') only. For other judges use an md4"
        " autoregressive run's workdir."
    )
  missing = [k for k in ("n_embd", "n_head", "n_layer") if k not in raw]
  if missing:
    raise JudgeError(f"{path} has no {', '.join(missing)}.")
  activation = raw.get("activation_function", "gelu_new")
  if activation not in _ACTIVATIONS:
    raise JudgeError(
        f"{path}: activation_function={activation!r} is not one of"
        f" {', '.join(_ACTIVATIONS)}."
    )
  return GPT2Config(
      width=int(raw["n_embd"]),
      num_heads=int(raw["n_head"]),
      num_layers=int(raw["n_layer"]),
      context=int(raw.get("n_positions", raw.get("n_ctx", 1024))),
      vocab_size=int(raw.get("vocab_size", 50257)),
      layer_norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
      activation=activation,
  )


def read_weights(directory: pathlib.Path, config: GPT2Config) -> dict:
  """{"wte", "wpe", "ln_f.weight", "ln_f.bias", "blocks": {name: [n, ...]}}."""
  path = directory / WEIGHTS_FILE
  if not path.is_file():
    other = [
        p.name
        for p in directory.glob("*")
        if p.suffix in (".bin", ".pt", ".h5", ".msgpack")
    ]
    hint = (
        f" (it has {', '.join(sorted(other))}: convert them to safetensors,"
        " e.g. save the model with safe_serialization=True)"
        if other
        else ""
    )
    raise JudgeError(
        f"{path} does not exist{hint}; the judge reads GPT-2's weights from"
        f" {WEIGHTS_FILE}."
    )
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top

  try:
    tensors = safetensors_numpy.load_file(str(path))
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise JudgeError(
        f"{path} could not be read as safetensors ({e})."
    ) from None
  # GPT2LMHeadModel saves under "transformer."; GPT2Model without a prefix.
  tensors = {
      (k[len("transformer.") :] if k.startswith("transformer.") else k): v
      for k, v in tensors.items()
  }
  names = list(TOP_WEIGHTS) + [
      f"h.{i}.{n}" for i in range(config.num_layers) for n in BLOCK_WEIGHTS
  ]
  missing = [n for n in names if n not in tensors]
  if missing:
    raise JudgeError(
        f"{path} lacks {len(missing)} GPT-2 weights (first: {missing[0]!r})"
        f" for the {config.num_layers} layers {CONFIG_FILE} declares; use"
        " the weights saved with that config."
    )
  as32 = lambda a: np.asarray(a, np.float32)
  wte = as32(tensors["wte.weight"])
  if wte.shape != (config.vocab_size, config.width):
    raise JudgeError(
        f"{path}: wte.weight has shape {wte.shape}, but {CONFIG_FILE} says"
        f" ({config.vocab_size}, {config.width})."
    )
  return {
      "wte": wte,
      "wpe": as32(tensors["wpe.weight"]),
      "ln_f.weight": as32(tensors["ln_f.weight"]),
      "ln_f.bias": as32(tensors["ln_f.bias"]),
      "blocks": {
          n: np.stack(
              [as32(tensors[f"h.{i}.{n}"]) for i in range(config.num_layers)]
          )
          for n in BLOCK_WEIGHTS
      },
  }


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def logits(weights: dict, tokens: jax.Array, config: GPT2Config) -> jax.Array:
  """Next-token logits [B, T, V] for tokens [B, T] (T <= context)."""
  _, length = tokens.shape
  heads, width = config.num_heads, config.width
  head_dim = width // heads
  act = _ACTIVATIONS[config.activation]
  eps = config.layer_norm_eps
  x = weights["wte"][tokens] + weights["wpe"][:length][None]
  causal = jnp.tril(jnp.ones((length, length), bool))

  def block(x, w):
    h = _layer_norm(x, w["ln_1.weight"], w["ln_1.bias"], eps)
    qkv = h @ w["attn.c_attn.weight"] + w["attn.c_attn.bias"]  # [B, T, 3D]
    q, k, v = jnp.split(qkv, 3, axis=-1)
    split = lambda a: a.reshape(a.shape[:2] + (heads, head_dim))
    scores = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k))
    scores = jnp.where(causal, scores / math.sqrt(head_dim), -jnp.inf)
    attended = jnp.einsum(
        "bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), split(v)
    ).reshape(x.shape)
    x = x + attended @ w["attn.c_proj.weight"] + w["attn.c_proj.bias"]
    h = _layer_norm(x, w["ln_2.weight"], w["ln_2.bias"], eps)
    h = act(h @ w["mlp.c_fc.weight"] + w["mlp.c_fc.bias"])
    return x + h @ w["mlp.c_proj.weight"] + w["mlp.c_proj.bias"], None

  x, _ = jax.lax.scan(block, x, weights["blocks"])
  x = _layer_norm(x, weights["ln_f.weight"], weights["ln_f.bias"], eps)
  return x @ weights["wte"].T


def load(directory: str | os.PathLike[str]):
  """(config, weights as device arrays) of a GPT-2 directory."""
  directory = pathlib.Path(directory)
  config = read_config(directory)
  weights = read_weights(directory, config)
  return config, jax.tree.map(jnp.asarray, weights)
