"""RNN family (Elman RNN, LSTM, GRU) with the transformer's input/output contract.

ids `[B, T]` (pad id 0) → embedding `[B, T, H]` → num_layers recurrences of hidden size H = model.d_model (a
forward one, plus a backward one per layer in a bidirectional classifier) → 'classifier_head' or 'lm_head'.
Padding never updates the state, so padding after the real tokens changes neither the final state nor the pooled
output; in a packed LM row the state is reset to zero at each document start. The attention keys of `config.model`
(num_heads, mlp_dim, attention, attention_bias, positions, pre_norm) do not apply to recurrences and are ignored.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm_jax.models import layers

TASKS = ('classification', 'lm')
# Time steps per loop iteration of the scans (lax.scan's unroll). 1 was faster than 4, 8 and 16 for the LSTM bench
# case on the 2-core CPU (BENCHMARKS.md): larger unrolled bodies compiled slower and ran no faster.
UNROLL = 1
# The recurrence runs as this many chunks of time steps, each with its own input projection W·x and, in the backward
# pass, its own dx, dW and dU matmuls. The recurrence is sequential and keeps one core busy; split in chunks, those
# large matmuls of one chunk run on the other core while the recurrence of the next chunk runs (LSTM bench step on
# 2 cores 0.049 → 0.042 s with 4; BENCHMARKS.md).
TIME_CHUNKS = 4
# When training, each time step of the forward scan runs the batch as this many independent slices: separate
# matmuls and gate ops in one loop body, which XLA:CPU runs on separate cores (two whole loops would run one after
# the other), and the M = 16 recurrent matmul costs twice the M = 8 one. LSTM bench step 0.036 → 0.033 s with 2.
# Measured slower elsewhere, so not used there: in the backward scan, where the other core runs the previous time
# chunk's matmuls (0.035 s), and in the forward without the saved residuals (inference: 7.5 → 11.5 ms), where the
# loop body was short enough that handing half of it to another thread cost more than it saved. The scan carries the
# slices' states apart rather than slicing and joining the whole state each step (~3% of the bench step).
BATCH_PARTS = 2


def _sigmoid_from_tanh(tanh_half_x):
  """σ(x) = (1 + tanh(x/2))/2, given tanh(x/2): XLA:CPU vectorizes tanh, while its σ is an exp and a divide per
  element, so the cells take their gates' σ from one tanh pass."""
  return 0.5 * tanh_half_x + 0.5


def _elman(h_BxH, xw_BxG, hu_BxG, _):
  """h_t = tanh(W·x_t + b + U·h_{t-1}) (Elman, 1990)."""
  h_BxH = jnp.tanh(xw_BxG + hu_BxG)
  return h_BxH, h_BxH


def _lstm(carry, xw_BxG, hu_BxG, _):
  """Gates i, f, g, o = split(W·x_t + b + U·h_{t-1}); c_t = σ(f)·c + σ(i)·tanh(g), h_t = σ(o)·tanh(c_t).

  All four nonlinearities are one tanh over the whole [B, 4H] gate block (x/2 for the σ gates, see
  `_sigmoid_from_tanh`): one vectorized pass instead of one per sliced gate (the recurrence's forward 11.3 → 4.7 ms
  at 16×128, H 256; BENCHMARKS.md).
  """
  c_BxH, _ = carry
  hidden = c_BxH.shape[-1]
  half_H, one_H = jnp.full((hidden,), 0.5, jnp.float32), jnp.ones((hidden,), jnp.float32)
  tanh_BxG = jnp.tanh((xw_BxG + hu_BxG) * jnp.concatenate([half_H, half_H, one_H, half_H])[None, :])
  i_BxH, f_BxH, g_BxH, o_BxH = jnp.split(tanh_BxG, 4, axis=-1)
  c_BxH = _sigmoid_from_tanh(f_BxH) * c_BxH + _sigmoid_from_tanh(i_BxH) * g_BxH
  h_BxH = _sigmoid_from_tanh(o_BxH) * jnp.tanh(c_BxH)
  return (c_BxH, h_BxH), h_BxH


def _gru(h_BxH, xw_BxG, hu_BxG, bn_H):
  """r, z = σ(W·x_t + b + U·h_{t-1}); n = tanh(W_n·x_t + b_n + r·(U_n·h_{t-1} + bn)); h_t = (1-z)·n + z·h."""
  hidden = h_BxH.shape[-1]
  rz_Bx2H = _sigmoid_from_tanh(jnp.tanh(0.5 * (xw_BxG[:, :2 * hidden] + hu_BxG[:, :2 * hidden])))
  r_BxH, z_BxH = jnp.split(rz_Bx2H, 2, axis=-1)
  xn_BxH, hn_BxH = xw_BxG[:, 2 * hidden:], hu_BxG[:, 2 * hidden:]
  n_BxH = jnp.tanh(xn_BxH + r_BxH * (hn_BxH + bn_H[None, :]))
  h_BxH = (1.0 - z_BxH) * n_BxH + z_BxH * h_BxH
  return h_BxH, h_BxH


