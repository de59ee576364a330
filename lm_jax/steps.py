"""The pure step functions: `(state, batch) -> (state, metrics)` for training and `(params, batch) -> sums` for
evaluation, and the losses and metrics they compute.

Data parallelism has pmap's semantics, written as `jax.shard_map` under `jax.jit` (what pmap itself is built on in
current JAX): one replica per device, each gets its slice of the global batch, gradients are averaged with
`lax.pmean`. `check_vma=False` keeps pmap's explicit-collective semantics (with it on, JAX would insert the
gradient all-reduce itself).
"""

import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from lm_jax import losses
from lm_jax import models
from lm_jax import optim

# Tokens per block of the fused vocabulary head + loss (lm, mlm): the float32 logits of one block are
# HEAD_CHUNK_TOKENS × vocab (64 MiB at 512 × 32k) instead of the whole batch's.
HEAD_CHUNK_TOKENS = 512


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  rng: jax.Array  # base key; step t uses fold_in(rng, t), so a resumed run draws the same dropout masks


# ---------------------------------------------------------------------------------------------------- losses

def loss_sums(outputs, batch, token_bytes=None):
  """Weighted sums over the batch; divided by `count` they are the means.

  `outputs`: logits `[B, C]` or `[B, T, V]`, or the `layers.HeadInputs` of a vocabulary head, whose loss is
  computed by `losses.fused_head_cross_entropy` without materializing the logits (equal to float32 rounding).
  """
  is_head_inputs = isinstance(outputs, models.HeadInputs)
  targets = batch['label'] if not is_head_inputs and outputs.ndim == 2 else batch['targets']
  weights = batch['weights']
  if is_head_inputs:
    hidden_BxTxD, table_VxD, bias_V = outputs
    loss, correct = losses.fused_head_cross_entropy(
        HEAD_CHUNK_TOKENS, hidden_BxTxD.reshape(-1, hidden_BxTxD.shape[-1]), table_VxD, bias_V,
        targets.reshape(-1), weights.reshape(-1))
  else:
    nll = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), targets)
    loss, correct = jnp.sum(nll * weights), jnp.sum((jnp.argmax(outputs, -1) == targets) * weights)
  sums = {'loss': loss, 'correct': correct, 'count': jnp.sum(weights)}
  if token_bytes is not None:
    sums['bytes'] = jnp.sum(token_bytes[targets] * weights)
  return sums


def apply_for_loss(model, params, batch, perturbations=None, **kwargs):
  """The model's outputs for `loss_sums`: a vocabulary head's `HeadInputs` (fused loss), else the logits."""
  head_inputs = {'head_inputs': True} if getattr(model, 'task', None) in models.VOCABULARY_TASKS else {}
  variables = {'params': params, **({} if perturbations is None else {'perturbations': perturbations})}
  return model.apply(variables, batch['inputs'], **model_kwargs(batch), **head_inputs, **kwargs)


def summarize(sums, task):
  """Turns summed eval metrics into the reported ones."""
  count = max(float(sums['count']), 1e-9)
  out = {'loss': float(sums['loss']) / count, 'accuracy': float(sums['correct']) / count}
  if task in ('lm', 'mlm'):
    out['perplexity'] = math.exp(min(out['loss'], 80.0))
  if 'bytes' in sums and float(sums['bytes']) > 0:
    out['bits_per_byte'] = float(sums['loss']) / math.log(2) / float(sums['bytes'])
  return out


def model_kwargs(batch):
  return {k: batch[k] for k in ('segment_ids', 'positions') if k in batch}


