"""The training loop, top to bottom: config → data → model → train_step → metrics and checkpoints.

Data parallelism has pmap's semantics, written as `jax.shard_map` under `jax.jit` (what pmap itself is built on in
current JAX): one replica per device, each gets its slice of the global batch, gradients are averaged with
`lax.pmean`. `check_vma=False` keeps pmap's explicit-collective semantics (with it on, JAX would insert the
gradient all-reduce itself).

A run survives interruption: SIGTERM or Ctrl-C finishes the current step, saves a checkpoint and raises `Preempted`;
SIGKILL loses at most the steps since the last checkpoint. Each checkpoint also holds the data iterator's position,
the open log window and the length of metrics.jsonl, so a resumed run logs exactly what an uninterrupted one would.
"""

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lm_jax import checkpoint
from lm_jax import data as data_lib
from lm_jax import flops
from lm_jax import losses
from lm_jax import metrics as metrics_lib
from lm_jax import models
from lm_jax import optim

# Two CPU "devices" deadlock in the collectives' rendezvous when ~50 jit(shard_map) steps are queued without a
# sync point. Waiting every few steps costs nothing measurable and keeps the queue short everywhere.
SYNC_EVERY_STEPS = 8
# Config sections that fix the parameters and the tokenizer: a workdir cannot be resumed with other values.
FROZEN_SECTIONS = ('model', 'data')
# Step metrics that measure the machine, not the run: they differ between an interrupted and an uninterrupted run.
TIMING_METRICS = ('steps_per_sec', 'tokens_per_sec')
# Tokens per block of the fused vocabulary head + loss (lm, mlm): the float32 logits of one block are
# HEAD_CHUNK_TOKENS × vocab (64 MiB at 512 × 32k) instead of the whole batch's.
HEAD_CHUNK_TOKENS = 512
log = logging.getLogger(__name__)


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  rng: jax.Array  # base key; step t uses fold_in(rng, t), so a resumed run draws the same dropout masks


class Preempted(Exception):
  """SIGTERM or SIGINT stopped the run after saving a checkpoint at `step`; the same command resumes it."""

  def __init__(self, step: int, signal_name: str, workdir: str):
    super().__init__(f'{signal_name}: saved a checkpoint at step {step} in {workdir} and stopped; run the same '
                     'command again to resume.')
    self.step = step


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


def apply_for_loss(model, params, batch, **kwargs):
  """The model's outputs for `loss_sums`: a vocabulary head's `HeadInputs` (fused loss), else the logits."""
  head_inputs = {'head_inputs': True} if getattr(model, 'task', None) in models.VOCABULARY_TASKS else {}
  return model.apply({'params': params}, batch['inputs'], **model_kwargs(batch), **head_inputs, **kwargs)


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

def make_train_step(model, optimizer, mesh, grad_accum_steps, *, skip_nonfinite=False):
  """A jitted `(state, batch) -> (state, metrics)`; batch sharded over 'data', state replicated.

  With `skip_nonfinite`, a step whose loss or gradients are not finite leaves params and optimizer state unchanged
  and reports `skipped` 1.
  """

  # One replica: its sums are the global ones. XLA:CPU runs even a one-device all-reduce as a copy of every
  # gradient (1.5 ms of a 53 ms LSTM bench step), so the collectives are left out there.
  pmean, psum = ((lambda x, _: x, lambda x, _: x) if mesh.shape['data'] == 1 else (jax.lax.pmean, jax.lax.psum))

  def replica_step(state, batch):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index('data'))
    # Each replica sums its losses and divides by the mean weight per replica: pmean over replicas (and the sum over
    # micro-batches) then gives the gradient of the mean loss over the whole global batch.
    denominator = pmean(jnp.sum(batch['weights']), 'data')

    def loss_fn(params, micro_batch, rng):
      sums = loss_sums(apply_for_loss(model, params, micro_batch, train=True, rngs={'dropout': rng}), micro_batch)
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
    grads = pmean(grads, 'data')
    sums = psum(sums, 'data')
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    metrics = {'loss': sums['loss'] / sums['count'], 'accuracy': sums['correct'] / sums['count'],
               'grad_norm': grad_norm, 'param_norm': optax.tree.norm(state.params),
               'update_norm': optax.tree.norm(updates), 'grad_norms': group_norms(grads)}
    if skip_nonfinite:
      finite = jnp.isfinite(sums['loss']) & jnp.isfinite(grad_norm)
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state),
                                       (state.params, state.opt_state))
      metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  step = jax.shard_map(replica_step, mesh=mesh, in_specs=(P(), P('data')), out_specs=(P(), P()), check_vma=False)
  return jax.jit(step, donate_argnums=0)


