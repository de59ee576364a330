"""RNN family (Elman RNN, LSTM, GRU) with the transformer's input/output contract.

ids `[B, T]` (pad id 0) → embedding `[B, T, H]` → num_layers recurrences of hidden size H = model.d_model (a
forward one, plus a backward one per layer in a bidirectional classifier) → 'classifier_head' or 'lm_head'.
Padding never updates the state, so padding after the real tokens changes neither the final state nor the pooled
output; in a packed LM row the state is reset to zero at each document start. The attention keys of `config.model`
(num_heads, mlp_dim, attention, attention_bias, positions, pre_norm) do not apply to recurrences and are ignored.

This file is the math: each cell as the paper writes it, run by a plain `lax.scan` over time (`recurrence`).
With `model.fast_rnn` (the default) the same cells run on the CPU schedule of rnn_fast.py instead: same outputs
and gradients, faster.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm_jax.models import layers
from lm_jax.models import rnn_fast

TASKS = ('classification', 'lm')


class Weights(NamedTuple):
  """One direction of one layer: W `[I, gates·H]`, U `[H, gates·H]`, b `[gates·H]`, and the GRU's bn `[H]`.

  The gates' input weights are one matrix and their recurrent weights another, gate blocks side by side in the
  order the cell splits them (flax keeps one kernel per gate; the parameter counts are the same).
  """
  W: jax.Array
  U: jax.Array
  b: jax.Array
  bn: jax.Array | None = None


def _linear(a_BxI, w_IxG):
  """a·w in w's dtype (the compute dtype), accumulated in float32."""
  return jnp.dot(a_BxI.astype(w_IxG.dtype), w_IxG, preferred_element_type=jnp.float32)


def elman(p: Weights, h_BxH, x_BxI):
  """h_t = tanh(W·x_t + b + U·h_{t-1}) (Elman, 1990)."""
  h_BxH = jnp.tanh(_linear(x_BxI, p.W) + p.b + _linear(h_BxH, p.U))
  return h_BxH, h_BxH


def lstm(p: Weights, carry, x_BxI):
  """LSTM (Hochreiter & Schmidhuber, 1997; forget gate: Gers et al., 2000):

  i, f, g, o = σ, σ, tanh, σ of (W·x_t + b + U·h_{t-1});  c_t = f⊙c_{t-1} + i⊙g;  h_t = o⊙tanh(c_t).
  """
  c_BxH, h_BxH = carry
  i_BxH, f_BxH, g_BxH, o_BxH = jnp.split(_linear(x_BxI, p.W) + p.b + _linear(h_BxH, p.U), 4, axis=-1)
  i_BxH, f_BxH, g_BxH, o_BxH = jax.nn.sigmoid(i_BxH), jax.nn.sigmoid(f_BxH), jnp.tanh(g_BxH), jax.nn.sigmoid(o_BxH)
  c_BxH = f_BxH * c_BxH + i_BxH * g_BxH
  h_BxH = o_BxH * jnp.tanh(c_BxH)
  return (c_BxH, h_BxH), h_BxH


def gru(p: Weights, h_BxH, x_BxI):
  """GRU (Cho et al., 2014) as cuDNN, torch and flax's GRUCell run it: the reset gate scales U_n·h_{t-1} + bn,
  after the matmul, rather than h_{t-1} before it:

  r, z = σ(W_{r,z}·x_t + b_{r,z} + U_{r,z}·h_{t-1});  n = tanh(W_n·x_t + b_n + r⊙(U_n·h_{t-1} + bn));
  h_t = (1 - z)⊙n + z⊙h_{t-1}.
  """
  xr_BxH, xz_BxH, xn_BxH = jnp.split(_linear(x_BxI, p.W) + p.b, 3, axis=-1)
  hr_BxH, hz_BxH, hn_BxH = jnp.split(_linear(h_BxH, p.U), 3, axis=-1)
  r_BxH, z_BxH = jax.nn.sigmoid(xr_BxH + hr_BxH), jax.nn.sigmoid(xz_BxH + hz_BxH)
  n_BxH = jnp.tanh(xn_BxH + r_BxH * (hn_BxH + p.bn))
  h_BxH = (1.0 - z_BxH) * n_BxH + z_BxH * h_BxH
  return h_BxH, h_BxH


