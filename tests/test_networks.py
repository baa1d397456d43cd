"""Tests of the denoiser networks: shapes, dtypes, conditioning, init, errors.

Networks are tiny here except where parameter counts of the shipped sizes are
computed abstractly with `jax.eval_shape` (no memory is allocated).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4 import sharding
from md4.networks import NETWORKS
from md4.networks import build_network
from md4.networks import count_params
from md4.networks.conditioning import Conditioning
from md4.networks.transformer import TransformerBlock
from md4.networks.transformer import mlp_hidden_width
from md4.networks.unet import num_groups

BATCH = 2
VOCAB = 11
NUM_CLASSES = 3

# name -> (data_shape, fields of a tiny network)
TINY = {
    "transformer": (
        (8,),
        dict(num_layers=2, width=32, num_heads=4, cond_width=16),
    ),
    # One resolution level keeps compilation short; the shape tests below
    # cover down- and upsampling.
    "unet": (
        (8, 8, 1),
        dict(
            ch=8,
            ch_mult=(1,),
            num_res_blocks=1,
            attn_resolutions=(8,),
            cond_width=16,
            embed_dim=4,
        ),
    ),
    "uvit": (
        (8, 8, 3),
        dict(
            ch=8,
            ch_mult=(1,),
            num_res_blocks=1,
            num_transformer_layers=2,
            transformer_width=32,
            num_heads=4,
            cond_width=16,
            embed_dim=4,
        ),
    ),
}

# Every logical axis name that md4.sharding has a rule for.
LOGICAL_AXIS_NAMES = {name for name, _ in sharding.DEFAULT_RULES}


def tiny_network(name, data_shape=None, **overrides):
  default_shape, fields = TINY[name]
  return build_network(
      name,
      vocab_size=VOCAB,
      data_shape=data_shape or default_shape,
      **{**fields, **overrides},
  )


def inputs(data_shape, seed=0):
  """Random tokens (some of them MASK = VOCAB), times and labels."""
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.integers(0, VOCAB + 1, (BATCH, *data_shape)), jnp.int32)
  t = jnp.asarray(rng.uniform(size=BATCH), jnp.float32)
  label = jnp.asarray(rng.integers(0, NUM_CLASSES, BATCH), jnp.int32)
  return z, t, label


# Jitted so that each test compiles once instead of dispatching op by op.
@functools.partial(jax.jit, static_argnames=("net", "train"))
def apply(net, variables, z, t, label=None, *, train=False, rngs=None):
  return net.apply(variables, z, t, label, train=train, rngs=rngs)


def key(seed):
  # XLA's RngBitGenerator compiles several times faster on CPU than the
  # default threefry, which dominates the time of init and dropout here.
  return jax.random.key(seed, impl="unsafe_rbg")


@functools.partial(jax.jit, static_argnames=("net",))
def _init(net, z, t, label):
  return net.init(key(1), z, t, label, train=False)


def init(net, data_shape, label=None):
  """The network's own initialisation, for tests about initial values.

  Slow to compile on CPU (one random draw per parameter); other tests use
  `random_variables` or `abstract_init`.
  """
  z, t, _ = inputs(data_shape)
  return _init(net, z, t, label)


def abstract_init(net, data_shape, label=None):
  """Boxed ShapeDtypeStructs of the variables; nothing is computed."""
  z, t, _ = inputs(data_shape)
  return jax.eval_shape(
      lambda: net.init(jax.random.key(0), z, t, label, train=False)
  )


def random_variables(net, data_shape, label=None, seed=2):
  """Variables drawn on the host with every parameter non-zero.

  Unlike `init`, no zero-initialised path (adaLN, last conv of a ResBlock)
  stays inactive, so conditioning and dropout have a visible effect; and it
  compiles nothing. Weights are N(0, 1 / fan_in), norm scales 1 + N(0, 0.1^2),
  other vectors N(0, 0.1^2).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if leaf.ndim == 1 or name == "bias":
      return (1.0 if name == "scale" else 0.0) + 0.1 * noise
    if name in ("embedding", "position_embedding", "constant"):
      return noise if name == "embedding" else 0.1 * noise
    return noise / np.sqrt(np.prod(leaf.shape[:-1]))

  return jax.tree_util.tree_map_with_path(
      draw, abstract_init(net, data_shape, label)
  )


