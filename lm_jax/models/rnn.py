"""RNN family (Elman RNN, LSTM, GRU) with the transformer's input/output contract.

ids `[B, T]` (pad id 0) → embedding `[B, T, H]` → num_layers recurrences of hidden size H = model.d_model (a
forward one, plus a backward one per layer in a bidirectional classifier) → 'classifier_head' or 'lm_head'.
Padding never updates the state, so padding after the real tokens changes neither the final state nor the pooled
output; in a packed LM row the state is reset to zero at each document start. The attention keys of `config.model`
(num_heads, mlp_dim, attention, attention_bias, positions, pre_norm) do not apply to recurrences and are ignored.
"""

import dataclasses
from typing import Any

import flax.linen as nn
from flax.linen import dtypes
import jax
import jax.numpy as jnp

from lm_jax.models import layers

TASKS = ('classification', 'lm')


class ElmanCell(nn.RNNCellBase):
  """h_t = tanh(W·x_t + U·h_{t-1} + b) (Elman, 1990); the carry and the output are both h."""
  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h_BxH, x_BxI):
    w_IxH = self.param('W', nn.initializers.lecun_normal(), (x_BxI.shape[-1], self.features), self.param_dtype)
    u_HxH = self.param('U', nn.initializers.orthogonal(), (self.features, self.features), self.param_dtype)
    b_H = self.param('b', nn.initializers.zeros, (self.features,), self.param_dtype)
    x_BxI, h_BxH, w_IxH, u_HxH, b_H = dtypes.promote_dtype(x_BxI, h_BxH, w_IxH, u_HxH, b_H, dtype=self.dtype)
    h_BxH = jnp.tanh(x_BxI @ w_IxH + h_BxH @ u_HxH + b_H)
    return h_BxH, h_BxH

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    del rng  # the state starts at zero
    return jnp.zeros(input_shape[:-1] + (self.features,), self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


CELLS = {'rnn': ElmanCell, 'lstm': nn.OptimizedLSTMCell, 'gru': nn.GRUCell}


@dataclasses.dataclass(frozen=True)
class RNNConfig:
  """Everything an RNN module needs; built from `config.model` by `build`."""
  cell: str
  vocab_size: int
  num_layers: int = 1
  d_model: int = 32
  dropout: float = 0.0
  bidirectional: bool = True
  pooling: str = 'cls'
  tie_embeddings: bool = True
  num_classes: int = 2
  dtype: str = 'float32'

  def __post_init__(self):
    layers.check_choice('model.name', self.cell, tuple(CELLS))
    layers.check_choice('model.pooling', self.pooling, layers.POOLINGS)
    layers.check_choice('model.dtype', self.dtype, tuple(layers.DTYPES))
    layers.check_dropout(self.dropout)

  @property
  def compute_dtype(self):
    return layers.DTYPES[self.dtype]


class _Step(nn.Module):
  """One time step of the cell: the state resets to zero at a document start and stays unchanged at padding."""
  cell: str
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, carry, inputs):
    x_BxI, real_B, start_B = inputs
    carry = jax.tree.map(lambda c: jnp.where(start_B[:, None], jnp.zeros_like(c), c), carry)
    new_carry, y_BxH = CELLS[self.cell](self.features, dtype=self.dtype, name='cell')(carry, x_BxI)
    # The state stays float32 under bfloat16 compute, so the scan carry keeps one dtype.
    carry = jax.tree.map(lambda new, old: jnp.where(real_B[:, None], new.astype(old.dtype), old), new_carry, carry)
    return carry, y_BxH


class Recurrence(nn.Module):
  """One direction of one layer, `[B, T, I]` → `[B, T, H]`; with `decode` the state carries over in 'cache'."""
  cell: str
  features: int
  reverse: bool
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxI, real_BxT, starts_BxT, decode: bool):
    # All three cells start from zeros, so the key is never drawn from.
    zero_carry = CELLS[self.cell](self.features, parent=None).initialize_carry(jax.random.key(0), x_BxTxI[:, 0].shape)
    state = self.variable('cache', 'state', lambda: zero_carry) if decode else None
    scan = nn.scan(_Step, variable_broadcast='params', split_rngs={'params': False}, in_axes=1, out_axes=1,
                   reverse=self.reverse)
    carry, y_BxTxH = scan(self.cell, self.features, self.dtype, name='step')(
        zero_carry if state is None else state.value, (x_BxTxI, real_BxT, starts_BxT))
    if state is not None:
      state.value = carry
    return y_BxTxH


