"""The training loop, top to bottom: config → data → model → train_step → metrics and checkpoints.

Data parallelism has pmap's semantics, written as `jax.shard_map` under `jax.jit` (what pmap itself is built on in
current JAX): one replica per device, each gets its slice of the global batch, gradients are averaged with
`lax.pmean`. `check_vma=False` keeps pmap's explicit-collective semantics (with it on, JAX would insert the
gradient all-reduce itself).
"""

import json
import logging
import math
import os
import shutil
import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lm_jax import checkpoint
from lm_jax import data as data_lib
from lm_jax import metrics as metrics_lib
from lm_jax import models
from lm_jax import optim

# Two CPU "devices" deadlock in the collectives' rendezvous when ~50 steps are queued without a sync point
# (ENVIRONMENT.md). Waiting every few steps costs nothing measurable and keeps the queue short everywhere.
SYNC_EVERY_STEPS = 8
log = logging.getLogger(__name__)
# Config sections that fix the parameters and the tokenizer: a workdir cannot be resumed with other values.
FROZEN_SECTIONS = ('model', 'data')


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  rng: jax.Array  # base key; step t uses fold_in(rng, t), so a resumed run draws the same dropout masks


# ---------------------------------------------------------------------------------------------------- losses

def loss_sums(logits, batch, token_bytes=None):
  """Weighted sums over the batch; divided by `count` they are the means. Works for [B, C] and [B, T, V] logits."""
  targets = batch['label'] if logits.ndim == 2 else batch['targets']
  weights = batch['weights']
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  sums = {
      'loss': jnp.sum(nll * weights),
      'correct': jnp.sum((jnp.argmax(logits, -1) == targets) * weights),
      'count': jnp.sum(weights),
  }
  if token_bytes is not None:
    sums['bytes'] = jnp.sum(token_bytes[targets] * weights)
  return sums


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


# ---------------------------------------------------------------------------------------------------- steps

def make_train_step(model, optimizer, mesh, grad_accum_steps):
  """A jitted `(state, batch) -> (state, metrics)`; batch sharded over 'data', state replicated."""

  def replica_step(state, batch):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index('data'))
    # Each replica sums its losses and divides by the mean weight per replica: pmean over replicas (and the sum over
    # micro-batches) then gives the gradient of the mean loss over the whole global batch.
    denominator = jax.lax.pmean(jnp.sum(batch['weights']), 'data')

    def loss_fn(params, micro_batch, rng):
      logits = model.apply({'params': params}, micro_batch['inputs'], train=True, rngs={'dropout': rng},
                           **model_kwargs(micro_batch))
      sums = loss_sums(logits, micro_batch)
      return sums['loss'] / denominator, sums

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
      grads, sums = grad_fn(state.params, batch, rng)
    else:  # a scan over micro-batches: the memory of one micro-batch, the gradient of the whole batch
      micro_batches = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)

      def accumulate(total, inputs):
        i, micro_batch = inputs
        return jax.tree.map(jnp.add, total, grad_fn(state.params, micro_batch, jax.random.fold_in(rng, i))), None

      first = jax.tree.map(lambda x: x[0], micro_batches)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state.params, first, rng))
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro_batches))
    grads = jax.lax.pmean(grads, 'data')
    sums = jax.lax.psum(sums, 'data')
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': sums['loss'] / sums['count'], 'accuracy': sums['correct'] / sums['count'],
               'grad_norm': optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  step = jax.shard_map(replica_step, mesh=mesh, in_specs=(P(), P('data')), out_specs=(P(), P()), check_vma=False)
  return jax.jit(step, donate_argnums=0)


def make_eval_step(model, mesh, token_bytes):
  """A jitted `(params, batch) -> summed metrics` over the global batch."""

  def replica_step(params, batch):
    logits = model.apply({'params': params}, batch['inputs'], train=False, **model_kwargs(batch))
    return jax.lax.psum(loss_sums(logits, batch, token_bytes), 'data')

  return jax.jit(jax.shard_map(replica_step, mesh=mesh, in_specs=(P(), P('data')), out_specs=P(),
                               check_vma=False))


# ---------------------------------------------------------------------------------------------------- setup

def make_mesh(devices=None):
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_sizes(config, num_devices):
  for key in ('batch_size', 'eval_batch_size'):
    size = config.train[key]
    if size % num_devices:
      raise ValueError(f'config.train.{key}={size} must divide by the device count ({num_devices}).')
  per_device = config.train.batch_size // num_devices
  if per_device % config.optim.grad_accum_steps:
    raise ValueError(f'config.optim.grad_accum_steps={config.optim.grad_accum_steps} must divide the per-device '
                     f'batch ({per_device}).')


