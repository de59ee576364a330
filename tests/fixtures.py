"""The tests' tiny configs, each lm_jax's default config (lm_jax/defaults.py) with a few keys overridden through
`lm_jax.configs.override`, so a misspelled key or a value of the wrong type fails the test that wrote it.

  config({'seed': 1})                        the whole default config, locked, with dotted overrides
  model('lstm', 'lm', d_model=8)             a tiny model section: a 1-layer transformer (16 wide, 2 heads) or RNN,
                                             2 classes when a classifier
  data('text_files', paths=p, max_len=32)    a data section (local sources read bytes unless told otherwise)
  recall({'train.num_steps': 60})            a 1-layer decoder on MQAR: compiles in seconds, learns in ~100 steps
  flags(RECALL)                              the same overrides as `--config.key=value` flags for lm_jax.main

`RECALL` sets every key experiments/recall.py sets, so `--config experiments/recall.py` plus `flags(RECALL)` is the
run `recall()` describes: a test can train through the CLI and restore in process.
"""

import jax
import ml_collections

from lm_jax import configs
from lm_jax import defaults

TRANSFORMER = {'num_layers': 1, 'd_model': 16, 'num_heads': 2, 'mlp_dim': 32, 'num_classes': 2}
RNN = {'num_layers': 1, 'd_model': 16, 'num_classes': 2}
LOCAL_SOURCES = ('text_files', 'csv', 'jsonl')

RECALL = {
    'data.name': 'mqar', 'data.vocab_size': 32, 'data.max_len': 32, 'data.mqar.num_pairs': 4,
    'data.mqar.num_queries': 4, 'data.mqar.num_eval': 64,
    'model.task': 'lm', 'model.num_layers': 1, 'model.d_model': 32, 'model.num_heads': 2, 'model.mlp_dim': 64,
    'model.attention_bias': 'relative', 'model.smeared_keys': True, 'model.dropout': 0.0,
    'optim.learning_rate': 3e-3, 'optim.warmup_steps': 5, 'optim.weight_decay': 0.1, 'optim.schedule': 'constant',
    'train.batch_size': 16, 'train.eval_batch_size': 32, 'train.num_steps': 20, 'train.log_every_steps': 5,
    'train.eval_every_steps': 10, 'train.checkpoint_every_steps': 10,
}


def config(overrides=None) -> ml_collections.ConfigDict:
  """The default config, locked, with `overrides` ({'model.d_model': 8, ...}) applied."""
  return configs.override(defaults.get_config(), dict(overrides or {}))


def _section(name: str, values: dict) -> dict:
  return {f'{name}.{key}': value for key, value in values.items()}


def model(name: str = 'transformer', task: str = 'classification', **overrides) -> ml_collections.ConfigDict:
  """The model section of a tiny `name` model for `task`; keyword overrides are model keys (`d_model=8`)."""
  tiny = TRANSFORMER if name == 'transformer' else RNN
  return config(_section('model', {**tiny, 'name': name, 'task': task, **overrides})).model


def data(name: str, **overrides) -> ml_collections.ConfigDict:
  """The data section for source `name`; keyword overrides are data keys (`max_len=16`).

  The local sources (text_files, csv, jsonl) use the bytes tokenizer and 32 tokens, so no tokenizer is trained.
  """
  local = {'tokenizer': 'bytes', 'max_len': 32} if name in LOCAL_SOURCES else {}
  return config(_section('data', {'name': name, **local, **overrides})).data


def recall(overrides=None) -> ml_collections.ConfigDict:
  """The whole config of a tiny MQAR run (`RECALL`), with `overrides` ({'train.num_steps': 60}) on top."""
  return config({**RECALL, **dict(overrides or {})})


def flags(overrides: dict) -> list:
  """`overrides` as lm_jax.main's `--config.key=value` arguments."""
  return [f'--config.{key}={value}' for key, value in overrides.items()]


def without_key_bias(params) -> dict:
  """A tree (params, optimizer state) by path, minus any attention key bias: for comparing runs that differ only in
  summation order.

  A key bias has an exactly zero gradient in exact arithmetic (softmax ignores a constant added to all of a query's
  scores), so Adam turns rounding noise there into full-size steps; every other parameter agrees.
  """
  flat = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
      jax.device_get(params))[0]}
  return {name: leaf for name, leaf in flat.items() if not ("'key'" in name and "'bias'" in name)}
