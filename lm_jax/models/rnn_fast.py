"""The RNN recurrence's CPU schedule: what `model.fast_rnn` (on by default) runs in place of `rnn.recurrence`.

Same cells, same outputs and gradients as the plain scan in rnn.py (tests/test_rnn.py holds the two paths equal);
everything here exists only for speed on XLA:CPU, where one recurrence keeps one core busy:
- a hand-split backward pass (`recur`, a custom VJP) that leaves the weight gradients to matmuls after the loop;
- the input projection W·x_t + b of many steps as one matmul before the loop;
- the sequence in `TIME_CHUNKS` chunks, the training forward's batch in `BATCH_PARTS` slices, so that XLA has
  independent work for the second core;
- the gates' σ taken from one vectorized tanh pass; transposes materialized once (`optimization_barrier`).
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lm_jax.models import layers

# Time steps per loop iteration of the scans (lax.scan's unroll): larger unrolled bodies compiled slower and ran no
# faster on the 2-core CPU.
UNROLL = 1
# The recurrence runs as this many chunks of time steps, each with its own input projection W·x and, in the backward
# pass, its own dx, dW and dU matmuls. The recurrence is sequential and keeps one core busy; split in chunks, those
# large matmuls of one chunk run on the other core while the recurrence of the next chunk runs.
TIME_CHUNKS = 4
# When training, each time step of the forward scan runs the batch as this many independent slices: separate
# matmuls and gate ops in one loop body, which XLA:CPU runs on separate cores (two whole loops would run one after
# the other). Not used where it measured slower: in the backward scan, where the other core already runs the
# previous time chunk's matmuls, and in the forward without saved residuals (inference), whose loop body is too
# short to be worth handing half to another thread. The scan carries the slices' states apart rather than slicing
# and joining the whole state each step.
BATCH_PARTS = 2


def _sigmoid_from_tanh(tanh_half_x):
  """σ(x) = (1 + tanh(x/2))/2, given tanh(x/2): XLA:CPU vectorizes tanh, while its σ is an exp and a divide per
  element, so the cells take their gates' σ from one tanh pass."""
  return 0.5 * tanh_half_x + 0.5


def _elman(h_BxH, xw_BxG, hu_BxG, _):
  h_BxH = jnp.tanh(xw_BxG + hu_BxG)
  return h_BxH, h_BxH


def _lstm(carry, xw_BxG, hu_BxG, _):
  """All four nonlinearities are one tanh over the whole [B, 4H] gate block (x/2 for the σ gates): one vectorized
  pass instead of one per sliced gate."""
  c_BxH, _ = carry
  hidden = c_BxH.shape[-1]
  half_H, one_H = jnp.full((hidden,), 0.5, jnp.float32), jnp.ones((hidden,), jnp.float32)
  tanh_BxG = jnp.tanh((xw_BxG + hu_BxG) * jnp.concatenate([half_H, half_H, one_H, half_H])[None, :])
  i_BxH, f_BxH, g_BxH, o_BxH = jnp.split(tanh_BxG, 4, axis=-1)
  c_BxH = _sigmoid_from_tanh(f_BxH) * c_BxH + _sigmoid_from_tanh(i_BxH) * g_BxH
  h_BxH = _sigmoid_from_tanh(o_BxH) * jnp.tanh(c_BxH)
  return (c_BxH, h_BxH), h_BxH


def _gru(h_BxH, xw_BxG, hu_BxG, bn_H):
  hidden = h_BxH.shape[-1]
  rz_Bx2H = _sigmoid_from_tanh(jnp.tanh(0.5 * (xw_BxG[:, :2 * hidden] + hu_BxG[:, :2 * hidden])))
  r_BxH, z_BxH = jnp.split(rz_Bx2H, 2, axis=-1)
  xn_BxH, hn_BxH = xw_BxG[:, 2 * hidden:], hu_BxG[:, 2 * hidden:]
  n_BxH = jnp.tanh(xn_BxH + r_BxH * (hn_BxH + bn_H[None, :]))
  h_BxH = (1.0 - z_BxH) * n_BxH + z_BxH * h_BxH
  return h_BxH, h_BxH


