"""Every shipped config loads, validates and builds its train state abstractly."""

import glob
import os
import re

import jax
import ml_collections
import pytest

from md4 import config_recipes
from md4 import configuration
from md4 import model as model_lib
from md4 import optimizers
from md4 import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.py")))
VARIANTS = {
    "openwebtext": ["small", "medium", "cpu"],
    "fineweb_edu": ["small", "medium", "cpu"],
    "text8": ["small", "cpu", "tiny"],
    "cifar10": ["default", "discrete", "cpu"],
    "imagenet64": ["default", "cond", "cpu"],
    "mnist": ["default", "cpu"],
    "binarized_mnist": ["default", "cpu", "digits"],
    "protein": ["small", "cpu"],
    "digits": ["default", "tiny"],
    "d3pm/binarized_mnist": ["default", "cpu", "digits"],
    "d3pm/text8": ["small", "cpu", "tiny", "digits"],
    "multinomial/binarized_mnist": ["default", "cpu", "digits"],
    "autoregressive/text8": ["small", "cpu", "tiny"],
    "autoregressive/openwebtext": ["small", "medium", "cpu"],
    "block_diffusion/openwebtext": ["small", "small,8", "small,16", "cpu"],
    "block_diffusion/text8": ["small", "cpu,16", "tiny"],
    "block_diffusion/lm1b": ["small", "cpu,8"],
}
NUM_CLASSES = {
    "cifar10": 10,
    "class_cond_imagenet64": 1000,
    "mnist": 10,
    "binarized_mnist": 10,
    "digits": 10,
}


def load(path, arg=None):
  return config_recipes.load_file(path, arg)


def _name(path):
  """Family-qualified name for families other than md4/genmd4."""
  family = os.path.basename(os.path.dirname(path))
  base = os.path.splitext(os.path.basename(path))[0]
  return base if family in ("md4", "genmd4") else f"{family}/{base}"


def cases():
  for path in CONFIG_FILES:
    name = _name(path)
    for arg in VARIANTS[name]:
      yield pytest.param(path, arg, id=f"{os.path.relpath(path, ROOT)}:{arg}")


def test_every_config_file_is_covered():
  names = {_name(p) for p in CONFIG_FILES}
  assert names <= set(VARIANTS)
  assert len(CONFIG_FILES) >= 11


@pytest.mark.parametrize("path,arg", list(cases()))
def test_config_validates_and_builds_its_train_state_abstractly(path, arg):
  config = load(path, arg)
  configuration.validate(config)
  model = model_lib.build_model(config, NUM_CLASSES.get(config.data.dataset, 0))
  optimizer = optimizers.build_optimizer(
      config.optimizer, config.train.num_steps
  )
  state = jax.eval_shape(
      lambda r: run_lib.init_state(model, optimizer, r), jax.random.key(0)
  )
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  assert num_params > 1000
  assert config.train.batch_size % config.train.micro_batches == 0


# Parameter counts of the reference implementation (google-deepmind/md4 at
# commit b9fbf29), each built there with its own `get_model` and `model.init`
# from the config of the same name; measured side by side in issue 13.
REFERENCE_PARAMS = [
    ("configs/md4/text8.py", None, 88_734_272),
    ("configs/genmd4/text8.py", None, 88_734_299),
    ("configs/md4/openwebtext.py", None, 165_857_344),
    ("configs/md4/fineweb_edu.py", None, 165_857_344),
    ("configs/md4/cifar10.py", None, 28_427_520),
    ("configs/md4/imagenet64.py", None, 204_595_712),
]


def abstract_param_count(config, num_classes=0) -> int:
  """Parameters of the model (network + process) a config builds."""
  model = model_lib.build_model(config, num_classes)
  shape = (1, *config.data.data_shape)
  variables = jax.eval_shape(
      lambda: model.init(
          {"params": jax.random.key(0), "sample": jax.random.key(1)},
          jax.numpy.zeros(shape, jax.numpy.int32),
      )
  )
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    "path,arg,expected",
    REFERENCE_PARAMS,
    ids=[p for p, _, _ in REFERENCE_PARAMS],
)
def test_paper_config_has_the_reference_parameter_count(path, arg, expected):
  config = load(os.path.join(ROOT, path), arg)
  assert abstract_param_count(config) == expected


def test_paper_configs_train_without_gradient_clipping_as_the_reference():
  for path, arg, _ in REFERENCE_PARAMS:
    assert load(os.path.join(ROOT, path), arg).optimizer.grad_clip_norm == 0


def test_paper_sizes_of_the_openwebtext_configs():
  small = load(os.path.join(ROOT, "configs/md4/openwebtext.py"))
  medium = load(os.path.join(ROOT, "configs/md4/openwebtext.py"), "medium")
  assert (
      small.network.num_layers,
      small.network.width,
      small.network.num_heads,
  ) == (12, 768, 12)
  assert (
      medium.network.num_layers,
      medium.network.width,
      medium.network.num_heads,
  ) == (24, 1024, 16)
  assert small.data.vocab_size == 50257 and small.data.data_shape == (1024,)
  assert small.optimizer.warmup_steps == 2000
  assert small.train.batch_size == 512


def test_unknown_variant_is_rejected_with_the_valid_ones():
  with pytest.raises(ValueError, match="small, medium, cpu"):
    load(os.path.join(ROOT, "configs/md4/openwebtext.py"), "huge")


def test_misspelt_key_names_the_nearest_valid_field():
  config = configuration.default_config()
  with config.unlocked():
    config.train.batch_sise = 3
  with pytest.raises(ValueError, match="Did you mean config.train.batch_size"):
    configuration.validate(config)