class Cell(NamedTuple):
  """A recurrence as `step(carry, W·x_t + b, U·h_{t-1}, bn) -> (carry, h_t)` over `gates` blocks of H features."""
  gates: int
  step: Callable
  lstm_carry: bool = False  # carry (c, h) rather than h
  gru_bias: bool = False    # the GRU's extra bias bn inside r·(U_n·h + bn)
  sums_inputs: bool = True  # step reads W·x_t + b and U·h_{t-1} only through their sum: both have one gradient

  def zero_carry(self, batch: int, features: int):
    h_BxH = jnp.zeros((batch, features), jnp.float32)
    return (h_BxH, h_BxH) if self.lstm_carry else h_BxH

  def hidden(self, carry):
    return carry[1] if self.lstm_carry else carry


# Same equations and parameter counts as flax's SimpleCell/OptimizedLSTMCell/GRUCell, with the input weights of all
# gates in one matrix W [I, gates·H] so that W·x for every time step is one matmul before the recurrence.
CELLS = {'rnn': Cell(1, _elman), 'lstm': Cell(4, _lstm, lstm_carry=True),
         'gru': Cell(3, _gru, gru_bias=True, sums_inputs=False)}


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

  def __post_init__(self):
    super().__post_init__()
    layers.check_choice('model.name', self.name, tuple(CELLS))


def _reset(carry, start_B):
  """The state is zero at a document start."""
  return jax.tree.map(lambda c: jnp.where(start_B[:, None], 0.0, c), carry)


def _recurrent_term(cell: Cell, dtype, u_HxG, carry):
  """U·h_{t-1}, float32 `[B, gates·H]`."""
  return jnp.dot(cell.hidden(carry).astype(dtype), u_HxG.astype(dtype), preferred_element_type=jnp.float32)


def _update(cell: Cell, bn_H, carry, xw_BxG, hu_BxG, real_B):
  """The cell's step; padding keeps the state. The state stays float32 under bfloat16 compute."""
  new_carry, y_BxH = cell.step(carry, xw_BxG, hu_BxG, bn_H)
  return jax.tree.map(lambda new, old: jnp.where(real_B[:, None], new, old), new_carry, carry), y_BxH


