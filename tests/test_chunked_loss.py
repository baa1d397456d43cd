"""The memory-lean MD4 loss (chunked output head) pins to the plain math.

The reference below forms the full logits [B, L, V] with the network's
`denoise`, takes a float32 log_softmax and gathers the targets; the model's
training loss forms the logits a chunk of positions at a time
(`chunked_logits.FactoredLogits`). Both see the same batch, times and mask draws.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import model as model_lib
from md4 import networks
from md4.diffusion import chunked_logits
from md4.diffusion import masked
from md4.diffusion import schedules
from md4.networks import transformer

BATCH = 3
LENGTH = 13  # prime: no chunk size below it divides the positions
VOCAB = 1031  # above transformer.AUTO_CHUNK_MIN_VOCAB: chunked by default
EPS = 1e-4


WIDTH = 16


def tiny_model(logits_chunk: int, num_steps: int) -> model_lib.DiffusionModel:
  network = networks.build_network(
      "transformer",
      vocab_size=VOCAB,
      data_shape=(LENGTH,),
      num_layers=1,
      width=WIDTH,
      num_heads=2,
      cond_width=8,
      mlp_type="gelu",
      logits_chunk=logits_chunk,
  )
  return model_lib.DiffusionModel(
      network=network,
      process=masked.MD4(
          VOCAB, (LENGTH,), schedule="linear", eps=EPS, num_steps=num_steps
      ),
  )


def random_params(model):
  """Parameters of the model's shapes, all random (no zero gates/biases)."""
  shapes = jax.eval_shape(
      lambda r: model_lib.init_variables(model, r, unbox=True),
      jax.random.key(0),
  )["params"]
  rng = np.random.default_rng(1)  # host draws: no compile per shape
  return jax.tree.map(
      lambda p: jnp.asarray(0.3 * rng.standard_normal(p.shape), p.dtype), shapes
  )


def fixed_batch():
  x_rng, t_rng, keys_rng = jax.random.split(jax.random.key(7), 3)
  x = jax.random.randint(x_rng, (BATCH, LENGTH), 0, VOCAB, jnp.int32)
  t = jax.random.uniform(t_rng, (BATCH,))
  keys = jax.random.split(keys_rng, BATCH)
  return x, t, keys


def reference_nelbo(logits_fn, x, t, keys, num_steps):
  """Per-example negative ELBO [B] from full logits, written out plainly.

  Args:
    logits_fn: (z [B, L], t [B]) -> full logits [B, L, V].
    x: tokens [B, L].
    t: time draws u [B] in [0, 1), as the model takes them.
    keys: one key per example [B] (the mask draws).
    num_steps: 0 (continuous time) or T.
  """
  alpha = schedules.MaskingSchedule("linear", EPS).alpha
  if num_steps:
    i = jnp.clip(jnp.floor(t * num_steps) + 1.0, 1.0, num_steps)
    s, t_query = (i - 1.0) / num_steps, i / num_steps
    weight = num_steps * (alpha(s) - alpha(t_query)) / (1.0 - alpha(t_query))
  else:
    # U[0, 1) -> U(0, 1]: the continuous time of the draw u is 1 - u.
    t_query = 1.0 - t
    weight = -jax.vmap(jax.grad(alpha))(t_query) / (1.0 - alpha(t_query))
  # One uniform per token from each example's key, as the model draws them.
  u = jax.vmap(lambda k: jax.random.uniform(k, (LENGTH,)))(keys)  # [B, L]
  z = jnp.where(u < alpha(t_query)[:, None], x, VOCAB)  # VOCAB = MASK
  logits = logits_fn(z, t_query)
  assert logits.shape == (BATCH, LENGTH, VOCAB)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_p_x = jnp.take_along_axis(log_p, x[..., None], axis=-1)[..., 0]
  cross_entropy = jnp.where(z == VOCAB, -log_p_x, 0.0).sum(axis=-1)  # [B]
  constant = LENGTH * math.log(VOCAB) * (alpha(1.0) + 1.0 - alpha(0.0))
  return weight * cross_entropy + constant


def assert_trees_close(got, expected):
  flat = jax.tree_util.tree_leaves_with_path(got)
  flat_expected = jax.tree.leaves(expected)
  assert len(flat) == len(flat_expected)
  for (path, g), e in zip(flat, flat_expected):
    scale = float(jnp.abs(e).max())
    np.testing.assert_allclose(
        g, e, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path)
    )


def mean_and_grad(loss_fn, params):
  """(per-example loss [B], gradient of its mean) of loss_fn(params)."""

  def mean_loss(p):
    per_example = loss_fn(p)  # [B]
    return per_example.mean(), per_example

  grad_fn = jax.value_and_grad(mean_loss, has_aux=True)
  (_, per_example), grads = grad_fn(params)
  return per_example, grads


def toy_features(params, z, t):
  """A small denoiser body: features [B, L, D] of tokens and time."""
  return jnp.tanh(params["embed"][z] + t[:, None, None])


