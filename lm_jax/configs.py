"""Checks a resolved experiment config before anything is built.

The locked ConfigDict already rejects unknown keys and wrong types; this adds what a type cannot say: which values
an option allows and which numbers must be positive. Every error names the key, the bad value and what is allowed.
"""

import ml_collections

from lm_jax import data
from lm_jax import models

# Options whose values are a closed set; model and dataset names come from their registries.
CHOICES = {
    'model.name': tuple(models.MODELS),
    'data.name': tuple(data.SOURCES),
    'data.tokenizer': ('sentencepiece', 'wordpiece', 'bytes'),
    'model.task': ('classification', 'lm', 'mlm'),
    'model.attention_bias': ('none', 'relative', 'alibi'),
    'model.positions': ('learned', 'sinusoidal', 'none'),
    'model.pooling': ('cls', 'mean'),
    'model.dtype': ('float32', 'bfloat16'),
    'model.attention': ('dense', 'cudnn'),
    'optim.schedule': ('linear', 'cosine', 'constant'),
    'train.best_mode': ('max', 'min'),
}

POSITIVE = ('data.max_len', 'model.num_layers', 'model.d_model', 'model.num_classes', 'optim.grad_accum_steps',
            'train.batch_size', 'train.eval_batch_size', 'train.log_every_steps', 'train.eval_every_steps',
            'train.checkpoint_every_steps', 'train.max_to_keep')

NON_NEGATIVE = ('optim.learning_rate', 'optim.warmup_steps', 'optim.weight_decay', 'optim.clip_norm',
                'model.dropout')


def _get(config: ml_collections.ConfigDict, dotted: str):
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key, its value and what is allowed."""
  for key, allowed in CHOICES.items():
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
  if config.train.num_steps <= 0 and config.train.num_epochs <= 0:
    raise ValueError('config.train.num_steps and config.train.num_epochs are both <= 0: set one of them > 0.')
  if config.model.task == 'mlm' and config.model.name != 'transformer':
    raise ValueError(f'config.model.task=mlm needs model.name=transformer, got {config.model.name!r}.')
  tasks = data.SOURCES[config.data.name].tasks
  if config.model.task not in tasks:
    raise ValueError(f'config.data.name={config.data.name!r} serves the tasks {tasks}, not '
                     f'config.model.task={config.model.task!r}.')