def _scan_forward(cell, dtype, reverse, u_HxG, bn_H, carry, xw_TxBxG, real_TxB, start_TxB, batch_parts=1):
  """(final carry, outputs h_t `[T, B, H]`, (the reset carry entering each step, U·h_{t-1} of each step)).

  With `batch_parts` > 1 each step runs on that many slices of the batch (`BATCH_PARTS`); the scan carries the
  slices' states apart, so a step slices only its inputs and joins only its stacked outputs.
  """
  def step(carry, inputs):
    xw_BxG, real_B, start_B = inputs
    carry = _reset(carry, start_B)
    hu_BxG = _recurrent_term(cell, dtype, u_HxG, carry)
    new_carry, y_BxH = _update(cell, bn_H, carry, xw_BxG, hu_BxG, real_B)
    return new_carry, (y_BxH, (carry, hu_BxG))

  batch = xw_TxBxG.shape[1]
  parts = max(1, min(batch_parts, batch))
  edges = [k * batch // parts for k in range(parts + 1)]
  part = lambda tree, k: jax.tree.map(lambda a: a[edges[k]:edges[k + 1]], tree)
  join = lambda trees: jax.tree.map(lambda *slices: jnp.concatenate(slices, axis=0), *trees)

  def parts_step(carries, inputs):
    results = [step(carries[k], part(inputs, k)) for k in range(parts)]
    return tuple(new_carry for new_carry, _ in results), join([outputs for _, outputs in results])

  carries, (y_TxBxH, saved) = jax.lax.scan(parts_step, tuple(part(carry, k) for k in range(parts)),
                                           (xw_TxBxG, real_TxB, start_TxB), reverse=reverse, unroll=UNROLL)
  return join(carries), y_TxBxH, saved


def project(dtype, w_IxG, b_G, x_TxBxI):
  """The input projection W·x_t + b of every step, float32 `[T, B, gates·H]`: one matmul."""
  return layers.add_bias(jnp.einsum('tbi,ig->tbg', x_TxBxI.astype(dtype), w_IxG.astype(dtype),
                                    preferred_element_type=jnp.float32), b_G)


def _materialized_transpose(a_MxN):
  """aᵀ as its own array: XLA:CPU folds a transpose into a matmul as a transposed operand, ~2x slower there."""
  return jax.lax.optimization_barrier(a_MxN.T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def recur(cell, dtype, reverse, w_IxG, b_G, u_HxG, bn_H, carry, x_TxBxI, real_TxB, start_TxB):
  """The input projection and the recurrence over time-major inputs → (final carry, h_t `[T, B, H]`), with a
  hand-split backward pass.

  Autodiff of a scan accumulates dU = Σ_t h_{t-1}ᵀ·d(U·h)_t inside the backward loop: a [B]-deep outer product
  per step that made the LSTM's backward ~10x its forward on CPU. Here the forward saves U·h_{t-1}, the backward
  loop carries only the state's cotangent and emits d(U·h)_t, and the weight gradients are matmuls after it: one
  matmul per step in each direction. dW and dU are one `[I + H, T·B] × [T·B, gates·H]` matmul when the cell sums
  W·x and U·h (their gradients are then equal).
  """
  carry, y_TxBxH, _ = _scan_forward(cell, dtype, reverse, u_HxG, bn_H, carry, project(dtype, w_IxG, b_G, x_TxBxI),
                                    real_TxB, start_TxB)
  return carry, y_TxBxH


def _recur_fwd(cell, dtype, reverse, w_IxG, b_G, u_HxG, bn_H, carry, x_TxBxI, real_TxB, start_TxB):
  xw_TxBxG = project(dtype, w_IxG, b_G, x_TxBxI)
  carry, y_TxBxH, saved = _scan_forward(cell, dtype, reverse, u_HxG, bn_H, carry, xw_TxBxG, real_TxB, start_TxB,
                                        batch_parts=BATCH_PARTS)
  return (carry, y_TxBxH), (w_IxG, u_HxG, bn_H, saved, xw_TxBxG, x_TxBxI, real_TxB, start_TxB)


def _recur_bwd(cell, dtype, reverse, residuals, cotangents):
  w_IxG, u_HxG, bn_H, (carries, hu_TxBxG), xw_TxBxG, x_TxBxI, real_TxB, start_TxB = residuals
  dcarry, dy_TxBxH = cotangents
  ut_GxH = _materialized_transpose(u_HxG.astype(dtype))  # once, for the loop's matmul (2x slower folded in)

  def step(dcarry, inputs):
    carry, hu_BxG, xw_BxG, real_B, start_B, dy_BxH = inputs
    _, update_vjp = jax.vjp(lambda c, xw, bn, hu: _update(cell, bn, c, xw, hu, real_B), carry, xw_BxG, bn_H, hu_BxG)
    dcarry, dxw_BxG, dbn_H, dhu_BxG = update_vjp((dcarry, dy_BxH.astype(jnp.float32)))
    # The path through U·h_{t-1}: dh += d(U·h)·Uᵀ, into the hidden part of the state.
    _, hidden_vjp = jax.vjp(cell.hidden, carry)
    (dhidden,) = hidden_vjp(jnp.dot(dhu_BxG.astype(dtype), ut_GxH, preferred_element_type=jnp.float32))
    dcarry = _reset(jax.tree.map(jnp.add, dcarry, dhidden), start_B)
    # When the cell sums W·x and U·h, d(W·x) = d(U·h): one [B, gates·H] output per step instead of two.
    return dcarry, (None if cell.sums_inputs else dxw_BxG, dbn_H, dhu_BxG)

  dcarry, (dxw_TxBxG, dbn_TxH, dhu_TxBxG) = jax.lax.scan(
      step, dcarry, (carries, hu_TxBxG, xw_TxBxG, real_TxB, start_TxB, dy_TxBxH), reverse=not reverse,
      unroll=UNROLL)
  steps, batch, input_features = x_TxBxI.shape
  flat = lambda a: a.reshape(steps * batch, a.shape[-1]).astype(dtype)
  x_NxI, h_NxH, dhu_NxG = flat(x_TxBxI), flat(cell.hidden(carries)), flat(dhu_TxBxG)
  dxw_NxG = dhu_NxG if cell.sums_inputs else flat(dxw_TxBxG)
  matmul = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
  if cell.sums_inputs:
    dwu_FxG = matmul(_materialized_transpose(jnp.concatenate([x_NxI, h_NxH], axis=1)), dhu_NxG)
    dw_IxG, du_HxG = dwu_FxG[:input_features], dwu_FxG[input_features:]
  else:
    dw_IxG, du_HxG = matmul(_materialized_transpose(x_NxI), dxw_NxG), matmul(_materialized_transpose(h_NxH), dhu_NxG)
  dx_TxBxI = matmul(dxw_NxG, _materialized_transpose(w_IxG.astype(dtype))).reshape(x_TxBxI.shape)
  db_G = jnp.sum(dhu_TxBxG if cell.sums_inputs else dxw_TxBxG, axis=(0, 1))  # float32, before any bfloat16 cast
  return dw_IxG, db_G, du_HxG, dbn_TxH.sum(axis=0), dcarry, dx_TxBxI.astype(x_TxBxI.dtype), None, None


recur.defvjp(_recur_fwd, _recur_bwd)


class Recurrence(nn.Module):
  """One direction of one layer, `[B, T, I]` → `[B, T, H]`; with `decode` the state carries over in 'cache'.

  The state resets to zero at a document start and stays unchanged at padding. The input projection W·x_t + b of
  the steps of a time chunk (`TIME_CHUNKS`) is one `[T·B, I] × [I, gates·H]` matmul; only U·h_{t-1} stays inside the
  scan (as cuDNN and torch). The recurrence works time-major: x is transposed once, not the 4x wider W·x.
  """
  cell: str
  features: int
  reverse: bool
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxI, real_BxT, starts_BxT, decode: bool):
    cell, h = CELLS[self.cell], self.features
    w_IxG = self.param('W', nn.initializers.lecun_normal(), (x_BxTxI.shape[-1], cell.gates * h), jnp.float32)
    u_HxG = self.param('U', _blockwise_orthogonal(cell.gates), (h, cell.gates * h), jnp.float32)
    b_G = self.param('b', nn.initializers.zeros, (cell.gates * h,), jnp.float32)
    bn_H = self.param('bn', nn.initializers.zeros, (h,), jnp.float32) if cell.gru_bias else jnp.zeros((h,))
    zero_carry = cell.zero_carry(x_BxTxI.shape[0], h)
    state = self.variable('cache', 'state', lambda: zero_carry) if decode else None
    carry = zero_carry if state is None else state.value
    x_TxBxI = jnp.swapaxes(x_BxTxI, 0, 1).astype(self.dtype)
    real_TxB, starts_TxB = real_BxT.T, starts_BxT.T
    y_chunks = {}
    for start, end in _time_chunks(x_TxBxI.shape[0], self.reverse):
      carry, y_chunks[start] = recur(cell, self.dtype, self.reverse, w_IxG, b_G, u_HxG, bn_H, carry,
                                     x_TxBxI[start:end], real_TxB[start:end], starts_TxB[start:end])
    y_TxBxH = jnp.concatenate([y_chunks[start] for start in sorted(y_chunks)], axis=0)
    if state is not None:
      state.value = carry
    return jnp.swapaxes(y_TxBxH, 0, 1).astype(self.dtype)


def _time_chunks(steps: int, reverse: bool) -> list[tuple[int, int]]:
  """[(start, end)] of `TIME_CHUNKS` near-equal spans of `steps`, in the order the recurrence visits them."""
  chunks = max(1, min(TIME_CHUNKS, steps))
  edges = [steps * i // chunks for i in range(chunks + 1)]
  spans = list(zip(edges[:-1], edges[1:]))
  return spans[::-1] if reverse else spans


class RNN(nn.Module):
  """The trunk: ids `[B, T]` → `[B, T, H]` (or `[B, T, 2H]`, forward features first, when bidirectional)."""
  config: RNNConfig
  bidirectional: bool

  def setup(self):
    cfg = self.config
    self.token_embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    recurrence = lambda reverse: Recurrence(cfg.name, cfg.d_model, reverse=reverse, dtype=cfg.compute_dtype)
    self.forward = [recurrence(False) for _ in range(cfg.num_layers)]
    self.backward = [recurrence(True) for _ in range(cfg.num_layers if self.bidirectional else 0)]
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
    if is_lm:
      return layers.OutputHead(cfg.vocab_size, cfg.tie_embeddings, transform=False, dtype=cfg.compute_dtype,
                               name='lm_head')(h_BxTxF, trunk.token_embed, head_inputs=head_inputs)
    pooled_BxF = (layers.mean_pool(h_BxTxF, inputs_BxT) if cfg.pooling == 'mean'
                  else final_states(h_BxTxF, inputs_BxT, cfg.d_model))
    return layers.ClassifierHead(cfg.num_classes, cfg.dropout, cfg.compute_dtype, name='classifier_head')(
        pooled_BxF, train=train)


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