@pytest.mark.parametrize(
    "num_steps,chunk",
    [(0, 5), (8, 4)],
    ids=["continuous-chunk5", "discrete-chunk4"],
)
def test_md4_nelbo_and_gradient_with_chunked_logits_equal_full_reference(
    num_steps, chunk
):
  x, t, keys = fixed_batch()
  e_rng, k_rng, b_rng = jax.random.split(jax.random.key(2), 3)
  params = {
      "embed": jax.random.normal(e_rng, (VOCAB + 1, WIDTH)),
      "kernel": 0.5 * jax.random.normal(k_rng, (WIDTH, VOCAB)),
      "bias": jax.random.normal(b_rng, (VOCAB,)),
  }
  schedule = schedules.MaskingSchedule("linear", EPS)

  def ours(p):
    denoise = lambda z, tt, _: chunked_logits.FactoredLogits(
        toy_features(p, z, tt), p["kernel"], p["bias"], chunk
    )
    return masked.nelbo(
        keys, x, denoise, schedule, vocab_size=VOCAB, num_steps=num_steps, t=t
    )["loss"]

  def theirs(p):
    logits_fn = lambda z, tt: toy_features(p, z, tt) @ p["kernel"] + p["bias"]
    return reference_nelbo(logits_fn, x, t, keys, num_steps)

  both = jax.jit(lambda p: (mean_and_grad(ours, p), mean_and_grad(theirs, p)))
  (loss, grads), (expected, expected_grads) = both(params)
  np.testing.assert_allclose(loss, expected, rtol=2e-6)
  assert float(jnp.abs(expected_grads["kernel"]).min()) > 0
  assert_trees_close(grads, expected_grads)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("chunk", [1, 4, 13])
@pytest.mark.parametrize("read", ["random", "none", "all", "one"])
def test_reading_some_rows_gives_their_full_values_and_gradients(
    monkeypatch, groups, chunk, read
):
  # `where` packs the read rows of each group of examples to the front and
  # skips the chunks past them; the read values and every gradient must be
  # those of the full log-softmax (unread rows contribute nothing).
  monkeypatch.setattr(chunked_logits, "sort_groups", lambda batch: groups)
  f_rng, k_rng, b_rng, x_rng, w_rng, g_rng = jax.random.split(
      jax.random.key(11), 6
  )
  features = jax.random.normal(f_rng, (BATCH, LENGTH, WIDTH))
  kernel = 0.5 * jax.random.normal(k_rng, (WIDTH, VOCAB))
  bias = jax.random.normal(b_rng, (VOCAB,))
  x = jax.random.randint(x_rng, (BATCH, LENGTH), 0, VOCAB)
  where = {
      "random": jax.random.bernoulli(w_rng, 0.3, (BATCH, LENGTH)),
      "none": jnp.zeros((BATCH, LENGTH), bool),
      "all": jnp.ones((BATCH, LENGTH), bool),
      "one": jnp.zeros((BATCH, LENGTH), bool).at[2, 11].set(True),
  }[read]
  cotangent = jax.random.normal(g_rng, (BATCH, LENGTH))

  def ours(f, k, b):
    logits = chunked_logits.FactoredLogits(f, k, b, chunk)
    return chunked_logits.target_log_prob(logits, x, where)

  def theirs(f, k, b):
    log_p = jax.nn.log_softmax(f @ k + b, axis=-1)
    picked = jnp.take_along_axis(log_p, x[..., None], axis=-1)[..., 0]
    return jnp.where(where, picked, 0.0)

  def value_and_vjp(fn):
    out, vjp = jax.vjp(fn, features, kernel, bias)
    return out, vjp(cotangent)

  (got, got_grads), (expected, expected_grads) = jax.jit(
      lambda: (value_and_vjp(ours), value_and_vjp(theirs))
  )()
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert bool(jnp.all(jnp.where(where, True, got == 0.0)))
  for g, e in zip(got_grads, expected_grads):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
  if read == "none":
    assert float(jnp.abs(got_grads[1]).max()) == 0.0
  else:
    assert float(jnp.abs(expected_grads[1]).max()) > 0