@pytest.fixture(scope="module", params=sorted(TINY))
def conditional(request):
  """(name, net, data_shape, variables) of a class-conditional network."""
  name = request.param
  data_shape = TINY[name][0]
  net = tiny_network(name, num_classes=NUM_CLASSES, dropout_rate=0.5)
  variables = random_variables(net, data_shape, inputs(data_shape)[2])
  return name, net, data_shape, variables


def assert_not_close(a, b):
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("length", [1, 17])
def test_transformer_logits_have_shape_batch_length_vocab(length):
  net = tiny_network("transformer", (length,))
  z, t, _ = inputs((length,))
  logits = apply(net, random_variables(net, (length,)), z, t, train=False)
  assert logits.shape == (BATCH, length, VOCAB)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize(
    "data_shape, ch_mult",
    [
        # 8x8x1 digits: see TINY.
        ((28, 28, 1), (1, 2, 2)),  # MNIST, 28 -> 14 -> 7
        ((32, 32, 3), (1,)),  # CIFAR-10, no downsampling
        ((64, 64, 3), (1, 2, 2, 2)),  # ImageNet 64, 64 -> 8
    ],
)
def test_unet_logits_have_shape_batch_height_width_channels_vocab(
    data_shape, ch_mult
):
  net = tiny_network("unet", data_shape, ch_mult=ch_mult)
  z, t, _ = inputs(data_shape)
  logits = apply(net, random_variables(net, data_shape), z, t, train=False)
  assert logits.shape == (BATCH, *data_shape, VOCAB)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize(
    "data_shape, ch_mult",
    [
        ((64, 64, 3), (1, 1, 2)),  # 64 -> 16: 8 x 8 = 64 patches of 2 x 2
    ],
)
def test_uvit_logits_have_shape_batch_height_width_channels_vocab(
    data_shape, ch_mult
):
  net = tiny_network("uvit", data_shape, ch_mult=ch_mult)
  z, t, _ = inputs(data_shape)
  variables = random_variables(net, data_shape)
  logits = apply(net, variables, z, t, train=False)
  assert logits.shape == (BATCH, *data_shape, VOCAB)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  tokens = (data_shape[0] // 2 ** (len(ch_mult) - 1) // 2) ** 2
  assert variables["params"]["position_embedding"].value.shape == (tokens, 32)


@pytest.mark.parametrize("name", sorted(TINY))
def test_logits_are_float32_with_bfloat16_compute(name):
  data_shape = TINY[name][0]
  net = tiny_network(name, dtype="bfloat16")
  assert net.dtype == jnp.bfloat16
  abstract = abstract_init(net, data_shape)
  param_dtypes = {x.dtype for x in jax.tree.leaves(abstract)}
  assert param_dtypes == {jnp.dtype(jnp.float32)}
  z, t, _ = inputs(data_shape)
  logits = apply(net, random_variables(net, data_shape), z, t, train=False)
  assert logits.dtype == jnp.float32
  assert logits.shape == (BATCH, *data_shape, VOCAB)
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_remat_gives_the_same_logits_and_parameters():
  data_shape = TINY["transformer"][0]
  plain = tiny_network("transformer")
  remat = tiny_network("transformer", remat=True)
  variables = random_variables(plain, data_shape)
  assert jax.tree.structure(variables) == jax.tree.structure(
      abstract_init(remat, data_shape)
  )
  z, t, _ = inputs(data_shape)
  np.testing.assert_allclose(
      apply(plain, variables, z, t, train=False),
      apply(remat, variables, z, t, train=False),
      rtol=1e-5,
      atol=1e-5,
  )


def test_learned_position_embeddings_replace_rope_when_asked():
  net = tiny_network("transformer", (8,), use_rope=False)
  assert net.max_length == 8  # filled in from data_shape
  variables = random_variables(net, (8,))
  assert variables["params"]["position_embedding"].value.shape == (8, 32)
  z, t, _ = inputs((12,))
  with pytest.raises(ValueError, match="max_length"):
    apply(net, variables, z, t, train=False)


def test_mlp_hidden_width_is_two_thirds_rounded_up_to_32_when_gated():
  assert mlp_hidden_width(768, 4.0, "glu") == 2048
  assert mlp_hidden_width(1024, 4.0, "swiglu") == 2752  # 2730 -> 2752
  assert mlp_hidden_width(200, 4.0, "geglu") == 544  # 533 -> 544 (not 576)
  assert mlp_hidden_width(768, 4.0, "gelu") == 3072


def test_glu_is_sigmoid_gated_geglu_gelu_gated_swiglu_silu_gated():
  from md4.networks.transformer import Mlp  # pylint: disable=g-import-not-at-top

  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 4)), jnp.float32)
  for mlp_type, act in (
      ("glu", jax.nn.sigmoid),
      ("geglu", jax.nn.gelu),
      ("swiglu", jax.nn.silu),
  ):
    net = Mlp(hidden=8, mlp_type=mlp_type)
    params = random_variables_of(net, x)
    p = params["params"]
    assert set(p) == {"wi_gate", "wi_up", "wo"}
    assert all(set(p[k]) == {"kernel"} for k in p)  # no biases
    kernel = lambda k: np.asarray(nn.unbox(p[k]["kernel"]))
    expected = (act(x @ kernel("wi_gate")) * (x @ kernel("wi_up"))) @ kernel(
        "wo"
    )
    np.testing.assert_allclose(
        net.apply(params, x), expected, rtol=1e-5, atol=1e-6
    )