def test_misspelt_network_field_names_the_nearest_valid_field():
  config = load(os.path.join(ROOT, "configs/md4/text8.py"), "tiny")
  config.network.num_layer = 3
  with pytest.raises(ValueError, match="num_layers"):
    model_lib.build_model(config)


def test_batch_not_divisible_by_micro_batches_is_rejected_before_compiling():
  config = configuration.default_config()
  config.train.batch_size, config.train.micro_batches = 10, 3
  with pytest.raises(ValueError, match="micro_batches"):
    configuration.validate(config)


def _all_keys(config, prefix=""):
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _all_keys(v, f"{prefix}{k}.")
    else:
      yield k


def test_every_config_field_is_read_by_the_code():
  """A field nothing reads is a bug: each must appear as an attribute read."""
  sources = ""
  for path in glob.glob(
      os.path.join(ROOT, "md4", "**", "*.py"), recursive=True
  ):
    if not path.endswith("configuration.py"):
      with open(path) as f:
        sources += f.read()
  unread = [
      k
      for k in _all_keys(configuration.default_config())
      if not re.search(rf"\.{k}\b", sources)
  ]
  assert not unread, f"config fields nothing reads: {unread}"


def test_every_d3pm_transition_passes_validation():
  from md4.diffusion import d3pm  # pylint: disable=g-import-not-at-top

  for transition in d3pm.TRANSITIONS:
    config = configuration.default_config()
    config.model.process = "d3pm"
    config.model.d3pm.num_steps = 10
    # Masks every token at T (absorbing).
    config.model.d3pm.schedule = "cosine"
    config.model.d3pm.transition = transition
    configuration.validate(config)
  config.model.d3pm.transition = "gauss"
  with pytest.raises(ValueError, match="model.d3pm.transition='gauss'"):
    configuration.validate(config)


def test_periodic_sampler_is_checked_against_the_process():
  config = configuration.default_config()
  assert (config.train.sampler, config.train.sampling_grid) == ("", "cosine")
  assert configuration.periodic_sampler(config) == "ancestral"
  config.train.sampler = "beam"
  with pytest.raises(ValueError, match="train.sampler='beam'.*ancestral"):
    configuration.validate(config)
  config.train.sampler, config.model.process = "cached", "genmd4"
  with pytest.raises(ValueError, match="'value_independent' capability"):
    configuration.validate(config)
  config.model.process = "d3pm"
  config.model.d3pm.num_steps = 10
  with pytest.raises(ValueError, match="'unmasking' capability.*reverse_chain"):
    configuration.validate(config)
  config.train.sampler = ""
  assert configuration.periodic_sampler(config) == "reverse_chain"
  configuration.validate(config)
  config.train.sampler, config.model.process = "ancestral", "md4"
  config.train.sampling_grid = "log"
  with pytest.raises(ValueError, match="sampling_grid='log'.*uniform"):
    configuration.validate(config)


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("train.sample_steps", 50, "'reverse_chain'.*no 'num_steps' setting"),
        ("train.sampling_grid", "uniform", "no 'grid' setting"),
        ("model.md4.schedule", "cosine", "does not read the md4 section"),
        ("model.genmd4.t1", 1e-3, "does not read the genmd4 section"),
    ],
)
def test_a_field_the_run_ignores_is_rejected_with_the_fix(field, value, reason):
  config = load(os.path.join(ROOT, "configs/d3pm/text8.py"), "tiny")
  configuration.validate(config)
  section, key = field.rsplit(".", 1)
  node = config
  for part in section.split("."):
    node = node[part]
  node[key] = value
  with pytest.raises(
      ValueError,
      match=rf"config.{re.escape(field)}=.* is ignored: .*{reason}.*Remove it",
  ):
    configuration.validate(config)


def test_antithetic_and_cond_drop_are_rejected_where_nothing_reads_them():
  config = load(os.path.join(ROOT, "configs/autoregressive/text8.py"), "tiny")
  config.model.antithetic = False
  with pytest.raises(
      ValueError, match="antithetic=False is ignored.*draws no times"
  ):
    configuration.validate(config)
  config = configuration.default_config()
  config.model.cond_drop_prob = 0.2
  with pytest.raises(ValueError, match="not class-conditional"):
    configuration.validate(config)


def test_switch_process_resets_the_other_sections_and_ignored_fields():
  config = load(os.path.join(ROOT, "configs/md4/openwebtext.py"), "medium")
  assert config.model.md4.schedule == "cosine"
  assert config.train.sample_steps == 1000
  configuration.switch_process(config, "autoregressive")
  assert config.model.md4.schedule == "linear"  # The default again.
  assert config.train.sample_steps == 100
  assert config.model.process == "autoregressive"


def test_a_config_json_of_the_flat_layout_is_upgraded():
  saved = {
      "model": {
          "process": "d3pm",
          "schedule": "jsd",
          "num_steps": 40,
          "transition": "absorbing",
          "eps": 1e-4,
          "d3pm_parameterization": "posterior_mixture",
          "power_init": 1.0,
      },
      "train": {"sampler": "ancestral", "sample_steps": 40},
  }
  upgraded = configuration.upgrade_saved(saved)
  assert upgraded["model"] == {
      "process": "d3pm",
      "d3pm": {
          "schedule": "jsd",
          "num_steps": 40,
          "transition": "absorbing",
          "parameterization": "posterior_mixture",
      },
  }
  config = configuration.default_config()
  config.model.process = "d3pm"
  config.model.d3pm.update(upgraded["model"]["d3pm"])
  config.train.update(upgraded["train"])
  reset = configuration.drop_ignored(config)
  assert sorted(reset) == ["train.sample_steps", "train.sampler"]
  configuration.validate(config)
  assert configuration.upgrade_saved(upgraded) == upgraded  # Already new.