def test_reading_some_rows_skips_the_chunks_past_them():
  # Two examples, chunks of one position (2 rows). The 4 read rows pack
  # into the first 2 of 5 chunks; the unread rows have NaN features, so a
  # chunk formed from them would put 0 * NaN = NaN into the kernel's
  # gradient (as the full computation does). A finite gradient equal to
  # that of the read rows alone means the 3 chunks past them were skipped.
  f_rng, k_rng = jax.random.split(jax.random.key(5))
  where = jnp.zeros((2, 5), bool).at[0, :2].set(True).at[1, ::2].set(True)
  where = where.at[1, 4].set(False)  # read: (0, 0), (0, 1), (1, 0), (1, 2)
  features = jax.random.normal(f_rng, (2, 5, 3))
  features = jnp.where(where[..., None], features, jnp.nan)
  kernel = jax.random.normal(k_rng, (3, 4))
  bias = jnp.zeros((4,))
  x = jnp.arange(10).reshape(2, 5) % 4

  def ours(k):
    logits = chunked_logits.FactoredLogits(features, k, bias, 1)
    return chunked_logits.target_log_prob(logits, x, where).sum()

  def read_rows_only(k):
    log_p = jax.nn.log_softmax(features[where] @ k + bias, axis=-1)
    return jnp.take_along_axis(log_p, x[where][:, None], axis=-1).sum()

  def full(k):
    log_p = jax.nn.log_softmax(features @ k + bias, axis=-1)
    picked = jnp.take_along_axis(log_p, x[..., None], axis=-1)[..., 0]
    return jnp.where(where, picked, 0.0).sum()

  assert bool(jnp.isnan(jax.grad(full)(kernel)).any())  # the trap works
  value, grad = jax.value_and_grad(ours)(kernel)
  expected, expected_grad = jax.value_and_grad(read_rows_only)(kernel)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  assert bool(jnp.isfinite(grad).all())
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_transformer_training_loss_equals_full_logits_reference():
  # The automatic rule: VOCAB is large enough to chunk, and this batch
  # fits one chunk (the rule's cap), so it also covers chunk >= positions.
  model = tiny_model(logits_chunk=transformer.AUTO_LOGITS_CHUNK, num_steps=0)
  x, t, keys = fixed_batch()
  params = random_params(model)
  assert (
      model.apply({"params": params}, x.shape, method=model.loss_logits_chunk)
      == LENGTH
  )

  def ours(p):
    terms, _ = model.apply({"params": p}, x, train=True, t=t, example_keys=keys)
    return terms["loss"]  # [B]

  def theirs(p):
    logits_fn = lambda z, tt: model.apply(
        {"params": p}, z, tt, method=model.denoise
    )
    return reference_nelbo(logits_fn, x, t, keys, 0)

  both = jax.jit(lambda p: (mean_and_grad(ours, p), mean_and_grad(theirs, p)))
  (loss, grads), (expected, expected_grads) = both(params)
  np.testing.assert_allclose(loss, expected, rtol=2e-6)
  assert float(jnp.abs(expected_grads["network"]["logits"]["kernel"]).min()) > 0
  assert_trees_close(grads, expected_grads)


def _largest_value(jaxpr) -> int:
  """Size of the largest value anywhere in a jaxpr, sub-jaxprs included."""
  largest = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      largest = max(largest, math.prod(getattr(v.aval, "shape", ())))
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          largest = max(largest, _largest_value(sub))
  return largest


def test_chunked_step_never_holds_the_full_logits_or_their_gradient():
  chunk = 4
  x, t, keys = fixed_batch()

  def largest(logits_chunk):
    model = tiny_model(logits_chunk, 0)
    params = jax.eval_shape(
        lambda r: model_lib.init_variables(model, r, unbox=True),
        jax.random.key(0),
    )["params"]

    def loss(p):
      terms, _ = model.apply(
          {"params": p}, x, train=True, t=t, example_keys=keys
      )
      return terms["loss"].mean()

    return _largest_value(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)

  assert largest(0) >= BATCH * LENGTH * VOCAB  # the full path does form them
  # The largest values left: one chunk's logits, or the embedding table.
  assert largest(chunk) == max(BATCH * chunk * VOCAB, WIDTH * (VOCAB + 1))


def test_automatic_rule_chunks_large_vocabularies_only():
  rule = transformer.logits_chunk_positions
  auto = transformer.AUTO_LOGITS_CHUNK
  assert rule(auto, 32, 256, 27) == 0  # text8: full logits, one matmul
  owt = rule(auto, 8, 256, 50_257)
  assert 0 < owt < 256
  assert 8 * owt * 50_257 * 4 <= transformer.AUTO_CHUNK_BYTES
  assert rule(0, 8, 256, 50_257) == 0
  assert rule(100, 8, 256, 27) == 100
  assert rule(1000, 8, 256, 27) == 256  # at most the length


def test_negative_logits_chunk_is_rejected_naming_the_field():
  with pytest.raises(ValueError, match="network.logits_chunk"):
    transformer.logits_chunk_positions(-2, 8, 256, 50_257)
  model = tiny_model(-5, 0)
  with pytest.raises(ValueError, match="network.logits_chunk.*-5"):
    model_lib.init_variables(model, jax.random.key(0))


def test_lean_attention_and_gradient_equal_jax_xla_attention():
  q_rng, k_rng, v_rng, g_rng = jax.random.split(jax.random.key(4), 4)
  q = jax.random.normal(q_rng, (2, 9, 3, 8))  # [B, L, N, H]
  k = jax.random.normal(k_rng, (2, 9, 3, 8))
  v = jax.random.normal(v_rng, (2, 9, 3, 8))
  cotangent = jax.random.normal(g_rng, (2, 9, 3, 8))

  @functools.partial(jax.jit, static_argnums=0)
  def value_and_grads(attention):
    out, vjp = jax.vjp(attention, q, k, v)
    return out, vjp(cotangent)

  ours = value_and_grads(transformer.lean_attention)
  theirs = value_and_grads(
      functools.partial(jax.nn.dot_product_attention, implementation="xla")
  )
  assert_trees_close(ours, theirs)