def random_variables_of(module, *args):
  """N(0, 1) values for every variable of `module` called on args."""
  rng = np.random.default_rng(3)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
  return jax.tree.map(
      lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32),
      nn.unbox(shapes),
  )


def test_group_norm_keeps_four_channels_per_group_below_128_channels():
  assert [num_groups(c) for c in (1, 3, 8, 12, 48, 64, 96, 128, 256)] == [
      1,
      1,
      2,
      3,
      12,
      16,
      24,
      32,
      32,
  ]


# ------------------------------------------------------- parameter counts


def abstract_params(net, data_shape):
  z = jnp.zeros((1, *data_shape), jnp.int32)
  t = jnp.zeros((1,), jnp.float32)
  variables = jax.eval_shape(
      lambda: net.init(jax.random.key(0), z, t, train=False)
  )
  return variables["params"]


def transformer_param_count(
    vocab, width, layers, hidden, cond, embed=0, num_classes=0
):
  """Hand-derived parameter count of the reference MD4 text transformer."""
  if embed:  # embedded `embed` wide, then a Dense (with bias) to the width
    embedding = (vocab + 1) * embed + embed * width + width
  else:
    embedding = (vocab + 1) * width  # + MASK row
  conditioning = cond * 4 * cond + 4 * cond + 4 * cond * cond + cond
  if num_classes:  # label table; its vector is concatenated to the time's
    conditioning += (num_classes + 1) * cond + cond * 4 * cond
  attention = 4 * width * width  # q, k, v, out without biases
  mlp = 3 * width * hidden  # gated, without biases
  adaln = cond * 6 * width + 6 * width
  final = (cond * 2 * width + 2 * width) + width * vocab  # head: no bias
  return embedding + conditioning + layers * (attention + mlp + adaln) + final


def test_transformer_owt_small_parameter_count_matches_formula():
  # The reference's 165,857,344: 38.6M in each (untied) embedding, 7.38M per
  # block (2.36M attention, 4.72M gated MLP, 0.30M adaLN from a 64-wide c).
  net = build_network(
      "transformer", vocab_size=50257, data_shape=(1024,), cond_width=64
  )
  n = count_params(abstract_params(net, (8,)))  # RoPE: independent of L
  assert n == transformer_param_count(50257, 768, 12, 2048, cond=64)
  assert n == 165_857_344