class Cell(NamedTuple):
  """A recurrence `step(weights, carry, x_t) -> (carry, h_t)` over `gates` blocks of H features."""
  gates: int
  step: Callable
  lstm_carry: bool = False  # carry (c, h) rather than h
  gru_bias: bool = False    # the GRU's extra bias bn inside r⊙(U_n·h + bn)

  def zero_carry(self, batch: int, features: int):
    h_BxH = jnp.zeros((batch, features), jnp.float32)
    return (h_BxH, h_BxH) if self.lstm_carry else h_BxH


# Same equations and parameter counts as flax's SimpleCell/LSTMCell/GRUCell.
CELLS = {'rnn': Cell(1, elman), 'lstm': Cell(4, lstm, lstm_carry=True), 'gru': Cell(3, gru, gru_bias=True)}


def _blockwise_orthogonal(gates: int):
  """Init of U [H, gates·H]: one orthogonal H×H block per gate (as flax's per-gate recurrent kernels)."""
  def init(key, shape, dtype=jnp.float32):
    blocks = [nn.initializers.orthogonal()(k, (shape[0], shape[0]), dtype) for k in jax.random.split(key, gates)]
    return jnp.concatenate(blocks, axis=1)
  return init


@dataclasses.dataclass(frozen=True, kw_only=True)
class RNNConfig(layers.ModelConfig):
  """Everything an RNN module needs; built from `config.model` by `from_config` (name = the cell)."""
  name: str
  num_layers: int = 1
  bidirectional: bool = True
  fast_rnn: bool = True

  def __post_init__(self):
    super().__post_init__()
    layers.check_choice('model.name', self.name, tuple(CELLS))
    if self.scan_layers:
      raise ValueError('model.scan_layers=True is for the transformer and the mixers (linear_attention, mamba, '
                       f'rg_lru, griffin); model.name={self.name!r} runs its layers one by one (set it False).')


def recurrence(name: str, dtype, reverse: bool, weights: Weights, carry, x_TxBxI, real_TxB, starts_TxB):
  """The cell over time-major inputs `[T, B, I]` → (final carry, h_t `[T, B, H]`), backwards with `reverse`.

  The state is zero at a document start and unchanged at padding (h_t there is still the cell's output). The
  state stays float32; the matmuls run in `dtype`.
  """
  cell = CELLS[name]
  as_row = lambda v: None if v is None else v[None, :]

  def step(carry, inputs):
    x_BxI, real_B, start_B = inputs
    # Cast inside the step: under bfloat16 compute each step's weight gradient is then summed in float32.
    p = Weights(weights.W.astype(dtype), weights.U.astype(dtype), as_row(weights.b), as_row(weights.bn))
    carry = jax.tree.map(lambda c: jnp.where(start_B[:, None], 0.0, c), carry)
    new_carry, h_BxH = cell.step(p, carry, x_BxI)
    return jax.tree.map(lambda new, old: jnp.where(real_B[:, None], new, old), new_carry, carry), h_BxH

  return jax.lax.scan(step, carry, (x_TxBxI, real_TxB, starts_TxB), reverse=reverse)


class Recurrence(nn.Module):
  """One direction of one layer, `[B, T, I]` → `[B, T, H]`; with `decode` the state carries over in 'cache'.

  `fast` runs `rnn_fast.recurrence` (the CPU schedule) rather than `recurrence` (the plain scan): same results.
  The recurrence works time-major: x is transposed once.
  """
  cell: str
  features: int
  reverse: bool
  dtype: Any
  fast: bool = True

  @nn.compact
  def __call__(self, x_BxTxI, real_BxT, starts_BxT, decode: bool):
    cell, h = CELLS[self.cell], self.features
    weights = Weights(
        W=self.param('W', nn.initializers.lecun_normal(), (x_BxTxI.shape[-1], cell.gates * h), jnp.float32),
        U=self.param('U', _blockwise_orthogonal(cell.gates), (h, cell.gates * h), jnp.float32),
        b=self.param('b', nn.initializers.zeros, (cell.gates * h,), jnp.float32),
        bn=self.param('bn', nn.initializers.zeros, (h,), jnp.float32) if cell.gru_bias else None)
    zero_carry = cell.zero_carry(x_BxTxI.shape[0], h)
    state = self.variable('cache', 'state', lambda: zero_carry) if decode else None
    carry = zero_carry if state is None else state.value
    run = rnn_fast.recurrence if self.fast else recurrence
    carry, y_TxBxH = run(self.cell, self.dtype, self.reverse, weights, carry,
                         jnp.swapaxes(x_BxTxI, 0, 1).astype(self.dtype), real_BxT.T, starts_BxT.T)
    if state is not None:
      state.value = carry
    return jnp.swapaxes(y_TxBxH, 0, 1).astype(self.dtype)


