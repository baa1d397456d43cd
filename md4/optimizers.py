"""The optax chain, learning-rate schedules and the parameter EMA."""

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(
    opt: ml_collections.ConfigDict, num_steps: int
) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then cosine (to min_lr_ratio) or flat.

  The rate at step k is peak * k / warmup for k <= warmup; after it the cosine
  runs over the remaining num_steps - warmup steps.
  """
  peak, warmup = opt.learning_rate, opt.warmup_steps
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if opt.lr_schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    after = optax.cosine_decay_schedule(
        peak, max(num_steps - warmup, 1), alpha=opt.min_lr_ratio
    )
  if warmup <= 0:
    return after
  return optax.join_schedules([warm, after], [warmup])


# Name of the table parameter of every flax nn.Embed.
EMBEDDING_PARAM = "embedding"


def embedding_mask(params):
  """True at every embedding table (a leaf named EMBEDDING_PARAM)."""

  def is_table(path, _):
    last = path[-1]
    return getattr(last, "key", None) == EMBEDDING_PARAM

  return jax.tree_util.tree_map_with_path(is_table, params)


def build_optimizer(
    opt: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
  """Global-norm clipping, AdamW with the learning-rate schedule, then the
  embedding tables' updates scaled by `embedding_lr_multiplier`.

  Weight decay skips one-dimensional parameters (biases, norm scales,
  GenMD4's schedule exponents), the usual practice for transformers; the
  reference MD4 code decays every parameter.

  The reference has the same multiplier, but its mask looks for
  "embedding_matrix" in parameter paths, which flax's nn.Embed (parameter
  "embedding") never has, so there it scales nothing; here it scales every
  token and label embedding table.
  """
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  chain = []
  if opt.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  chain.append(
      optax.adamw(
          learning_rate_schedule(opt, num_steps),
          b1=opt.b1,
          b2=opt.b2,
          weight_decay=opt.weight_decay,
          mask=decay_mask,
      )
  )
  if opt.embedding_lr_multiplier != 1.0:
    chain.append(
        optax.masked(optax.scale(opt.embedding_lr_multiplier), embedding_mask)
    )
  return chain[0] if len(chain) == 1 else optax.chain(*chain)


def ema_decay_at(step, decay: float, warmup: bool):
  """The EMA decay of the update made at step k (k = 0 for the first).

  With warm-up, decay_k = min(decay, (1 + k) / (10 + k)): 0.1 at the first
  update, so the EMA follows the parameters at first instead of carrying
  decay^k of their initial values (37% at k = 1000 for decay 0.999). It
  reaches `decay` at k = (10 decay - 1) / (1 - decay), about 9 / (1 - decay)
  steps; after that the two EMAs differ by the initial values' share in the
  plain one, decay^k = exp(-k (1 - decay)), which is gone after a few
  multiples of 1 / (1 - decay) steps. A deviation from the reference code,
  whose EMA starts at `decay`.

  Args:
    step: k, an int scalar (the train state's step before this update).
    decay: the configured decay.
    warmup: apply the warm-up; False returns `decay`.

  Returns:
    decay_k, a float32 scalar, or `decay` itself without warm-up.
  """
  if not warmup:
    return decay
  k = jnp.asarray(step).astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + k) / (10.0 + k))


def ema_update(ema_params, params, decay):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(
      lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
      ema_params,
      params,
  )


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(
      sum(
          jnp.sum(jnp.square(x.astype(jnp.float32)))
          for x in jax.tree.leaves(tree)
      )
  )