def make_eval_step(model, mesh, token_bytes):
  """A jitted `(params, batch) -> summed metrics` over the global batch."""

  def replica_step(params, batch):
    outputs = apply_for_loss(model, params, batch, train=False)
    return jax.lax.psum(loss_sums(outputs, batch, token_bytes), 'data')

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


def prepare_workdir(config, workdir):
  """Creates the workdir; refuses a file, an unwritable directory, or a workdir of another model or data."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir={workdir!r} is a file; give a directory (it is created if missing).')
  os.makedirs(workdir, exist_ok=True)
  if not os.access(workdir, os.W_OK):
    raise PermissionError(f'--workdir={workdir!r} is not writable.')
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    current = json.loads(config.to_json())
    changed = [f'{section}.{key}: {saved[section].get(key)!r} -> {value!r}'
               for section in FROZEN_SECTIONS for key, value in current[section].items()
               if saved.get(section, {}).get(key) != value]
    if changed:
      raise ValueError(f'{workdir} holds a run of another model or data ({"; ".join(changed)}). Use a new --workdir, '
                       'or set config.init_from to start from its weights.')


def save_config(config, workdir):
  """WORKDIR/config.json: the resolved config of the run, written once its checkpoint (if any) has restored."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(json.loads(config.to_json()), f, indent=2)


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


def prepare_data(config, workdir) -> data_lib.Data:
  """The run's Data. With several processes, process 0 makes the tokenizer (and tokenizes) first; the others wait,
  then load what it saved, so that a tokenizer is trained once and every process reads token ids the same way."""

  def load():
    if config.init_from:
      inherit_tokenizer(config.init_from, workdir)
    return data_lib.get_dataset(config.data, task=config.model.task, seed=config.seed,
                                tokenizer_dir=os.path.join(workdir, 'tokenizer'))

  if jax.process_count() == 1:
    return load()   # each split is tokenized (or read from its cache) on first use
  if jax.process_index() == 0:
    data = load()
    for split in ('train', *data.eval_splits):   # every token cache exists before the others read it
      data.rows(split)
  multihost_utils.sync_global_devices('lm_jax: process 0 prepared the tokenizer and the data')
  return data if jax.process_index() == 0 else load()


def total_steps_of(config, data) -> int:
  if config.train.num_steps > 0:
    return config.train.num_steps
  return config.train.num_epochs * data.steps_per_epoch(config.train.batch_size)


def init_train_state(config, model, optimizer, mesh) -> TrainState:
  """Fresh (or `init_from`-loaded) params and optimizer state, replicated over the mesh."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy_inputs = jnp.ones((1, config.data.max_len), jnp.int32)
  params = jax.jit(model.init)(init_rng, dummy_inputs)['params']
  if config.init_from:
    params = checkpoint.load_params(config.init_from, params, reinit=config.init_from_reinit)
  state = TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params), rng=train_rng)
  return jax.device_put(state, NamedSharding(mesh, P()))


@dataclasses.dataclass
class Run:
  """Everything training and evaluation of a workdir share."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  data: data_lib.Data
  model: Any
  optimizer: optax.GradientTransformation
  state: TrainState            # initial; replaced by the restored state on resume
  total_steps: int
  eval_step: Any
  ckpt: checkpoint.Checkpointer


def prepare_run(config, workdir, devices=None) -> Run:
  """Checks the config against the devices and the workdir, then builds everything a run needs but the loop."""
  mesh = make_mesh(devices)
  check_batch_sizes(config, mesh.size)
  prepare_workdir(config, workdir)
  data = prepare_data(config, workdir)
  if config.model.task == 'classification' and data.num_labels() > config.model.num_classes:
    # Out-of-range labels would not fail: the loss would silently train on clamped labels.
    raise ValueError(f'The data has labels 0..{data.num_labels() - 1}, more than '
                     f'config.model.num_classes={config.model.num_classes}: raise it.')
  model = models.get_model(config.model, vocab_size=data.tokenizer.vocab_size, max_len=config.data.max_len)
  total_steps = total_steps_of(config, data)
  optimizer = optim.make_optimizer(config.optim, total_steps)
  token_bytes = jnp.asarray(data.tokenizer.token_bytes()) if config.model.task == 'lm' else None
  ckpt = checkpoint.open_checkpointer(config, workdir)
  return Run(config, workdir, mesh, data, model, optimizer, init_train_state(config, model, optimizer, mesh),
             total_steps, make_eval_step(model, mesh, token_bytes), ckpt)