class RNN(nn.Module):
  """The trunk: ids `[B, T]` → `[B, T, H]` (or `[B, T, 2H]`, forward features first, when bidirectional)."""
  config: RNNConfig
  bidirectional: bool

  def setup(self):
    cfg = self.config
    self.token_embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    recurrence_class = layers.remat(Recurrence, cfg.remat, static_argnums=(4,))   # `decode` is static
    direction = lambda reverse: recurrence_class(cfg.name, cfg.d_model, reverse=reverse, dtype=cfg.compute_dtype,
                                                 fast=cfg.fast_rnn)
    self.forward = [direction(False) for _ in range(cfg.num_layers)]
    self.backward = [direction(True) for _ in range(cfg.num_layers if self.bidirectional else 0)]
    self.dropout = layers.Dropout(cfg.dropout)

  @nn.compact
  def __call__(self, inputs_BxT, *, train: bool, starts_BxT, decode: bool):
    real_BxT = inputs_BxT != layers.PAD_ID
    x_BxTxF = self.token_embed(inputs_BxT)
    x_BxTxF = layers.perturbable(self, x_BxTxF)
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
    layers.check_choice(f'model.task (model.name={self.config.name!r})', self.task, TASKS)
    super().__post_init__()

  @property
  def max_decode_length(self) -> None:
    """A recurrence carries a fixed-size state: `generate` has no length limit."""
    return None

  @nn.compact
  def __call__(self, inputs_BxT, *, train: bool = False, segment_ids=None, positions=None, decode: bool = False,
               head_inputs: bool = False):
    cfg = self.config
    is_lm = self.task == 'lm'
    layers.check_head_inputs(head_inputs, self.task)
    if not is_lm and (segment_ids is not None or positions is not None or decode):
      raise ValueError('An RNN classifier reads one unpacked sequence per row: segment_ids, positions and decode '
                       'are for model.task=lm.')
    layers.check_decode_inputs(decode, segment_ids, positions)
    trunk = RNN(cfg, bidirectional=cfg.bidirectional and not is_lm, name='decoder' if is_lm else 'encoder')
    h_BxTxF = trunk(inputs_BxT, train=train, starts_BxT=document_starts(inputs_BxT, segment_ids, positions),
                    decode=decode)
    pool = lambda h: (layers.mean_pool(h, inputs_BxT) if cfg.pooling == 'mean'
                      else final_states(h, inputs_BxT, cfg.d_model))
    return layers.lm_or_classifier_head(cfg, self.task, h_BxTxF, trunk.token_embed, pool, head_inputs=head_inputs,
                                        train=train)


# ---------------------------------------------------------------------------------------------------- model facts
# What the registry, sweeps and FLOP counting ask of a model family (lm_jax.models.FAMILIES).

def _directions(model_config) -> int:
  """A bidirectional classifier reads both directions; an LM only forward."""
  return 2 if model_config.bidirectional and model_config.task == 'classification' else 1


def state_size(model_config) -> tuple[int, str]:
  """(floats, 'per sequence'): the recurrent state, d_model per layer and direction (the LSTM's h and c: 2·d)."""
  vectors = 2 if model_config.name == 'lstm' else 1
  return vectors * model_config.num_layers * model_config.d_model * _directions(model_config), 'per sequence'


def train_flops_per_token(model_config, *, vocab_size: int, seq_len: int) -> float:
  """6·g·h·(e + h) per layer and direction (g = CELLS[name].gates; e = the layer's input width), + the head:
  lm 6·width·V per token, classification 6·width·C per sequence, width = directions·h."""
  directions, d = _directions(model_config), model_config.d_model
  gates = CELLS[model_config.name].gates
  # Stacked layers read the previous layer's outputs, concatenated over directions.
  inputs = [d] + [directions * d] * (model_config.num_layers - 1)
  recurrent = sum(6 * directions * gates * d * (e + d) for e in inputs)
  width = directions * d
  per_token_head = model_config.num_classes / seq_len if model_config.task == 'classification' else vocab_size
  return float(recurrent + 6 * width * per_token_head)


def from_config(model_config, *, vocab_size: int, max_len: int) -> RNNModel:
  """`config.model` (name rnn | lstm | gru) → the module for `model_config.task`."""
  del max_len  # a recurrence has no position table
  return RNNModel(layers.config_from(RNNConfig, model_config, vocab_size=vocab_size), task=model_config.task)