def test_transformer_text8_parameter_count_matches_formula():
  net = build_network(
      "transformer",
      vocab_size=27,
      data_shape=(256,),
      cond_width=64,
      embed_dim=64,
  )
  n = count_params(abstract_params(net, (8,)))
  assert n == transformer_param_count(27, 768, 12, 2048, cond=64, embed=64)
  assert n == 88_734_272


def test_transformer_medium_parameter_count_matches_formula():
  net = build_network(
      "transformer",
      vocab_size=50257,
      data_shape=(1024,),
      num_layers=24,
      width=1024,
      num_heads=16,
      cond_width=64,
  )
  n = count_params(abstract_params(net, (8,)))
  assert n == transformer_param_count(50257, 1024, 24, 2752, cond=64)


def test_class_conditional_transformer_concatenates_the_label_embedding():
  net = build_network(
      "transformer",
      vocab_size=11,
      data_shape=(8,),
      num_layers=1,
      width=32,
      num_heads=4,
      cond_width=8,
      num_classes=3,
  )
  n = count_params(abstract_params(net, (8,)))
  assert n == transformer_param_count(
      11, 32, 1, mlp_hidden_width(32, 4.0, "glu"), cond=8, num_classes=3
  )


def unet_res_block_count(cin, cout, cond):
  norms = 2 * cin + 2 * cout
  convs = 9 * cin * cout + cout + 9 * cout * cout + cout
  skip = cin * cout + cout if cin != cout else 0
  return norms + convs + cond * cout + skip  # bias-free cond projection


def test_unet_cifar10_parameter_count_matches_formula():
  # VDM's CIFAR-10 U-Net as the reference builds it: 128 channels, 32
  # ResBlocks down, 33 up (each reading a 128-channel skip), no downsampling,
  # attention in the middle only; 28,427,520 parameters.
  net = build_network("unet", vocab_size=256, data_shape=(32, 32, 3))
  n = count_params(abstract_params(net, (32, 32, 3)))
  ch, cond, vocab, embed = 128, 128, 256, 128
  expected = (
      cond * 4 * cond
      + 4 * cond
      + 4 * cond * cond
      + cond  # time MLP
      + (vocab + 1) * embed  # shared channel embedding
      + 9 * 3 * embed * ch
      + ch  # conv in
      + 32 * unet_res_block_count(ch, ch, cond)  # down
      + 2 * unet_res_block_count(ch, ch, cond)  # middle
      + 2 * ch
      + 4 * (ch * ch + ch)  # middle attention (with biases)
      + 33 * unet_res_block_count(2 * ch, ch, cond)  # up
      + 2 * ch
      + 9 * ch * 3 * vocab
      + 3 * vocab
  )  # output head
  assert n == expected
  assert n == 28_427_520


