"""The pure step functions: `(state, batch) -> (state, metrics)` for training and `(params, batch) -> sums` for
evaluation, and the losses and metrics they compute.

Two ways to run one step over a mesh (lm_jax/sharding.py), the same math:
- a data-only mesh (every device holds whole parameters): pmap's semantics, written as `jax.shard_map` under
  `jax.jit` (what pmap itself is built on in current JAX): one replica per device, each gets its slice of the global
  batch, gradients are averaged with `lax.pmean`. `check_vma=False` keeps pmap's explicit-collective semantics (with
  it on, JAX would insert the gradient all-reduce itself).
- a mesh with `fsdp` or `tensor` axes: `jax.jit` with the shardings of the state and the batch, one global program
  that XLA partitions (GSPMD): it gathers each sharded parameter where it is used and reduce-scatters its gradient.
  Dropout draws one mask for the global batch (the replicas above draw one per replica), so the two agree exactly
  only without dropout.
"""

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lm_jax import losses
from lm_jax import models
from lm_jax import report
from lm_jax import sharding

# Tokens per block of the fused vocabulary head + loss (lm, mlm): the float32 logits of one block are
# HEAD_CHUNK_TOKENS × vocab (64 MiB at 512 × 32k) instead of the whole batch's.
HEAD_CHUNK_TOKENS = 512


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  rng: jax.Array  # base key; step t uses fold_in(rng, t), so a resumed run draws the same dropout masks


# ---------------------------------------------------------------------------------------------------- losses

def loss_sums(outputs, batch, token_bytes=None, predictions: int = 0):
  """Weighted sums over the batch; divided by `count` they are the means.

  `outputs`: logits `[B, C]` or `[B, T, V]`, or the `layers.HeadInputs` of a vocabulary head, whose loss is
  computed by `losses.fused_head_cross_entropy` without materializing the logits (equal to float32 rounding).
  `predictions` > 0 (masked LM): no row has more weighted positions than that (the data caps them,
  data.max_predictions_per_seq), so the head runs on the `predictions` positions of largest weight per row only:
  the same sums, the vocabulary projection on ~15% of the positions.
  """
  is_head_inputs = isinstance(outputs, models.HeadInputs)
  targets = batch['label'] if not is_head_inputs and outputs.ndim == 2 else batch['targets']
  weights = batch['weights']
  if is_head_inputs and 0 < predictions < weights.shape[1]:
    _, positions_BxP = jax.lax.top_k(weights, predictions)   # every weighted position, then weight-0 ones
    gather = lambda x: jnp.take_along_axis(x, positions_BxP.reshape(*positions_BxP.shape, *[1] * (x.ndim - 2)), 1)
    outputs = outputs._replace(hidden_BxTxD=gather(outputs.hidden_BxTxD))
    targets, weights = gather(targets), gather(weights)
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


def summarize(sums, task, label_names=None):
  """Turns summed eval metrics into the reported ones; a classifier's also hold macro_f1, and per_class and
  confusion (`report.classification_report`, classes named by `label_names` or their ids)."""
  count = max(float(sums['count']), 1e-9)
  out = {'loss': float(sums['loss']) / count, 'accuracy': float(sums['correct']) / count}
  if 'confusion' in sums:
    full = report.classification_report(np.asarray(sums['confusion']), label_names)
    out.update(macro_f1=full['macro_f1'], per_class=full['per_class'], confusion=full['confusion'])
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

def collectives(mesh):
  """(pmean, psum) over 'data' for the replicated step; the identity on one replica (where XLA:CPU would still copy
  every gradient for a one-device all-reduce) and in the sharded step (where XLA inserts the collectives)."""
  if mesh.shape['data'] == 1 or not sharding.data_parallel_only(mesh):
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


def over_micro_batches(micro_step, batch, rng, num_micro_batches: int):
  """`micro_step(micro_batch, rng) -> (summed, per_example)` over the batch split into micro-batches: `summed`
  added up, `per_example` (leading axis the micro-batch's examples, or None) put back together in batch order.

  A scan: the memory of one micro-batch, the gradient of the whole batch. Micro-batch i draws fold_in(rng, i).
  """
  if num_micro_batches == 1:
    return micro_step(batch, rng)
  micro_batches = jax.tree.map(lambda x: x.reshape(num_micro_batches, -1, *x.shape[1:]), batch)

  def add_one(total, inputs):
    i, micro_batch = inputs
    summed, per_example = micro_step(micro_batch, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, total, summed), per_example

  first = jax.tree.map(lambda x: x[0], micro_batches)
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda *a: micro_step(*a)[0], first, rng))
  summed, per_example = jax.lax.scan(add_one, zeros, (jnp.arange(num_micro_batches), micro_batches))
  return summed, jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), per_example)


