"""Experiment configs: checking a resolved config, parsing `:variant`s, loading and overriding experiment files.

The locked ConfigDict already rejects unknown keys and wrong types; `validate` adds what a type cannot say: which
values an option allows and which numbers must be positive. Every error names the key, the bad value and what is
allowed. The allowed values are read from the modules that implement them, so each set is declared once.
"""

import difflib
import importlib.util
import os
import sys

import ml_collections

POSITIVE = ('data.max_len', 'data.vocab_size', 'model.num_layers', 'model.d_model', 'model.num_heads',
            'model.mlp_dim', 'model.rope_theta', 'model.state_dim', 'model.conv_width', 'optim.grad_accum_steps',
            'train.batch_size', 'train.eval_batch_size', 'train.log_every_steps', 'train.eval_every_steps',
            'train.checkpoint_every_steps', 'train.max_to_keep')

NON_NEGATIVE = ('seed', 'model.num_classes', 'optim.learning_rate', 'optim.warmup_steps', 'optim.weight_decay',
                'optim.clip_norm', 'model.dropout', 'model.num_kv_heads', 'model.attention_window')


def _choices() -> dict:
  """Options whose values are a closed set, each read from the module that implements the set."""
  # Imported here: loading an experiment file (flags parsing) must not pay for JAX, Flax and TFDS.
  from lm_jax import checkpoint, data, models, optim  # pylint: disable=g-import-not-at-top
  from lm_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  from lm_jax.models import blocks, layers, transformer  # pylint: disable=g-import-not-at-top
  return {
      'model.name': tuple(models.MODELS),
      'data.name': tuple(data.SOURCES),
      'data.tokenizer': tuple(tokenizers.MAKERS),
      'model.attention_bias': transformer.ATTENTION_BIASES,
      'model.positions': transformer.POSITIONS,
      'model.attention': transformer.ATTENTIONS,
      'model.hidden_act': tuple(transformer.ACTIVATIONS),
      'model.mlp': blocks.MLPS,
      'model.norm': blocks.NORMS,
      'model.pooling': layers.POOLINGS,
      'model.dtype': tuple(layers.DTYPES),
      'optim.schedule': tuple(optim.SCHEDULES),
      'optim.name': tuple(optim.OPTIMIZERS),
      'train.best_mode': checkpoint.BEST_MODES,
  }