def test_uvit_imagenet64_parameter_count_matches_formula():
  net = build_network("uvit", vocab_size=256, data_shape=(64, 64, 3))
  params = abstract_params(net, (64, 64, 3))
  n = count_params(params)
  width, cond, ch, embed, vocab = 768, 256, 256, 256, 256
  # DiT block: q, k, v with biases, out without; plain GELU MLP with biases;
  # adaLN-zero from the 256-wide c.
  block = (
      3 * (width * width + width)
      + width * width
      + 2 * width * 4 * width
      + 4 * width
      + width
      + cond * 6 * width
      + 6 * width
  )
  assert count_params(params["transformer_block_0"]) == block

  # ResBlock with modulated GroupNorms: each norm's scale and shift come
  # from a Dense of c (with bias) instead of its own affine.
  def res_block(cin, cout):
    norms = (cond * 2 * cin + 2 * cin) + (cond * 2 * cout + 2 * cout)
    skip = cin * cout + cout if cin != cout else 0
    return norms + 9 * cin * cout + cout + 9 * cout * cout + cout + skip

  patches = (64 // 2) ** 2
  dit = (
      4 * ch * width
      + width
      + patches * width
      + 20 * block
      + cond * 2 * width
      + 2 * width
      + width * 4 * ch
      + 4 * ch
  )
  expected = (
      cond * 4 * cond
      + 4 * cond
      + 4 * cond * cond
      + cond
      + (vocab + 1) * embed
      + 9 * 3 * embed * ch
      + ch
      + 8 * res_block(ch, ch)
      + dit
      + 9 * res_block(2 * ch, ch)
      + cond * 2 * ch
      + 2 * ch
      + 9 * ch * 3 * vocab
      + 3 * vocab
  )
  assert n == expected
  assert n == 204_595_712


# ------------------------------------------------------------ conditioning


def test_different_times_give_different_logits(conditional):
  _, net, data_shape, variables = conditional
  z, _, label = inputs(data_shape)
  early = apply(net, variables, z, jnp.full((BATCH,), 0.1), label, train=False)
  late = apply(net, variables, z, jnp.full((BATCH,), 0.9), label, train=False)
  assert_not_close(early, late)


def test_different_labels_give_different_logits(conditional):
  _, net, data_shape, variables = conditional
  z, t, _ = inputs(data_shape)
  zeros = apply(
      net, variables, z, t, jnp.zeros((BATCH,), jnp.int32), train=False
  )
  ones = apply(net, variables, z, t, jnp.ones((BATCH,), jnp.int32), train=False)
  assert_not_close(zeros, ones)


def test_missing_label_means_the_no_label_id():
  cond = Conditioning(16, num_classes=NUM_CLASSES)
  t = jnp.full((BATCH,), 0.5)
  no_label = jnp.full((BATCH,), NUM_CLASSES)
  variables = cond.init(key(0), t, no_label, BATCH)
  np.testing.assert_array_equal(
      cond.apply(variables, t, None, BATCH),
      cond.apply(variables, t, no_label, BATCH),
  )


@pytest.mark.parametrize("name", sorted(TINY))
def test_time_is_ignored_when_time_features_is_none(name):
  data_shape = TINY[name][0]
  net = tiny_network(name, time_features="none")
  variables = random_variables(net, data_shape)
  z, _, _ = inputs(data_shape)
  early = apply(net, variables, z, jnp.full((BATCH,), 0.1), train=False)
  late = apply(net, variables, z, jnp.full((BATCH,), 0.9), train=False)
  np.testing.assert_array_equal(early, late)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_label_without_num_classes_is_rejected(name):
  data_shape = TINY[name][0]
  net = tiny_network(name)
  label = inputs(data_shape)[2]
  with pytest.raises(ValueError, match="num_classes"):
    abstract_init(net, data_shape, label)


# ------------------------------------------------------ adaLN-zero init


@pytest.mark.parametrize(
    "fields",
    [
        dict(num_classes=NUM_CLASSES),
        # Unconditional: the modulation is a learned constant.
        dict(time_features="none", use_rope=False, remat=True),
    ],
    ids=["conditional", "unconditional_learned_positions_remat"],
)
def test_every_transformer_block_starts_as_the_identity(fields):
  data_shape = TINY["transformer"][0]
  net = tiny_network("transformer", **fields)
  z, t, label = inputs(data_shape)
  label = label if fields.get("num_classes") else None
  variables = init(net, data_shape, label)
  is_block = lambda mdl, _: isinstance(mdl, TransformerBlock)
  _, state = jax.jit(
      functools.partial(
          net.apply,
          train=False,
          capture_intermediates=is_block,
          mutable=["intermediates"],
      )
  )(variables, z, t, label)
  captured = state["intermediates"]
  num_layers = TINY["transformer"][1]["num_layers"]
  assert sorted(captured) == [f"block_{i}" for i in range(num_layers)]

  # The stream entering block 0: token (+ position) embeddings.
  params = variables["params"]
  x = params["token_embedding"]["embedding"].value[z]
  if "position_embedding" in params:
    x = x + params["position_embedding"].value[None]
  for i in range(num_layers):
    np.testing.assert_array_equal(captured[f"block_{i}"]["__call__"][0], x)


# ---------------------------------------------------------------- dropout


def test_dropout_differs_between_rngs_in_training(conditional):
  _, net, data_shape, variables = conditional
  z, t, label = inputs(data_shape)
  a, b = [
      apply(
          net, variables, z, t, label, train=True, rngs={"dropout": key(seed)}
      )
      for seed in (0, 1)
  ]
  assert_not_close(a, b)


def test_evaluation_is_deterministic(conditional):
  _, net, data_shape, variables = conditional
  z, t, label = inputs(data_shape)
  a = apply(net, variables, z, t, label, train=False)
  b = apply(net, variables, z, t, label, train=False)
  np.testing.assert_array_equal(a, b)


# --------------------------------------------------------- build_network


def test_build_network_rejects_an_unknown_name():
  with pytest.raises(ValueError) as err:
    build_network("resnet", vocab_size=VOCAB, data_shape=(8,))
  assert "'resnet'" in str(err.value)
  for name in NETWORKS:
    assert name in str(err.value)


def test_build_network_rejects_an_unknown_field_and_suggests_the_closest():
  with pytest.raises(ValueError) as err:
    build_network("transformer", vocab_size=VOCAB, data_shape=(8,), num_layer=2)
  assert "'num_layer'" in str(err.value)
  assert "Did you mean 'num_layers'?" in str(err.value)
  assert "width" in str(err.value)  # lists the valid fields


@pytest.mark.parametrize(
    "name, data_shape, valid",
    [
        ("transformer", (8, 8, 1), "(length,)"),
        ("unet", (8,), "(height, width, channels)"),
        ("uvit", (64, 64), "(height, width, channels)"),
    ],
)
def test_build_network_rejects_a_data_shape_of_the_wrong_rank(
    name, data_shape, valid
):
  with pytest.raises(ValueError) as err:
    build_network(name, vocab_size=VOCAB, data_shape=data_shape)
  assert str(data_shape) in str(err.value) and valid in str(err.value)


def test_build_network_rejects_an_unknown_dtype():
  with pytest.raises(ValueError) as err:
    build_network(
        "transformer", vocab_size=VOCAB, data_shape=(8,), dtype="float8"
    )
  assert "'float8'" in str(err.value) and "bfloat16" in str(err.value)


def test_build_network_converts_lists_from_configs_to_tuples():
  net = tiny_network("unet", ch_mult=[1, 2], attn_resolutions=[4])
  assert net.ch_mult == (1, 2) and net.attn_resolutions == (4,)


def test_transformer_rejects_image_tokens():
  net = tiny_network("transformer")
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    abstract_init(net, (4, 4, 1))


def test_unet_rejects_sizes_its_downsampling_cannot_halve():
  net = tiny_network("unet", (28, 28, 1), ch_mult=(1, 2, 2, 2))
  with pytest.raises(ValueError, match="downsamples by 8"):
    abstract_init(net, (28, 28, 1))


@pytest.mark.parametrize(
    "field, value",
    [
        ("mlp_type", "relu"),
        ("attention_impl", "flash"),
        ("time_features", "log_snr"),
    ],
)
def test_transformer_rejects_unknown_choices(field, value):
  net = tiny_network("transformer", **{field: value})
  with pytest.raises(ValueError) as err:
    abstract_init(net, (8,))
  assert field in str(err.value) and repr(value) in str(err.value)


# ------------------------------------------------------ logical partitions


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_parameter_has_logical_axis_names_from_sharding(name):
  data_shape = TINY[name][0]
  variables = abstract_init(
      tiny_network(name, num_classes=NUM_CLASSES),
      data_shape,
      label=jnp.zeros((BATCH,), jnp.int32),
  )
  boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
  leaves = jax.tree.leaves(variables, is_leaf=boxed)
  assert leaves and all(boxed(leaf) for leaf in leaves)
  for leaf in leaves:
    assert len(leaf.names) == len(leaf.value.shape)
    named = [n for n in leaf.names if n is not None]
    assert set(named) <= LOGICAL_AXIS_NAMES, leaf.names
    assert len(set(named)) == len(named), leaf.names  # one mesh axis each
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  specs = jax.tree.leaves(nn.get_partition_spec(variables), is_leaf=is_spec)
  assert len(specs) == len(leaves)
  assert all(any(axis is not None for axis in spec) for spec in specs)