def write_or_check_config(config, workdir):
  """Saves the resolved config; on resume, refuses a workdir whose model or data differ (another model's run)."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    changed = [f'{section}.{key}: {saved[section].get(key)!r} -> {value!r}'
               for section in FROZEN_SECTIONS for key, value in current[section].items()
               if saved.get(section, {}).get(key) != value]
    if changed:
      raise ValueError(f'{workdir} holds a run of another model or data ({"; ".join(changed)}). Use a new --workdir, '
                       'or set config.init_from to start from its weights.')
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(current, f, indent=2)


def inherit_tokenizer(init_from, workdir):
  """A run initialized from another reads token ids as that run wrote them: it takes over that run's tokenizer.

  init_from is a workdir or a checkpoint step directory inside one (WORKDIR/checkpoints/STEP).
  """
  own = os.path.join(workdir, 'tokenizer')
  candidates = [os.path.join(init_from, *['..'] * up, 'tokenizer') for up in range(3)]
  source = next((c for c in candidates if os.path.isdir(c)), None)
  if source is None:
    raise FileNotFoundError(f'config.init_from={init_from!r}: no tokenizer/ found in it or its parent run directory; '
                            'init_from must be a workdir of lm_jax.main or a checkpoint step inside one.')
  if not os.path.exists(own):
    shutil.copytree(source, own)


def build(config, workdir, mesh):
  """Data, model, optimizer and the initial (replicated) train state of a run."""
  if config.init_from:
    inherit_tokenizer(config.init_from, workdir)
  data = data_lib.build(config.data, task=config.model.task, seed=config.seed,
                        tokenizer_dir=os.path.join(workdir, 'tokenizer'))
  if config.model.task == 'classification' and data.num_labels() > config.model.num_classes:
    # Out-of-range labels would not fail: the loss would silently train on clamped labels.
    raise ValueError(f'The data has labels 0..{data.num_labels() - 1}, more than '
                     f'config.model.num_classes={config.model.num_classes}: raise it.')
  model = models.get_model(config.model, vocab_size=data.tokenizer.vocab_size, max_len=config.data.max_len)
  total_steps = config.train.num_steps
  if total_steps <= 0:
    total_steps = config.train.num_epochs * data.steps_per_epoch(config.train.batch_size)
  optimizer = optim.make_optimizer(config.optim, total_steps)

  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy_inputs = jnp.ones((1, config.data.max_len), jnp.int32)
  params = jax.jit(model.init)(init_rng, dummy_inputs)['params']
  if config.init_from:
    params = checkpoint.load_params(config.init_from, params, reinit=config.init_from_reinit)
  state = TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params), rng=train_rng)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  return data, model, optimizer, state, total_steps


def open_checkpointer(config, workdir):
  return checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=config.train.max_to_keep,
                                 best_metric=config.train.best_metric, best_mode=config.train.best_mode)


class Run(NamedTuple):
  """What training and evaluation of a workdir share."""
  mesh: jax.sharding.Mesh
  data: data_lib.Data
  model: Any
  optimizer: optax.GradientTransformation
  state: TrainState
  total_steps: int
  eval_step: Any
  ckpt: checkpoint.Checkpointer


def prepare_run(config, workdir, devices=None) -> Run:
  """Checks the config against the devices and the workdir, then builds everything a run needs but the loop."""
  if config.distributed:
    jax.distributed.initialize()
  mesh = make_mesh(devices)
  check_batch_sizes(config, mesh.size)
  os.makedirs(workdir, exist_ok=True)
  write_or_check_config(config, workdir)
  data, model, optimizer, state, total_steps = build(config, workdir, mesh)
  token_bytes = jnp.asarray(data.tokenizer.token_bytes()) if config.model.task == 'lm' else None
  return Run(mesh, data, model, optimizer, state, total_steps, make_eval_step(model, mesh, token_bytes),
             open_checkpointer(config, workdir))


def to_global(batch, mesh):
  """Process-local numpy batch → global jax arrays sharded over 'data'."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def evaluate(eval_step, params, data, split, config, mesh):
  totals = None
  for i, batch in enumerate(data.eval_batches(split, config.train.eval_batch_size)):
    if 0 <= config.train.max_eval_batches <= i:
      break
    sums = eval_step(params, to_global(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if i % SYNC_EVERY_STEPS == SYNC_EVERY_STEPS - 1:
      jax.block_until_ready(totals)
  if totals is None:
    raise ValueError(f'The {split!r} split produced no batches: it has {data.num_examples(split)} examples.')
  return summarize(jax.device_get(totals), config.model.task)


# ---------------------------------------------------------------------------------------------------- the loop

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, devices=None):
  """Trains (or resumes) the run in `workdir`, then writes validation and test metrics to results.json.

  Returns (final TrainState, results dict). `devices` defaults to all devices (one data-parallel replica each).
  """
  mesh, data, model, optimizer, state, total_steps, eval_step, ckpt = prepare_run(config, workdir, devices)
  train_step = make_train_step(model, optimizer, mesh, config.optim.grad_accum_steps)
  train_iter = data.train_iterator(config.train.batch_size)
  restored = ckpt.restore(state)
  if restored is not None:
    _, state, data_state = restored
    train_iter.set_state(data_state)
  step = int(state.step)
  results_path = os.path.join(workdir, 'results.json')
  if step >= total_steps and os.path.exists(results_path):
    log.info('%s is finished (step %d of %d); not retraining.', workdir, step, total_steps)
    ckpt.close()
    with open(results_path) as f:
      return state, json.load(f)
  log.info('Training %s from step %d to %d on %d device(s); %d parameters.', config.model.name, step, total_steps,
           mesh.size, models.count_params(state.params))

  writer = metrics_lib.MetricsWriter(workdir) if jax.process_index() == 0 else None
  try:
    state, final_validation = train_loop(config, workdir, state, total_steps, data, train_iter, train_step,
                                         eval_step, mesh, ckpt, writer)
    results = {'step': int(state.step)}
    for split in data.eval_splits:
      if split == 'validation' and final_validation is not None:
        results[split] = final_validation  # the loop evaluated at its last step already
        continue
      results[split] = evaluate(eval_step, state.params, data, split, config, mesh)
      if writer:
        writer.write(int(state.step), split, results[split])
  finally:  # whatever happens, the checkpoints and metrics written so far are complete on disk
    ckpt.wait_until_finished()
    ckpt.close()
    if writer:
      writer.close()
  if jax.process_index() == 0:
    with open(results_path, 'w') as f:
      json.dump(results, f, indent=2)
  log.info('Results: %s', results)
  return state, results


def train_loop(config, workdir, state, total_steps, data, train_iter, train_step, eval_step, mesh, ckpt, writer):
  """Steps from state.step to total_steps: logs, evaluates and checkpoints on the config's schedule.

  Returns the final state and the validation metrics of the last step (None when no step was run).
  """
  step = int(state.step)
  tokens_per_step = config.train.batch_size * config.data.max_len
  peak = metrics_lib.peak_flops_per_device(jax.devices()[0], config.model.dtype)
  flops_per_token = metrics_lib.train_flops_per_token(config.model, vocab_size=data.tokenizer.vocab_size,
                                                      seq_len=config.data.max_len, task=config.model.task)
  schedule = optim.learning_rate_schedule(config.optim, total_steps)
  pending, window, window_start, window_step = [], [], time.perf_counter(), step
  val_metrics = None
  while step < total_steps:
    state, step_metrics = train_step(state, to_global(next(train_iter), mesh))
    step += 1
    pending.append(step_metrics)
    at_log = step % config.train.log_every_steps == 0 or step == total_steps
    at_eval = step % config.train.eval_every_steps == 0 or step == total_steps
    at_ckpt = step % config.train.checkpoint_every_steps == 0 or step == total_steps
    if not (at_log or at_eval or at_ckpt or step % SYNC_EVERY_STEPS == 0):
      continue
    # Sync point (waits for the device): fetch the queued metrics, so a NaN is caught before it is checkpointed.
    fetched, pending = jax.device_get(pending), []
    for i, m in enumerate(fetched):
      if not math.isfinite(float(m['loss'])):
        raise FloatingPointError(f'Loss is {float(m["loss"])} at step {step - len(fetched) + i + 1}: stopping. The '
                                 f'last good checkpoint (step {ckpt.latest_step()}) stays in {workdir}.')
    window.extend(fetched)
    if at_log:
      elapsed = time.perf_counter() - window_start
      tokens_per_sec = (step - window_step) * tokens_per_step / elapsed
      summary = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
      summary.update(lr=float(schedule(step - 1)), steps_per_sec=(step - window_step) / elapsed,
                     tokens_per_sec=tokens_per_sec)
      log.info(metrics_lib.format_log_line(
          step, total_steps, summary, tokens_per_sec=tokens_per_sec,
          mfu=metrics_lib.mfu(tokens_per_sec / mesh.size, flops_per_token, peak),
          eta_seconds=(total_steps - step) * elapsed / (step - window_step)))
      if writer:
        writer.write(step, 'train', summary)
      window, window_start, window_step = [], time.perf_counter(), step
    val_metrics = None
    if at_eval:
      eval_start = time.perf_counter()
      val_metrics = evaluate(eval_step, state.params, data, 'validation', config, mesh)
      log.info('step %d validation: %s', step, val_metrics)
      if writer:
        writer.write(step, 'validation', val_metrics)
      window_start += time.perf_counter() - eval_start  # evaluation time is not training throughput
    if at_ckpt:
      ckpt.save(step, state, data_state=train_iter.get_state(), metrics=val_metrics)
  return state, val_metrics


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the latest checkpoint of `workdir` on every eval split, without training."""
  mesh, data, _, _, state, _, eval_step, ckpt = prepare_run(config, workdir)
  restored = ckpt.restore(state)
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints to evaluate; train first.')
  step, state, _ = restored
  results = {'step': step, **{s: evaluate(eval_step, state.params, data, s, config, mesh) for s in data.eval_splits}}
  print(json.dumps(results, indent=2))
  ckpt.close()
  return results