def group_norms(tree, depth: int = 2) -> dict[str, jax.Array]:
  """L2 norms of the subtrees `depth` levels down, by '/'-joined path: {'decoder/layers_0': norm, ...}."""
  squares = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    group = jax.tree_util.keystr(path[:depth], simple=True, separator='/')
    squares[group] = squares.get(group, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return {group: jnp.sqrt(total) for group, total in squares.items()}


# ---------------------------------------------------------------------------------------------------- steps

def _collectives(mesh):
  """(pmean, psum) over 'data'; the identity on one device, where XLA:CPU would still copy every gradient for a
  one-device all-reduce (1.5 ms of a 53 ms LSTM bench step)."""
  if mesh.shape['data'] == 1:
    return (lambda x, _: x), (lambda x, _: x)
  return jax.lax.pmean, jax.lax.psum


# The scalar norms of the log line: the train step computes the gradient's (`grad_norms`) only when asked, and the
# loop the params' and the update's (`param_norms`) on the steps it logs.
NORMS = ('grad_norm', 'param_norm', 'update_norm')


def grad_norms(grads) -> dict:
  """The global gradient norm and the norm per parameter group."""
  return {'grad_norm': optax.tree.norm(grads), 'grad_norms': group_norms(grads)}


@jax.jit
def param_norms(params, new_params) -> dict:
  """The global norms of the params entering a step and of its update (new − old params, the update as applied)."""
  return {'param_norm': optax.tree.norm(params),
          'update_norm': optax.tree.norm(jax.tree.map(jnp.subtract, new_params, params))}


def _tree_get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _tree_set(tree, path, value):
  """A copy of nested dicts `tree` with `value` at `path`."""
  if not path:
    return value
  return {**tree, path[0]: _tree_set(tree[path[0]], path[1:], value)}


def _row_gradient_table(model, optimizer, params, lookups: int) -> tuple[str, ...] | None:
  """The path of the table whose gradient the step gives as rows: one only looked up
  (`models.lookup_only_table`), with fewer `lookups` per step (over all replicas, which gather theirs) than rows,
  for `optim.make_optimizer`'s AdamW (other optimizers take dense gradients)."""
  table = models.lookup_only_table(model) if isinstance(optimizer, optim.AdamW) else None
  return table if table and lookups < _tree_get(params, table).shape[0] else None


def _gathered_rows(mesh, ids, looked_up, num_rows: int) -> optim.RowGradient:
  """The table's gradient from a replica's lookups, averaged over replicas as pmean would: every replica's lookups
  (gathered), each over the replica count."""
  looked_up = looked_up.astype(jnp.float32)
  if mesh.shape['data'] > 1:
    ids = jax.lax.all_gather(ids, 'data', tiled=True)
    looked_up = jax.lax.all_gather(looked_up / mesh.shape['data'], 'data', tiled=True)
  return optim.row_gradient(ids, looked_up, num_rows)


def make_train_step(model, optimizer, mesh, grad_accum_steps, *, skip_nonfinite=False):
  """A jitted `(state, batch, with_norms) -> (state, metrics)`; batch sharded over 'data', state replicated.

  metrics: loss and accuracy, and `grad_norms` when `with_norms` (a bool, traced: one compilation for both) or when
  the loss is not finite (to name the groups that went bad), else NaN. They read only the gradients: a norm of the
  params entering the step would keep a copy of each donated param alive through the update, 3 of the 33 ms of the
  LSTM bench step (BENCHMARKS.md); the loop takes `param_norms` outside the step on the steps it logs.
  With `skip_nonfinite`, a step whose loss or gradients are not finite leaves params and optimizer state unchanged
  and reports `skipped` 1.
  With `optim.make_optimizer`'s AdamW, a token table that is only looked up gets its gradient as an
  `optim.RowGradient` (`_row_gradient_table`): the gradients of the looked-up vectors, summed per id.
  """

  pmean, psum = _collectives(mesh)

  def replica_step(state, batch, with_norms):
    table = _row_gradient_table(model, optimizer, state.params, batch['inputs'].size * mesh.shape['data'])
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index('data'))
    # Each replica sums its losses and divides by the mean weight per replica: pmean over replicas (and the sum over
    # micro-batches) then gives the gradient of the mean loss over the whole global batch.
    denominator = pmean(jnp.sum(batch['weights']), 'data')

    def loss_fn(params, perturbations, micro_batch, rng):
      if table:  # its gradient comes from the perturbations, as rows
        params = _tree_set(params, table, jax.lax.stop_gradient(_tree_get(params, table)))
      outputs = apply_for_loss(model, params, micro_batch, perturbations, train=True, rngs={'dropout': rng})
      sums = loss_sums(outputs, micro_batch)
      return sums['loss'] / denominator, sums

    def micro_step(micro_batch, rng):
      """(grads, sums, gradients of the looked-up vectors or None) of one micro-batch."""
      perturbations = None
      if table:
        _, shapes = jax.eval_shape(functools.partial(apply_for_loss, model, mutable=['perturbations'], train=True,
                                                     rngs={'dropout': rng}), state.params, micro_batch)
        perturbations = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['perturbations'])
      (grads, looked_up), sums = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
          state.params, perturbations, micro_batch, rng)
      return grads, sums, looked_up

    if grad_accum_steps == 1:
      grads, sums, looked_up = micro_step(batch, rng)
    else:  # a scan over micro-batches: the memory of one micro-batch, the gradient of the whole batch
      micro_batches = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)

      def accumulate(total, inputs):
        i, micro_batch = inputs
        grads, sums, looked_up = micro_step(micro_batch, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, total, (grads, sums)), looked_up

      first = jax.tree.map(lambda x: x[0], micro_batches)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda *a: micro_step(*a)[:2], first, rng))
      (grads, sums), looked_up = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro_batches))
      looked_up = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), looked_up)
    if table:
      grads = _tree_set(grads, table, None)   # zeros: its gradient is the rows below
    grads = pmean(grads, 'data')
    sums = psum(sums, 'data')
    if table:
      grads = _tree_set(grads, table, _gathered_rows(mesh, batch['inputs'], jax.tree.leaves(looked_up)[0],
                                                     _tree_get(state.params, table).shape[0]))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': sums['loss'] / sums['count'], 'accuracy': sums['correct'] / sums['count']}
    grad_arrays = optim.gradient_arrays(grads)   # a RowGradient as its rows: the dense gradient's norms
    if skip_nonfinite:
      finite = jnp.isfinite(sums['loss']) & jnp.isfinite(optax.tree.norm(grad_arrays))
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state),
                                       (state.params, state.opt_state))
      metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
    not_computed = lambda g: jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype),
                                          jax.eval_shape(grad_norms, g))
    metrics.update(jax.lax.cond(with_norms | ~jnp.isfinite(metrics['loss']), grad_norms, not_computed, grad_arrays))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  step = jax.shard_map(replica_step, mesh=mesh, in_specs=(P(), P('data'), P()), out_specs=(P(), P()),
                       check_vma=False)
  return jax.jit(step, donate_argnums=0)


def make_eval_step(model, mesh, token_bytes):
  """A jitted `(params, batch) -> summed metrics` over the global batch."""

  def replica_step(params, batch):
    outputs = apply_for_loss(model, params, batch, train=False)
    return _collectives(mesh)[1](loss_sums(outputs, batch, token_bytes), 'data')

  return jax.jit(jax.shard_map(replica_step, mesh=mesh, in_specs=(P(), P('data')), out_specs=P(),
                               check_vma=False))
