"""Row gradients: a table that is only looked up trains from the rows the batch touched, as from its dense gradient.

A token table whose only use is looking up the inputs (a classifier's, or an untied LM's input table;
`models.lookup_only_table`) has a zero gradient outside the batch's ids. With `optim.row_gradients` (adamw only)
the train step gives its gradient as a `RowGradient`: the gradient of each looked-up vector, summed per id. AdamW
then updates the table from those rows in place, with g = 0 for every row not looked up:

    rows looked up:   m ← β₁m + (1−β₁)g,   v ← β₂v + (1−β₂)g²
    every other row:  m ← β₁m,             v ← β₂v
    every row:        p ← p − lr·(m̂/(√v̂ + ε) + λp),   m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ)

which is AdamW's update from the dense gradient, without making that gradient: its zero-fill, its scatter-add and
its reads never happen, and replicas gather their rows instead of all-reducing the whole table. The train step
enters this path at one seam, `RowGradients.gradients_and_update`; tests/test_row_gradients.py checks it against
the dense path.
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lm_jax import models
from lm_jax import optim
from lm_jax import steps

Path = tuple[str, ...]


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


def gathered_rows(mesh, ids, looked_up, num_rows: int) -> RowGradient:
  """The table's gradient from a replica's lookups, averaged over replicas as pmean would: every replica's lookups
  (gathered), each over the replica count."""
  looked_up = looked_up.astype(jnp.float32)
  if mesh.shape['data'] > 1:
    ids = jax.lax.all_gather(ids, 'data', tiled=True)
    looked_up = jax.lax.all_gather(looked_up / mesh.shape['data'], 'data', tiled=True)
  return row_gradient(ids, looked_up, num_rows)


def _is_rows(x) -> bool:
  return isinstance(x, RowGradient)


def gradient_arrays(grads):
  """`grads` with each RowGradient as its rows: the same norms as the dense gradient."""
  return jax.tree.map(lambda g: g.rows if _is_rows(g) else g, grads, is_leaf=_is_rows)


def _adam_state(state) -> optax.ScaleByAdamState:
  adams = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  if len(adams) != 1:
    raise ValueError('Row gradients update AdamW only: the optimizer state holds no single scale_by_adam state.')
  return adams[0]


def adamw_update(optimizer, optim_config, schedule, grads, state, params):
  """`optimizer.update` (`optim.make_optimizer`'s adamw) where some leaves of `grads` are RowGradients.

  Adam's moments are affine in the old ones, m' = β·m + f(g): a zero gradient gives β·m, and zero moments give f(g).
  So optax's update from the rows alone, with the tables' moments zero (the clip's global norm sees every row), gives
  the f(g) to add at the ids to the tables' zero-gradient moments, updated in place: never reading the old moments
  at the ids keeps XLA from copying the tables. The tables' AdamW update then comes from their new moments.
  """
  at_rows = lambda g, x: x.at[g.ids].get(mode='fill', fill_value=0) if _is_rows(g) else x
  zero_rows = lambda s, g: jnp.zeros(g.rows.shape, s.dtype) if _is_rows(g) else s
  rows_updates, rows_state = optimizer.update(gradient_arrays(grads), optax.tree_utils.tree_map_params(
      optimizer, zero_rows, state, grads), jax.tree.map(at_rows, grads, params, is_leaf=_is_rows))
  _, zero_gradient_state = optimizer.update(jax.tree.map(jnp.zeros_like, params), state, params)
  # A state tree holding, at each table's moments, its RowGradient (None elsewhere).
  tables = optax.tree_utils.tree_map_params(optimizer, lambda _, g: g if _is_rows(g) else None, state, grads,
                                            transform_non_params=lambda v: jax.tree.map(lambda _: None, v))
  new_state = jax.tree.map(
      lambda g, rows_value, zero_value: rows_value if g is None else zero_value.at[g.ids].add(rows_value,
                                                                                              mode='drop'),
      tables, rows_state, zero_gradient_state, is_leaf=lambda x: x is None or _is_rows(x))
  # optax's AdamW update (scale_by_adam → add_decayed_weights → scale_by_learning_rate), from the new moments.
  old, new = _adam_state(state), _adam_state(new_state)
  b1, b2 = optim_config.b1, optim_config.b2
  step_size = -schedule(old.count)

  def table_update(g, rows_update, param, mu, nu, decay):
    if not _is_rows(g):
      return rows_update
    adam = (mu / (1 - b1 ** new.count).astype(mu.dtype)) / (jnp.sqrt(nu / (1 - b2 ** new.count).astype(nu.dtype))
                                                            + optim_config.eps)
    if decay and optim_config.weight_decay:
      adam = adam + optim_config.weight_decay * param
    return jnp.array(step_size, adam.dtype) * adam

  updates = jax.tree.map(table_update, grads, rows_updates, params, new.mu, new.nu, optim.decay_mask(params),
                         is_leaf=_is_rows)
  return updates, new_state


def _tree_get(tree, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def _tree_set(tree, path: Path, value):
  """A copy of nested dicts `tree` with `value` at `path`."""
  if not path:
    return value
  return {**tree, path[0]: _tree_set(tree[path[0]], path[1:], value)}


@dataclasses.dataclass(frozen=True)
class RowGradients:
  """The train step's row-gradient path for the table at `table`: its gradient from the gradient of the trunk's
  'embedded' perturbation (`layers.perturbable`: the looked-up vectors, plus position and token-type embeddings,
  which add and so share their gradient), its update by `adamw_update`."""
  model: Any
  table: Path
  optim_config: ml_collections.ConfigDict
  schedule: optax.Schedule

  def _micro_step(self, loss_fn, params, micro_batch, rng):
    """((gradients of all params but the table, loss sums), gradients of the looked-up vectors) of a micro-batch."""
    apply = functools.partial(steps.apply_for_loss, self.model, mutable=['perturbations'], train=True,
                              rngs={'dropout': rng})
    _, shapes = jax.eval_shape(apply, params, micro_batch)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['perturbations'])
    table_fixed = lambda p: _tree_set(p, self.table, jax.lax.stop_gradient(_tree_get(p, self.table)))
    (grads, looked_up), sums = jax.grad(lambda p, e: loss_fn(table_fixed(p), micro_batch, rng, e), argnums=(0, 1),
                                        has_aux=True)(params, zeros)
    return (_tree_set(grads, self.table, None), sums), jax.tree.leaves(looked_up)[0]

  def gradients_and_update(self, loss_fn, state, batch, rng, optimizer, mesh, grad_accum_steps):
    """The train step's `(grads, loss sums, updates, opt_state)`, the table's gradient as the rows the batch looked
    up; grads hold the table's gradient as its rows (the dense gradient's norms), the loss sums are this replica's.

    `loss_fn(params, micro_batch, rng, perturbations)`: the train step's.
    """
    micro_step = functools.partial(self._micro_step, loss_fn, state.params)
    (grads, sums), looked_up = steps.over_micro_batches(micro_step, batch, rng, grad_accum_steps)
    rows = gathered_rows(mesh, batch['inputs'], looked_up, _tree_get(state.params, self.table).shape[0])
    grads = _tree_set(steps.collectives(mesh)[0](grads, 'data'), self.table, rows)
    updates, opt_state = adamw_update(optimizer, self.optim_config, self.schedule, grads, state.opt_state,
                                      state.params)
    return gradient_arrays(grads), sums, updates, opt_state


def for_training(model, params, optim_config, total_steps: int,
                 lookups_per_step: int) -> tuple[RowGradients | None, str]:
  """The row-gradient path for `model` and why, for the log; None (the dense gradient) unless `optim.row_gradients`,
  adamw, a table only looked up, and fewer lookups per step (all replicas together) than the table has rows."""
  table = models.lookup_only_table(model)
  if not optim_config.row_gradients:
    return None, 'dense gradients (optim.row_gradients=False)'
  if optim_config.name != 'adamw':
    return None, f'dense gradients: row gradients are derived for adamw only, optim.name={optim_config.name!r}'
  if table is None:
    return None, 'dense gradients: the token table is also the output head, not only looked up'
  num_rows = _tree_get(params, table).shape[0]
  if lookups_per_step >= num_rows:
    return None, (f'dense gradients: {lookups_per_step} lookups per step, not fewer than the {num_rows} rows of '
                  f'{"/".join(table)}')
  return (RowGradients(model, table, optim_config, optim.learning_rate_schedule(optim_config, total_steps)),
          f'row gradients for {"/".join(table)} (optim.row_gradients)')