def make_train_step(model, optimizer, mesh, grad_accum_steps, *, skip_nonfinite=False, rows=None,
                    state_shardings=None, mlm_predictions: int = 0):
  """A jitted `(state, batch, with_norms) -> (state, metrics)`, the batch sharded over the mesh's data axes.

  On a data-only mesh the state is replicated and each device runs a replica (see the module docstring); otherwise
  the state is placed by `state_shardings` (`sharding.state_shardings`) and XLA partitions one global step.
  metrics: loss and accuracy, and `grad_norms` when `with_norms` (a bool, traced: one compilation for both) or when
  the loss is not finite (to name the groups that went bad), else NaN. They read only the gradients: a norm of the
  params entering the step would keep a copy of each donated param alive through the update; the loop takes
  `param_norms` outside the step on the steps it logs.
  With `skip_nonfinite`, a step whose loss or gradients are not finite leaves params and optimizer state unchanged
  and reports `skipped` 1.
  `rows`: a `row_gradients.RowGradients` (`row_gradients.for_training`) for the token table whose gradient comes as
  the rows the batch looked up, updated in place by AdamW (data-only meshes); None for the dense gradient.
  `mlm_predictions`: the masked LM's cap on masked positions per row (`loss_sums`' `predictions`); 0 = none.
  """
  replicated = sharding.data_parallel_only(mesh)
  if rows is not None and not replicated:
    raise ValueError('The row-gradient update runs on a data-only mesh (mesh.fsdp = mesh.tensor = 1); pass rows=None.')
  pmean, psum = collectives(mesh)

  def one_step(state, batch, with_norms):
    rng = jax.random.fold_in(state.rng, state.step)
    if replicated:
      rng = jax.random.fold_in(rng, jax.lax.axis_index('data'))
    # Each replica sums its losses and divides by the mean weight per replica: pmean over replicas (and the sum over
    # micro-batches) then gives the gradient of the mean loss over the whole global batch.
    denominator = pmean(jnp.sum(batch['weights']), 'data')

    def loss_fn(params, micro_batch, rng, perturbations=None):
      outputs = apply_for_loss(model, params, micro_batch, perturbations, train=True, rngs={'dropout': rng})
      sums = loss_sums(outputs, micro_batch, predictions=mlm_predictions)
      return sums['loss'] / denominator, sums

    if rows is None:
      micro_step = lambda micro_batch, rng: (jax.grad(loss_fn, has_aux=True)(state.params, micro_batch, rng), None)
      (grads, sums), _ = over_micro_batches(micro_step, batch, rng, grad_accum_steps)
      grads = pmean(grads, 'data')
      if not replicated:   # each device keeps only its shard of each gradient (a reduce-scatter, not an all-reduce)
        grads = jax.lax.with_sharding_constraint(grads, state_shardings.params)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    else:  # the speed layer: the table's gradient as rows, the same update (row_gradients.py)
      grads, sums, updates, opt_state = rows.gradients_and_update(loss_fn, state, batch, rng, optimizer, mesh,
                                                                  grad_accum_steps)
    sums = psum(sums, 'data')
    params = optax.apply_updates(state.params, updates)

    metrics = {'loss': sums['loss'] / sums['count'], 'accuracy': sums['correct'] / sums['count']}
    if skip_nonfinite:
      finite = jnp.isfinite(sums['loss']) & jnp.isfinite(optax.tree.norm(grads))
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state),
                                       (state.params, state.opt_state))
      metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
    not_computed = lambda g: jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype),
                                          jax.eval_shape(grad_norms, g))
    metrics.update(jax.lax.cond(with_norms | ~jnp.isfinite(metrics['loss']), grad_norms, not_computed, grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if replicated:
    step = jax.shard_map(one_step, mesh=mesh, in_specs=(P(), P('data'), P()), out_specs=(P(), P()), check_vma=False)
    return jax.jit(step, donate_argnums=0)
  if state_shardings is None:
    raise ValueError('A mesh with fsdp or tensor axes needs the state_shardings (sharding.state_shardings).')
  everywhere = NamedSharding(mesh, P())
  return jax.jit(one_step, in_shardings=(state_shardings, batch_sharding(mesh), everywhere),
                 out_shardings=(state_shardings, everywhere), donate_argnums=0)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, sharding.batch_spec())


def confusion_counts(logits_BxC, labels_B, weights_B):
  """float32 `[C, C]`: the weight of the examples of class i (row) predicted as class j (column)."""
  classes = logits_BxC.shape[-1]
  true_BxC = jax.nn.one_hot(labels_B, classes) * weights_B[:, None]
  return true_BxC.T @ jax.nn.one_hot(jnp.argmax(logits_BxC, -1), classes)


def make_eval_step(model, mesh, token_bytes, param_shardings=None, mlm_predictions: int = 0):
  """A jitted `(params, batch) -> summed metrics` over the global batch; a classifier's add its confusion matrix.
  `param_shardings` places the params on a mesh with fsdp or tensor axes (replicated on a data-only mesh)."""

  def one_step(params, batch):
    outputs = apply_for_loss(model, params, batch, train=False)
    sums = loss_sums(outputs, batch, token_bytes, predictions=mlm_predictions)
    if not isinstance(outputs, models.HeadInputs) and outputs.ndim == 2:
      sums['confusion'] = confusion_counts(outputs, batch['label'], batch['weights'])
    return collectives(mesh)[1](sums, 'data')

  if sharding.data_parallel_only(mesh):
    return jax.jit(jax.shard_map(one_step, mesh=mesh, in_specs=(P(), P('data')), out_specs=P(), check_vma=False))
  return jax.jit(one_step, in_shardings=(param_shardings, batch_sharding(mesh)),
                 out_shardings=NamedSharding(mesh, P()))