def to_global(batch, mesh):
  """Process-local numpy batch → global jax arrays sharded over 'data'."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def evaluate(run: Run, params, split: str) -> dict[str, float]:
  totals = None
  for i, batch in enumerate(run.data.eval_batches(split, run.config.train.eval_batch_size)):
    if 0 <= run.config.train.max_eval_batches <= i:
      break
    sums = run.eval_step(params, to_global(batch, run.mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if i % SYNC_EVERY_STEPS == SYNC_EVERY_STEPS - 1:
      jax.block_until_ready(totals)
  if totals is None:
    raise ValueError(f'The {split!r} split produced no batches: it has {run.data.num_examples(split)} examples.')
  return summarize(jax.device_get(totals), run.config.model.task)


# ---------------------------------------------------------------------------------------------------- the loop

def due(step: int, every: int, total: int) -> bool:
  """Whether a periodic action (log, evaluate, checkpoint) runs after `step`: every `every` steps and at the end."""
  return step % every == 0 or step == total


class StopSignals:
  """Turns SIGTERM and SIGINT into a request to stop after the current step (main thread only)."""

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received:  # a second signal: stop now, as without a handler
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    log.warning('%s received: finishing the current step, then saving a checkpoint.', self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, devices=None):
  """Trains (or resumes) the run in `workdir`, then writes validation and test metrics to results.json.

  Returns (final TrainState, results dict). `devices` defaults to all devices (one data-parallel replica each).
  Raises `Preempted` after saving a checkpoint when SIGTERM or SIGINT arrives.
  """
  run = prepare_run(config, workdir, devices)
  train_iter = run.data.train_iterator(config.train.batch_size)
  loop_state = {'log_window': [], 'metrics_lines': 0}
  restored = run.ckpt.restore(run.state)
  if restored is not None:
    _, run.state, loop_state = restored
    train_iter.set_state(loop_state['data'])
  save_config(config, workdir)
  step = int(run.state.step)
  results_path = os.path.join(workdir, 'results.json')
  if step >= run.total_steps and os.path.exists(results_path):
    log.info('%s is finished (step %d of %d); not retraining.', workdir, step, run.total_steps)
    run.ckpt.close()
    with open(results_path) as f:
      return run.state, json.load(f)
  log.info('Training %s from step %d to %d on %d device(s); %d parameters.', config.model.name, step,
           run.total_steps, run.mesh.size, models.count_params(run.state.params))

  # What was logged after the restored checkpoint is dropped: the resumed run logs it again.
  writer = (metrics_lib.MetricsWriter(workdir, keep_lines=loop_state['metrics_lines'], resume_step=step)
            if jax.process_index() == 0 else None)
  try:
    with StopSignals() as signals:
      state, final_validation = train_loop(run, train_iter, writer, loop_state['log_window'], signals)
    results = {'step': int(state.step)}
    for split in run.data.eval_splits:
      if split == 'validation' and final_validation is not None:
        results[split] = final_validation  # the loop evaluated at its last step already
      else:
        results[split] = evaluate(run, state.params, split)
        if writer:
          writer.write(int(state.step), split, results[split])
  finally:  # whatever happens, the checkpoints and metrics written so far are complete on disk
    run.ckpt.wait_until_finished()
    run.ckpt.close()
    if writer:
      writer.close()
  if jax.process_index() == 0:
    with open(results_path, 'w') as f:
      json.dump(results, f, indent=2)
  log.info('Results: %s', results)
  return state, results


def check_finite(fetched: list[dict], last_step: int, run: Run) -> None:
  """Raises FloatingPointError at the first non-finite loss, naming the parameter groups with non-finite gradients."""
  for i, m in enumerate(fetched):
    if math.isfinite(float(m['loss'])) or float(m.get('skipped', 0.0)):
      continue
    bad = [group for group, norm in m['grad_norms'].items() if not math.isfinite(float(norm))]
    raise FloatingPointError(
        f'Loss is {float(m["loss"])} at step {last_step - len(fetched) + i + 1}: stopping. Non-finite gradient norms '
        f'in: {", ".join(bad) or "none (the loss alone)"}. The last good checkpoint (step {run.ckpt.latest_step()}) '
        f'stays in {run.workdir}; config.train.skip_nonfinite_steps=True skips such steps instead.')


def summarize_window(window: list[dict]) -> dict[str, float]:
  """Means of the step metrics since the last log line; skipped (non-finite) steps are counted, not averaged."""
  kept = [m for m in window if not m.get('skipped')] or window
  summary = {k: float(np.mean([m[k] for m in kept])) for k in window[0]}
  if 'skipped' in summary:
    summary['skipped'] = float(sum(m['skipped'] for m in window))
  return summary


def train_loop(run: Run, train_iter, writer, log_window: list[dict], signals: StopSignals):
  """Steps from run.state.step to run.total_steps: logs, evaluates and checkpoints on the config's schedule.

  `log_window` holds the step metrics since the last log line (restored from the checkpoint on resume).
  Returns the final state and the validation metrics of the last step (None when no step was run).
  """
  config, total = run.config, run.total_steps
  train_step = make_train_step(run.model, run.optimizer, run.mesh, config.optim.grad_accum_steps,
                               skip_nonfinite=config.train.skip_nonfinite_steps)
  tokens_per_step = config.train.batch_size * config.data.max_len
  peak = flops.peak_flops_per_device(jax.devices()[0], config.model.dtype)
  flops_per_token = flops.train_flops_per_token(config.model, vocab_size=run.data.tokenizer.vocab_size,
                                                seq_len=config.data.max_len, task=config.model.task)
  schedule = optim.learning_rate_schedule(config.optim, total)
  state, step = run.state, int(run.state.step)
  pending, timer_start, timer_step = [], time.perf_counter(), step
  val_metrics = None
  while step < total:
    state, step_metrics = train_step(state, to_global(next(train_iter), run.mesh))
    step += 1
    pending.append(step_metrics)
    at_log = due(step, config.train.log_every_steps, total)
    at_eval = due(step, config.train.eval_every_steps, total)
    stop = signals.received   # read once: a signal arriving later is handled after the next step
    at_ckpt = due(step, config.train.checkpoint_every_steps, total) or stop
    if not (at_log or at_eval or at_ckpt or step % SYNC_EVERY_STEPS == 0):
      continue
    # Sync point (waits for the device): fetch the queued metrics, so a NaN is caught before it is checkpointed.
    fetched, pending = jax.device_get(pending), []
    check_finite(fetched, step, run)
    log_window += [{k: float(v) for k, v in m.items() if k != 'grad_norms'} for m in fetched]
    if at_log:
      elapsed = time.perf_counter() - timer_start
      summary = summarize_window(log_window)
      summary.update(lr=float(schedule(step - 1)), steps_per_sec=(step - timer_step) / elapsed,
                     tokens_per_sec=(step - timer_step) * tokens_per_step / elapsed)
      log.info(metrics_lib.format_log_line(
          step, total, summary, mfu=flops.mfu(summary['tokens_per_sec'] / run.mesh.size, flops_per_token, peak),
          eta_seconds=(total - step) * elapsed / (step - timer_step)))
      if writer:
        writer.write(step, 'train', summary)
      log_window, timer_start, timer_step = [], time.perf_counter(), step
    val_metrics = None
    if at_eval:
      eval_start = time.perf_counter()
      val_metrics = evaluate(run, state.params, 'validation')
      log.info('step %d validation: %s', step, val_metrics)
      if writer:
        writer.write(step, 'validation', val_metrics)
      timer_start += time.perf_counter() - eval_start  # evaluation time is not training throughput
    if at_ckpt:
      loop_state = {'data': train_iter.get_state(), 'log_window': log_window,
                    'metrics_lines': writer.lines if writer else 0}
      run.ckpt.save(step, state, loop_state=loop_state, metrics=val_metrics, force=bool(stop))
    if stop:
      run.ckpt.wait_until_finished()
      raise Preempted(step, stop, run.workdir)
  return state, val_metrics


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the latest checkpoint of `workdir` on every eval split, without training."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'No checkpoints in {workdir!r} to evaluate: train first (--mode=train).')
  run = prepare_run(config, workdir)
  restored = run.ckpt.restore(run.state)
  run.ckpt.close()
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints to evaluate; train first.')
  step, state, _ = restored
  results = {'step': step, **{s: evaluate(run, state.params, s) for s in run.data.eval_splits}}
  print(json.dumps(results, indent=2))
  return results