def _get(config: ml_collections.ConfigDict, dotted: str):
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key, its value and what is allowed."""
  from lm_jax import data, models  # pylint: disable=g-import-not-at-top
  for key, allowed in _choices().items():
    if _get(config, key) not in allowed:
      raise ValueError(f'config.{key}={_get(config, key)!r} is not one of {allowed}.')
  for key in POSITIVE:
    if _get(config, key) <= 0:
      raise ValueError(f'config.{key}={_get(config, key)!r} must be > 0.')
  for key in NON_NEGATIVE:
    if _get(config, key) < 0:
      raise ValueError(f'config.{key}={_get(config, key)!r} must be >= 0.')
  if not 0 <= config.data.validation_fraction < 1:
    raise ValueError(f'config.data.validation_fraction={config.data.validation_fraction!r} must be in [0, 1).')
  if not 0 <= config.model.dropout < 1:
    raise ValueError(f'config.model.dropout={config.model.dropout!r} must be in [0, 1).')
  if config.train.num_steps <= 0 and config.train.num_epochs <= 0:
    raise ValueError('config.train.num_steps and config.train.num_epochs are both <= 0: set one of them > 0.')
  if config.model.name == 'transformer' and config.model.d_model % config.model.num_heads:
    raise ValueError(f'config.model.d_model={config.model.d_model} must divide by '
                     f'config.model.num_heads={config.model.num_heads}.')
  if config.model.num_kv_heads and config.model.num_heads % config.model.num_kv_heads:
    raise ValueError(f'config.model.num_heads={config.model.num_heads} must divide by '
                     f'config.model.num_kv_heads={config.model.num_kv_heads} (each key/value head serves a group).')
  for owner, tasks in ((f'config.model.name={config.model.name!r}', models.tasks(config.model.name)),
                       (f'config.data.name={config.data.name!r}', data.SOURCES[config.data.name].tasks)):
    if config.model.task not in tasks:
      raise ValueError(f'{owner} serves the tasks {tasks}, not config.model.task={config.model.task!r}.')


# ---------------------------------------------------------------------------------------------------- experiments

def parse_variant(arg: str, **defaults) -> ml_collections.ConfigDict:
  """The `:variant` of an experiment file as typed values, as big_vision's `parse_arg`.

  `arg` is comma-separated `name=value` pairs; a bare `name` sets a boolean to True. Each name must be one of
  `defaults`, and its value is parsed as the default's type:

    parse_variant('local,layers=4', local=False, layers=2)  →  {'local': True, 'layers': 4}
  """
  values = ml_collections.ConfigDict(defaults)
  for item in filter(None, (part.strip() for part in (arg or '').split(','))):
    name, has_value, text = item.partition('=')
    if name not in defaults:
      raise ValueError(f'Unknown variant argument {name!r}; allowed: {", ".join(defaults) or "none"}.')
    values[name] = parse_value(text if has_value else 'true' if isinstance(defaults[name], bool) else '',
                               like=defaults[name], what=f'Variant argument {name}')
  return values


def parse_value(text: str, *, like, what: str):
  """`text` as a value of `like`'s type ('true'/'false' for booleans); ValueError naming `what` otherwise.

    parse_value('4', like=2, what='layers') → 4;  parse_value('yes', like=False, ...) → ValueError
  """
  kind = type(like)
  if kind is bool:
    if text.lower() not in ('true', 'false'):
      raise ValueError(f'{what}={text!r} is not a boolean (true or false).')
    return text.lower() == 'true'
  try:
    return kind(text)
  except ValueError:
    raise ValueError(f'{what}={text!r} is not a {kind.__name__}.') from None


def call_file(spec: str, function: str, *, kind: str):
  """`function(variant)` of the Python file in `path/to/file.py[:variant]` (`function()` without a variant): how
  experiment files (get_config) and sweep files (get_sweep) are read. `kind` names the file in errors."""
  path, _, variant = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{kind} file {path!r} does not exist.')
  module_spec = importlib.util.spec_from_file_location(f'lm_jax_{function}_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return getattr(module, function)(variant) if variant else getattr(module, function)()


def load(spec: str) -> ml_collections.ConfigDict:
  """The locked config of `path/to/experiment.py[:variant]`, as `--config` would load it."""
  # Experiment files import their base as `experiments.X`: the directory above experiments/ must be importable.
  root = os.path.dirname(os.path.dirname(os.path.abspath(spec.partition(':')[0])))
  if root not in sys.path:
    sys.path.insert(0, root)
  config = call_file(spec, 'get_config', kind='Config')
  config.lock()
  return config


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """The default config with the values of `saved` (a run's config.json) for every key it holds: a run saved before
  a key existed gets that key's default; a key lm_jax no longer has is dropped."""
  from lm_jax import defaults  # pylint: disable=g-import-not-at-top
  config = defaults.get_config()

  def merge(section, values):
    for key, value in values.items():
      if key not in section:
        continue
      if isinstance(section[key], ml_collections.ConfigDict):
        merge(section[key], value)
      else:
        section[key] = tuple(value) if isinstance(section[key], tuple) else value

  merge(config, saved)
  return config


def unknown_key(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """Why `dotted` is not a key of `config`, naming the closest valid key; None when it is one.

    unknown_key(c, 'optim.learning_rat') → "config.optim has no key 'learning_rat'; closest: 'learning_rate'"
  """
  section, path = config, 'config'
  for part in dotted.split('.'):
    if not isinstance(section, ml_collections.ConfigDict):
      return f'{path} is a value, not a section: it has no key {part!r}'
    if part not in section:
      keys = sorted(section.keys())
      closest = difflib.get_close_matches(part, keys, n=1)
      hint = f'closest: {closest[0]!r}' if closest else f'valid keys: {", ".join(keys)}'
      return f'{path} has no key {part!r}; {hint}'
    section, path = section[part], f'{path}.{part}'
  return None


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys replaced: `override(c, {'model.name': 'lstm', 'seed': 1})`.

  The copy stays locked, so an unknown key or a value of the wrong type raises, naming the key.
  """
  config = ml_collections.ConfigDict(config.to_dict())   # a deep copy, unlocked for the moment
  config.lock()
  for dotted, value in overrides.items():
    *sections, name = dotted.split('.')
    section = config
    for part in sections:
      section = section[part]
    section[name] = value
  return config
