"""Sweep files: named variants of experiment configs, as Zoology's sweep files are lists of configs.

A sweep is a Python file (experiments/ablations/NAME.py) whose `get_sweep()` returns a list of `Variant`s, usually
built by `grid`:

    def get_sweep():
      return grid('experiments/recall.py',
                  {'lstm': {'model.name': 'lstm'}, 'gru': {'model.name': 'gru'}},    # axis 1
                  {'T64': {'data.max_len': 64}, 'T128': {'data.max_len': 128}},      # axis 2
                  seeds=(0, 1))

gives 8 runs: lstm-T64_seed0, lstm-T128_seed0, gru-T64_seed0, gru-T128_seed0, then the same with seed1. Seeds
are the outer loop, so a sweep stopped half-way has every variant at least once. `lm_jax.ablate` runs them in this
order, each in DIR/<run name>, and merges the seeds of one variant name into one row of its table.
"""

import dataclasses
import itertools
import os
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from lm_jax import configs
from lm_jax import models

_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.=+-]*')


@dataclasses.dataclass(frozen=True)
class Variant:
  """One run of a sweep: an experiment config, dotted-key overrides and a seed.

  `init_from` names an earlier run of the same sweep (its run name): this run starts from that run's weights and
  tokenizer (config.init_from = DIR/<that run>). `labels` are the grid labels that make up the name, one per axis;
  the plots use them to tell which axis a line follows.
  """
  name: str
  config: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  seed: int | None = None          # None: the config's own seed
  init_from: str = ''
  labels: tuple[str, ...] = ()

  def __post_init__(self):
    if not _NAME.fullmatch(self.name):
      raise ValueError(f'Variant name {self.name!r} must be letters, digits and _.=+- (it names a directory).')

  @property
  def run_name(self) -> str:
    """The run's directory name: the variant name, plus the seed when the variant sets one."""
    return self.name if self.seed is None else f'{self.name}_seed{self.seed}'


def grid(config: str, *axes: Mapping[str, Mapping[str, Any]], seeds: Sequence[int | None] = (None,),
         overrides: Mapping[str, Any] | None = None) -> list[Variant]:
  """Every combination of one label per axis, for every seed (outer loop); see the module docstring.

  Each axis maps a label to the overrides it stands for; a variant's name is its labels joined with '-' and its
  overrides are `overrides` (shared by all) updated by each axis's. Two axes may not set the same key.
  """
  variants = []
  for seed in seeds:
    for choice in itertools.product(*(axis.items() for axis in axes)):
      merged = dict(overrides or {})
      for position, (label, axis_overrides) in enumerate(choice):
        if clash := set(axis_overrides) & set().union(*(set(o) for _, o in choice[:position])):
          raise ValueError(f'grid: axes {[l for l, _ in choice[:position + 1]]} both set {sorted(clash)}.')
        merged.update(axis_overrides)
      labels = tuple(label for label, _ in choice)
      variants.append(Variant('-'.join(labels), config, merged, seed=seed, labels=labels))
  return variants


def load(spec: str) -> list[Variant]:
  """The variants of `path/to/sweep.py[:variant]`, checked: unique run names, each init_from an earlier run.

  The `:variant` string goes to `get_sweep(variant)`, as experiment files get theirs (configs.parse_variant).
  """
  path = spec.partition(':')[0]
  variants = list(configs.call_file(spec, 'get_sweep', kind='Sweep'))
  seen = set()
  for variant in variants:
    if variant.run_name in seen:
      raise ValueError(f'{path}: two variants have the run name {variant.run_name!r}.')
    if variant.init_from and variant.init_from not in seen:
      raise ValueError(f'{path}: {variant.run_name} has init_from={variant.init_from!r}, which is not the run name '
                       'of an earlier variant (variants run in order).')
    seen.add(variant.run_name)
  return variants


def parse_overrides(config: ml_collections.ConfigDict, items: Sequence[str]) -> dict[str, Any]:
  """`['train.num_steps=10', 'data.download=false']` → typed values, each of its key's type in `config`."""
  overrides = {}
  for item in items:
    key, has_value, text = item.partition('=')
    if not has_value:
      raise ValueError(f'--override {item!r} is not key=value.')
    if problem := configs.unknown_key(config, key):
      raise ValueError(f'--override {item!r}: {problem}.')
    section = config
    *parents, name = key.split('.')
    for part in parents:
      section = section[part]
    overrides[key] = configs.parse_value(text, like=section[name], what=f'--override {key}')
  return overrides


def resolve(variant: Variant, workdir: str, extra: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The variant's locked, validated config; `workdir` is the sweep's directory (for init_from).

  `extra` are `key=value` overrides for every variant (e.g. `data.tfds_data_dir=/data`), applied last.
  """
  config = configs.load(variant.config)
  overrides = dict(variant.overrides)
  if variant.seed is not None:
    overrides['seed'] = variant.seed
  if variant.init_from:
    overrides['init_from'] = os.path.join(workdir, variant.init_from)
  overrides.update(parse_overrides(config, extra))
  config = configs.override(config, overrides)
  configs.validate(config)
  return config


# ---------------------------------------------------------------------------------------------------- sizes

def vocab_size(data_config) -> int:
  """The vocabulary a run of `data_config` will have, without building the data (sentencepiece: at most this)."""
  if data_config.name != 'mqar' and data_config.tokenizer == 'bytes':
    return 256 + 6
  if data_config.name != 'mqar' and data_config.tokenizer == 'wordpiece':
    with open(data_config.wordpiece_vocab, encoding='utf-8') as f:
      return sum(1 for _ in f)
  return data_config.vocab_size


def count_params(config: ml_collections.ConfigDict, vocab: int | None = None) -> int:
  """Parameters of the config's model, from shapes alone (`jax.eval_shape`: nothing is allocated)."""
  vocab = vocab_size(config.data) if vocab is None else vocab
  model = models.get_model(config.model, vocab_size=vocab, max_len=config.data.max_len)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, config.data.max_len), jnp.int32))
  return models.count_params(shapes['params'])
