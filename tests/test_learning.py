"""A small real denoiser learns a known distribution to near its entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import known_distribution as kd
import pytest
from md4 import model as model_lib
from md4 import networks
from md4.diffusion import masked

pytestmark = pytest.mark.slow


def test_transformer_md4_reaches_within_5_percent_of_the_entropy():
  network = networks.build_network(
      "transformer",
      vocab_size=kd.VOCAB,
      data_shape=(kd.LENGTH,),
      num_classes=0,
      dtype="float32",
      num_layers=2,
      width=64,
      num_heads=4,
      cond_width=32,
      use_rope=True,
  )
  model = model_lib.DiffusionModel(
      network=network,
      process=masked.MD4(kd.VOCAB, (kd.LENGTH,), schedule="linear"),
  )
  params = model_lib.init_variables(model, jax.random.key(0), unbox=True)[
      "params"
  ]
  optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, 600))
  opt_state = optimizer.init(params)
  data = jnp.asarray(kd.sample(np.random.default_rng(0), 200_000))

  def loss(params, x, rng):
    terms, _ = model.apply({"params": params}, x, rngs={"sample": rng})
    return terms["loss"].mean()

  @jax.jit
  def step(params, opt_state, i):
    idx = jax.random.randint(jax.random.key(1 + i), (256,), 0, data.shape[0])
    value, grads = jax.value_and_grad(loss)(
        params, data[idx], jax.random.key(10_000 + i)
    )
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  for i in range(600):
    params, opt_state, _ = step(params, opt_state, i)

  test = jnp.asarray(kd.sample(np.random.default_rng(1), 20_000))
  nelbo = float(jax.jit(loss)(params, test, jax.random.key(7)))
  entropy = kd.entropy()
  # Any model's NELBO is >= the entropy in expectation; the trained one is
  # within 5% of it.
  print(
      f"test NELBO {nelbo:.4f} nats, entropy {entropy:.4f} nats, gap "
      f"{100 * (nelbo / entropy - 1):.2f}%"
  )
  assert nelbo > entropy - 0.05
  assert nelbo < 1.05 * entropy, (nelbo, entropy)