class RNN(nn.Module):
  """The trunk: ids `[B, T]` → `[B, T, H]` (or `[B, T, 2H]`, forward features first, when bidirectional)."""
  config: RNNConfig
  bidirectional: bool

  def setup(self):
    cfg = self.config
    self.token_embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    recurrence = lambda reverse: Recurrence(cfg.cell, cfg.d_model, reverse=reverse, dtype=cfg.compute_dtype)
    self.forward = [recurrence(False) for _ in range(cfg.num_layers)]
    self.backward = [recurrence(True) for _ in range(cfg.num_layers if self.bidirectional else 0)]
    self.dropout = layers.Dropout(cfg.dropout)

  @nn.compact
  def __call__(self, inputs_BxT, *, train: bool, starts_BxT, decode: bool):
    real_BxT = inputs_BxT != layers.PAD_ID
    x_BxTxF = self.token_embed(inputs_BxT)
    # A zero 'perturbations' entry whose gradient is the gradient w.r.t. the embeddings (causality tests); made
    # only on request (`mutable=['perturbations']`), so `init` returns params alone.
    if not self.is_initializing():
      x_BxTxF = self.perturb('embedded', x_BxTxF)
    x_BxTxF = self.dropout(x_BxTxF, train=train)
    for i, forward in enumerate(self.forward):
      directions = [forward(x_BxTxF, real_BxT, starts_BxT, decode)]
      if self.bidirectional:
        directions.append(self.backward[i](x_BxTxF, real_BxT, starts_BxT, decode))
      x_BxTxF = jnp.concatenate(directions, axis=-1)
      if i + 1 < len(self.forward):
        x_BxTxF = self.dropout(x_BxTxF, train=train)
    return x_BxTxF


def document_starts(inputs_BxT, segment_ids_BxT=None, positions_BxT=None) -> jax.Array:
  """bool `[B, T]`: where a packed document begins (the segment id changes, or the position restarts at 0).

  document_starts(ids, segment_ids=[[1, 1, 2, 2, 0]]) == [[0, 0, 1, 0, 1]]
  """
  starts_BxT = jnp.zeros(inputs_BxT.shape, bool)
  if segment_ids_BxT is not None:
    changes_BxT = segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]
    starts_BxT = starts_BxT | jnp.pad(changes_BxT, ((0, 0), (1, 0)))
  if positions_BxT is not None:
    starts_BxT = starts_BxT | (positions_BxT == 0)
  return starts_BxT


def final_states(h_BxTxF, inputs_BxT, hidden: int) -> jax.Array:
  """'cls' pooling for RNNs: the forward output at the last real token (+ the backward output at token 0)."""
  last_B = jnp.maximum((inputs_BxT != layers.PAD_ID).sum(axis=1) - 1, 0)
  forward_BxH = jnp.take_along_axis(h_BxTxF[..., :hidden], last_B[:, None, None], axis=1)[:, 0]
  if h_BxTxF.shape[-1] == hidden:
    return forward_BxH
  return jnp.concatenate([forward_BxH, h_BxTxF[:, 0, hidden:]], axis=-1)


class RNNModel(nn.Module):
  """task 'classification' → {'encoder', 'classifier_head'}; 'lm' → {'decoder', 'lm_head'}.

  Same call as `TransformerModel`. A classifier pools with 'cls' = final states (forward after the last real token,
  backward after token 0) or 'mean' over the non-pad outputs; an LM is always forward-only (bidirectional ignored).
  """
  config: RNNConfig
  task: str

  def __post_init__(self):
    layers.check_choice(f'model.task (model.name={self.config.cell!r})', self.task, TASKS)
    super().__post_init__()

  @property
  def max_decode_length(self) -> None:
    """A recurrence carries a fixed-size state: `generate` has no length limit."""
    return None

  @nn.compact
  def __call__(self, inputs_BxT, *, train: bool = False, segment_ids=None, positions=None, decode: bool = False):
    cfg = self.config
    is_lm = self.task == 'lm'
    if not is_lm and (segment_ids is not None or positions is not None or decode):
      raise ValueError('An RNN classifier reads one unpacked sequence per row: segment_ids, positions and decode '
                       'are for model.task=lm.')
    if decode and (segment_ids is not None or positions is not None):
      raise ValueError('decode=True takes unpacked prompts: pass neither segment_ids nor positions.')
    trunk = RNN(cfg, bidirectional=cfg.bidirectional and not is_lm, name='decoder' if is_lm else 'encoder')
    h_BxTxF = trunk(inputs_BxT, train=train, starts_BxT=document_starts(inputs_BxT, segment_ids, positions),
                    decode=decode)
    if is_lm:
      return layers.OutputHead(cfg.vocab_size, cfg.tie_embeddings, transform=False, dtype=cfg.compute_dtype,
                               name='lm_head')(h_BxTxF, trunk.token_embed)
    pooled_BxF = (layers.mean_pool(h_BxTxF, inputs_BxT) if cfg.pooling == 'mean'
                  else final_states(h_BxTxF, inputs_BxT, cfg.d_model))
    return layers.ClassifierHead(cfg.num_classes, cfg.dropout, cfg.compute_dtype, name='classifier_head')(
        pooled_BxF, train=train)


def build(model_config, *, vocab_size: int, max_len: int) -> RNNModel:
  """`config.model` (name rnn | lstm | gru) → the module for `model_config.task`."""
  del max_len  # a recurrence has no position table
  mc = model_config
  config = RNNConfig(cell=mc.name, vocab_size=vocab_size, num_layers=mc.num_layers, d_model=mc.d_model,
                     dropout=mc.dropout, bidirectional=mc.bidirectional, pooling=mc.pooling,
                     tie_embeddings=mc.tie_embeddings, num_classes=mc.num_classes, dtype=mc.dtype)
  return RNNModel(config, task=mc.task)