class FusedCell(NamedTuple):
  """rnn.py's cell as `step(carry, W·x_t + b, U·h_{t-1}, bn) -> (carry, h_t)`: the two linear terms come in apart,
  so the forward can save U·h_{t-1} and the backward can emit its gradient."""
  step: Callable
  lstm_carry: bool = False  # carry (c, h) rather than h
  sums_inputs: bool = True  # step reads W·x_t + b and U·h_{t-1} only through their sum: both have one gradient

  def hidden(self, carry):
    return carry[1] if self.lstm_carry else carry


FUSED_CELLS = {'rnn': FusedCell(_elman), 'lstm': FusedCell(_lstm, lstm_carry=True),
               'gru': FusedCell(_gru, sums_inputs=False)}


def _reset(carry, start_B):
  """The state is zero at a document start."""
  return jax.tree.map(lambda c: jnp.where(start_B[:, None], 0.0, c), carry)


def _recurrent_term(cell: FusedCell, dtype, u_HxG, carry):
  """U·h_{t-1}, float32 `[B, gates·H]`."""
  return jnp.dot(cell.hidden(carry).astype(dtype), u_HxG.astype(dtype), preferred_element_type=jnp.float32)


def _update(cell: FusedCell, bn_H, carry, xw_BxG, hu_BxG, real_B):
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
  """aᵀ as its own array: XLA:CPU folds a transpose into a matmul as a transposed operand, which runs slower."""
  return jax.lax.optimization_barrier(a_MxN.T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def recur(cell, dtype, reverse, w_IxG, b_G, u_HxG, bn_H, carry, x_TxBxI, real_TxB, start_TxB):
  """The input projection and the recurrence over time-major inputs → (final carry, h_t `[T, B, H]`), with a
  hand-split backward pass.

  Autodiff of a scan accumulates dU = Σ_t h_{t-1}ᵀ·d(U·h)_t inside the backward loop: a [B]-deep outer product
  per step, far below matmul speed on CPU. Here the forward saves U·h_{t-1}, the backward loop carries only the
  state's cotangent and emits d(U·h)_t, and the weight gradients are matmuls after it: one matmul per step in each
  direction. dW and dU are one `[I + H, T·B] × [T·B, gates·H]` matmul when the cell sums W·x and U·h (their
  gradients are then equal).
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
  ut_GxH = _materialized_transpose(u_HxG.astype(dtype))  # once, for the loop's matmul

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


def time_chunks(steps: int, reverse: bool) -> list[tuple[int, int]]:
  """[(start, end)] of `TIME_CHUNKS` near-equal spans of `steps`, in the order the recurrence visits them.

  time_chunks(9, reverse=False) == [(0, 2), (2, 4), (4, 6), (6, 9)]; reverse=True visits them last first.
  """
  chunks = max(1, min(TIME_CHUNKS, steps))
  edges = [steps * i // chunks for i in range(chunks + 1)]
  spans = list(zip(edges[:-1], edges[1:]))
  return spans[::-1] if reverse else spans


def recurrence(name: str, dtype, reverse: bool, weights, carry, x_TxBxI, real_TxB, starts_TxB):
  """`rnn.recurrence` on this schedule: same arguments (`weights` an `rnn.Weights`, float32), same results.

  The input projection of a time chunk is one `[T·B, I] × [I, gates·H]` matmul; only U·h_{t-1} stays inside the
  scan (as cuDNN and torch).
  """
  cell = FUSED_CELLS[name]
  w_IxG, u_HxG, b_G = weights.W, weights.U, weights.b
  bn_H = jnp.zeros((u_HxG.shape[0],), jnp.float32) if weights.bn is None else weights.bn
  y_chunks = {}
  for start, end in time_chunks(x_TxBxI.shape[0], reverse):
    carry, y_chunks[start] = recur(cell, dtype, reverse, w_IxG, b_G, u_HxG, bn_H, carry,
                                   x_TxBxI[start:end], real_TxB[start:end], starts_TxB[start:end])
  return carry, jnp.concatenate([y_chunks[start] for start in sorted(y_chunks)], axis=0)
