"""Model registry: `config.model.name` → a builder of a Flax linen module with one call contract.

    module = get_model(config.model, vocab_size=V, max_len=T)
    params = module.init(rng, inputs_BxT)['params']
    logits = module.apply({'params': params}, inputs_BxT, train=True, rngs={'dropout': key})

inputs int32 `[B, T]` (pad id 0); optional segment_ids/positions int32 `[B, T]` for packed LM/MLM rows. logits
float32: classification `[B, num_classes]`, lm and mlm `[B, T, vocab_size]`. The trunk's params live under
'encoder' (classification, mlm) or 'decoder' (lm), the head's under '<task>_head' (classifier_head, mlm_head,
lm_head). Adding a model is one file (see FAMILIES for what it provides) and one line in FAMILIES.
For lm and mlm, `apply(..., head_inputs=True)` returns `layers.HeadInputs(hidden, table, bias)` in place of the
logits: what the train step's fused head + loss (`losses.fused_head_cross_entropy`) takes.
"""

import math
import types

import flax.linen as nn
import jax

from lm_jax.models import linear_attention, mamba, rg_lru, rnn, transformer
from lm_jax.models.generate import generate
from lm_jax.models.layers import VOCABULARY_TASKS, HeadInputs, check_choice

# model.name → the module of its family. Each family module says what it is:
#   from_config(model_config, *, vocab_size, max_len) → the Flax module for model_config.task
#   TASKS                                             the tasks it has heads for
#   state_size(model_config) → (floats, unit)          what it keeps about the past ('per token' or 'per sequence')
#   train_flops_per_token(model_config, *, vocab_size, seq_len) → forward + backward FLOPs per token
FAMILIES: dict[str, types.ModuleType] = {
    'transformer': transformer,
    'rnn': rnn,
    'lstm': rnn,
    'gru': rnn,
    'linear_attention': linear_attention,
    'mamba': mamba,
    'rg_lru': rg_lru,
    'griffin': rg_lru,
}
MODELS = tuple(FAMILIES)

__all__ = ['FAMILIES', 'MODELS', 'VOCABULARY_TASKS', 'HeadInputs', 'count_params', 'generate', 'get_model',
           'lookup_only_table', 'state_size', 'tasks', 'train_flops_per_token']


def _family(name: str) -> types.ModuleType:
  check_choice('model.name', name, MODELS)
  return FAMILIES[name]


def tasks(name: str) -> tuple[str, ...]:
  """The tasks model `name` serves: tasks('lstm') == ('classification', 'lm')."""
  return _family(name).TASKS


def state_size(model_config) -> tuple[int, str]:
  """(floats, unit) of what the model keeps about the past: a KV cache per token, or a recurrent state per
  sequence. The quantity zoology plots recall against."""
  return _family(model_config.name).state_size(model_config)


def train_flops_per_token(model_config, *, vocab_size: int, seq_len: int) -> float:
  """Training FLOPs (forward + backward) per token of a `seq_len` sequence, by the model-FLOP convention (forward
  2·P·N, backward 4·P·N, embedding gathers free); for MFU."""
  return float(_family(model_config.name).train_flops_per_token(model_config, vocab_size=vocab_size,
                                                                 seq_len=seq_len))


def get_model(model_config, *, vocab_size: int, max_len: int) -> nn.Module:
  """The module named by `model_config.name` for `model_config.task`; unknown values raise ValueError."""
  if model_config.task == 'classification' and model_config.num_classes < 1:
    raise ValueError(f'model.num_classes={model_config.num_classes}: 0 means "as many as the data has", which the '
                     'trainer resolves before building the model; set it > 0 to build a classifier directly.')
  return _family(model_config.name).from_config(model_config, vocab_size=vocab_size, max_len=max_len)


def count_params(params) -> int:
  """Number of scalars in a param tree (arrays or shape structs)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def lookup_only_table(module: nn.Module) -> tuple[str, ...] | None:
  """The params path of the token embedding when looking up the inputs is its only use (a classifier, or an untied
  vocabulary head), else None. Its gradient is then zero outside the batch's ids, and the rows come from the
  gradient of the trunk's 'embedded' perturbation (`layers.perturbable`): the looked-up vectors, plus position and
  token-type embeddings, which add and so share their gradient."""
  if module.task in VOCABULARY_TASKS and module.config.tie_embeddings:
    return None
  return ('decoder' if module.task == 'lm' else 'encoder', 'token_embed', 'embedding')
