"""AdamW with warmup + decay schedules, weight decay on matrices only, global-norm clipping, gradient accumulation.

    lr(t)    = peak · t / warmup                                 t < warmup
    lr(t)    = peak · decay(clip((t − warmup) / (total − warmup)))   t >= warmup, clip to [0, 1]
    decay(p) = 1 − p (linear) | ½(1 + cos πp) (cosine) | 1 (constant)

Steps count optimizer updates. Gradient accumulation (`grad_accum_steps`) happens inside the train step (a scan
over micro-batches), so the optimizer always sees one averaged gradient per step.

A table that is only looked up (a classifier's token embedding) has a zero gradient outside the batch's ids. The
train step gives its gradient as a `RowGradient`, and `AdamW.update` computes optax's update from those rows and, for
every other row, AdamW's zero-gradient step (m ← β₁m, v ← β₂v, p ← p − lr·(m̂/(√v̂ + ε) + λp)) in place: the dense
gradient, its zero-fill and scatter, and two reads of it are never made (3 of the 30522×256 table's 11 passes; the
LSTM bench step ~4% faster, BENCHMARKS.md), and replicas gather their rows instead of all-reducing the table.
"""

from collections.abc import Callable
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES: dict[str, Callable[[jax.Array], jax.Array]] = {
    'linear': lambda progress: 1.0 - progress,
    'cosine': lambda progress: 0.5 * (1.0 + jnp.cos(math.pi * progress)),
    'constant': jnp.ones_like,
}


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then `schedule` decay to 0 at `total_steps`."""
  if optim_config.schedule not in SCHEDULES:
    raise ValueError(f'optim.schedule={optim_config.schedule!r}; allowed: {", ".join(SCHEDULES)}.')
  if total_steps < 1:
    raise ValueError(f'total_steps={total_steps}; must be >= 1.')
  if optim_config.warmup_steps < 0:
    raise ValueError(f'optim.warmup_steps={optim_config.warmup_steps}; must be >= 0.')
  peak = optim_config.learning_rate
  warmup = optim_config.warmup_steps
  decay = SCHEDULES[optim_config.schedule]
  decay_steps = max(total_steps - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup_lr = peak * step / max(warmup, 1)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    return jnp.where(step < warmup, warmup_lr, peak * decay(progress))

  return schedule


def decay_mask(params):
  """True for leaves with ndim >= 2 (kernels, embedding tables), False for biases and LayerNorm scales/biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


class RowGradient(NamedTuple):
  """The gradient of a table that was only looked up: row `ids[k]` has gradient `rows[k]`, every other row zero.

  ids are unique; unused slots hold the table's row count, out of range, and are dropped.
  """
  ids: jax.Array   # int32 [N]
  rows: jax.Array  # float32 [N, D]


def row_gradient(ids, per_lookup, num_rows: int) -> RowGradient:
  """The gradient of a `[num_rows, D]` table from the gradients of its looked-up vectors: ids `[...]`, per_lookup
  `[..., D]`. Repeated ids sum, as the dense gradient's scatter-add does."""
  ids = ids.reshape(-1)
  unique, slot = jnp.unique(ids, size=ids.size, fill_value=num_rows, return_inverse=True)
  rows = jax.ops.segment_sum(per_lookup.reshape(ids.size, -1).astype(jnp.float32), slot.reshape(-1),
                             num_segments=ids.size)
  return RowGradient(unique, rows)


def is_rows(x) -> bool:
  return isinstance(x, RowGradient)


def gradient_arrays(grads):
  """`grads` with each RowGradient as its rows: the same norms as the dense gradient."""
  return jax.tree.map(lambda g: g.rows if is_rows(g) else g, grads, is_leaf=is_rows)


class AdamW(optax.GradientTransformationExtraArgs):
  """`make_optimizer`'s transformation: optax's, whose `update` also takes `RowGradient` leaves."""


def make_optimizer(optim_config: ml_collections.ConfigDict, total_steps: int) -> AdamW:
  """clip_by_global_norm (when clip_norm > 0) → AdamW on `learning_rate_schedule`, decay masked by `decay_mask`."""
  if optim_config.clip_norm < 0:
    raise ValueError(f'optim.clip_norm={optim_config.clip_norm}; must be >= 0 (0 = no clipping).')
  schedule = learning_rate_schedule(optim_config, total_steps)
  tx = optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                   weight_decay=optim_config.weight_decay, mask=decay_mask)
  if optim_config.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.clip_norm), tx)

  def update(grads, state, params=None, **extra_args):
    if not any(is_rows(g) for g in jax.tree.leaves(grads, is_leaf=is_rows)):
      return tx.update(grads, state, params, **extra_args)
    return _update_with_rows(tx, optim_config, schedule, grads, state, params)

  return AdamW(tx.init, update)


def _adam_state(state) -> optax.ScaleByAdamState:
  (adam,) = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
  return adam


def _update_with_rows(tx, optim_config, schedule, grads, state, params):
  """tx.update where some leaves of `grads` are RowGradients.

  Adam's moments are affine in the old ones, m' = β·m + f(g): a zero gradient gives β·m, and zero moments give f(g).
  So optax's update from the rows alone, with the tables' moments zero (the clip's global norm sees every row), gives
  the f(g) to add at the ids to the tables' zero-gradient moments, updated in place: never reading the old moments
  at the ids keeps XLA from copying the tables. The tables' AdamW update then comes from their new moments.
  """
  at_rows = lambda g, x: x.at[g.ids].get(mode='fill', fill_value=0) if is_rows(g) else x
  zero_rows = lambda s, g: jnp.zeros(g.rows.shape, s.dtype) if is_rows(g) else s
  rows_updates, rows_state = tx.update(gradient_arrays(grads), optax.tree_utils.tree_map_params(
      tx, zero_rows, state, grads), jax.tree.map(at_rows, grads, params, is_leaf=is_rows))
  _, zero_gradient_state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  # A state tree holding, at each table's moments, its RowGradient (None elsewhere).
  tables = optax.tree_utils.tree_map_params(tx, lambda _, g: g if is_rows(g) else None, state, grads,
                                            transform_non_params=lambda v: jax.tree.map(lambda _: None, v))
  new_state = jax.tree.map(
      lambda g, rows_value, zero_value: rows_value if g is None else zero_value.at[g.ids].add(rows_value,
                                                                                              mode='drop'),
      tables, rows_state, zero_gradient_state, is_leaf=lambda x: x is None or is_rows(x))
  # optax's AdamW update (scale_by_adam → add_decayed_weights → scale_by_learning_rate), from the new moments.
  old, new = _adam_state(state), _adam_state(new_state)
  b1, b2 = optim_config.b1, optim_config.b2
  step_size = -schedule(old.count)

  def table_update(g, rows_update, param, mu, nu, decay):
    if not is_rows(g):
      return rows_update
    adam = (mu / (1 - b1 ** new.count).astype(mu.dtype)) / (jnp.sqrt(nu / (1 - b2 ** new.count).astype(nu.dtype))
                                                            + optim_config.eps)
    if decay and optim_config.weight_decay:
      adam = adam + optim_config.weight_decay * param
    return jnp.array(step_size, adam.dtype) * adam

  updates = jax.tree.map(table_update, grads, rows_updates, params, new.mu, new.nu, decay_mask(params),
                         is_leaf=is_rows)
  return updates, new_state
