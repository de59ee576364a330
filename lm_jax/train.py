"""The training loop, top to bottom: config → data → model → train_step → metrics and checkpoints.

The step functions themselves (data parallel or GSPMD over the mesh, losses, metrics) are in `steps.py`.

A run survives interruption: SIGTERM or Ctrl-C finishes the current step, saves a checkpoint and raises `Preempted`;
SIGKILL loses at most the steps since the last checkpoint. Each checkpoint also holds the data iterator's position,
the open log window and the length of metrics.jsonl, so a resumed run logs exactly what an uninterrupted one would.
"""

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from lm_jax import baseline
from lm_jax import checkpoint
from lm_jax import data as data_lib
from lm_jax import metrics as metrics_lib
from lm_jax import models
from lm_jax import optim
from lm_jax import process
from lm_jax import report
from lm_jax import row_gradients
from lm_jax import sharding
from lm_jax import steps
from lm_jax import workdir as workdir_lib
from lm_jax.data import packing

# Two CPU "devices" deadlock in the collectives' rendezvous when ~50 jit(shard_map) steps are queued without a
# sync point. Waiting every few steps costs nothing measurable and keeps the queue short everywhere.
SYNC_EVERY_STEPS = 8
# Step metrics that measure the machine, not the run: they differ between an interrupted and an uninterrupted run.
TIMING_METRICS = ('steps_per_sec', 'tokens_per_sec')
log = logging.getLogger(__name__)


class Preempted(Exception):
  """SIGTERM or SIGINT stopped the run after saving a checkpoint at `step`; the same command resumes it."""

  def __init__(self, step: int, signal_name: str, workdir: str):
    super().__init__(f'{signal_name}: saved a checkpoint at step {step} in {workdir} and stopped; run the same '
                     'command again to resume.')
    self.step = step


# ---------------------------------------------------------------------------------------------------- setup

def make_mesh(devices=None, mesh_config=None):
  """The run's ('data', 'fsdp', 'tensor') mesh (lm_jax/sharding.py); without mesh_config, all devices on data."""
  return sharding.make_mesh(mesh_config, devices)


def check_batch_sizes(config, mesh):
  shards = sharding.data_shards(mesh)
  for key in ('batch_size', 'eval_batch_size'):
    size = config.train[key]
    if size % shards:
      raise ValueError(f'config.train.{key}={size} must divide by the batch shards (mesh data × fsdp = {shards}).')
  per_shard = config.train.batch_size // shards
  if per_shard % config.optim.grad_accum_steps:
    raise ValueError(f'config.optim.grad_accum_steps={config.optim.grad_accum_steps} must divide the batch of each '
                     f'shard ({per_shard}).')


def prepare_data(config, workdir) -> data_lib.Data:
  """The run's Data. With several processes, process 0 makes the tokenizer (and tokenizes) first; the others wait,
  then load what it saved, so that a tokenizer is trained once and every process reads token ids the same way."""

  def load():
    if config.init_from:
      workdir_lib.inherit_tokenizer(config.init_from, workdir)
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


def init_train_state(config, model, optimizer, mesh) -> tuple[steps.TrainState, Any]:
  """Fresh (or `init_from`-loaded) params and optimizer state placed on the mesh, and their shardings.

  A fresh state is made by one jitted program whose outputs land sharded: no device ever holds the whole of a
  sharded model. (`init_from` loads the params whole, then places them.)
  """
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy_inputs = jnp.ones((1, config.data.max_len), jnp.int32)

  def fresh_state(params=None):
    params = model.init(init_rng, dummy_inputs)['params'] if params is None else params
    return steps.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params),
                            rng=train_rng)

  shardings = sharding.state_shardings(jax.eval_shape(fresh_state), mesh)
  if not config.init_from:
    return jax.jit(fresh_state, out_shardings=shardings)(), shardings
  params = jax.jit(model.init)(init_rng, dummy_inputs)['params']   # the values of the params init_from_reinit renews
  params = checkpoint.load_params(config.init_from, params, reinit=config.init_from_reinit)
  params = jax.device_put(params, shardings.params)
  return jax.jit(fresh_state, out_shardings=shardings)(params), shardings


@dataclasses.dataclass
class Run:
  """Everything training and evaluation of a workdir share."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  data: data_lib.Data
  model: Any
  optimizer: optax.GradientTransformation
  state: steps.TrainState            # initial; replaced by the restored state on resume
  state_shardings: Any               # where each leaf of the state lives on the mesh (sharding.state_shardings)
  total_steps: int
  eval_step: Any
  ckpt: checkpoint.Checkpointer


def prepare_run(config, workdir, devices=None) -> Run:
  """Checks the config against the devices and the workdir, then builds everything a run needs but the loop."""
  mesh = make_mesh(devices, config.mesh)
  check_batch_sizes(config, mesh)
  sharding.check_model(config.model, mesh)
  workdir_lib.prepare(config, workdir)
  data = prepare_data(config, workdir)
  if config.model.task == 'classification':
    check_num_classes(config, data)
    workdir_lib.check_and_save_label_names(config, workdir, data.label_names)
  model = models.get_model(config.model, vocab_size=data.tokenizer.vocab_size, max_len=config.data.max_len)
  total_steps = total_steps_of(config, data)
  optimizer = optim.make_optimizer(config.optim, total_steps)
  token_bytes = jnp.asarray(data.tokenizer.token_bytes()) if config.model.task == 'lm' else None
  ckpt = checkpoint.open_checkpointer(config, workdir)
  state, state_shardings = init_train_state(config, model, optimizer, mesh)
  return Run(config, workdir, mesh, data, model, optimizer, state, state_shardings, total_steps,
             steps.make_eval_step(model, mesh, token_bytes, state_shardings.params, mlm_predictions(config)), ckpt)


def mlm_predictions(config) -> int:
  """The masked LM's cap on masked positions per row, which the data applies and the loss gathers; 0 otherwise."""
  if config.model.task != 'mlm':
    return 0
  return packing.max_predictions(config.data.max_len, config.data.mlm_probability,
                                 config.data.max_predictions_per_seq)


def check_num_classes(config, data) -> None:
  """model.num_classes = the data's classes when 0; else it must cover every label (out-of-range labels would not
  fail: the loss would silently train on clamped labels)."""
  if config.model.num_classes == 0:
    config.model.num_classes = data.num_labels()
  elif data.label_names is not None and config.model.num_classes != data.num_labels():
    raise ValueError(f'config.model.num_classes={config.model.num_classes}, but the data names '
                     f'{data.num_labels()} classes {list(data.label_names)}: set it to 0 (follow the data).')
  elif data.num_labels() > config.model.num_classes:
    raise ValueError(f'The data has labels 0..{data.num_labels() - 1}, more than '
                     f'config.model.num_classes={config.model.num_classes}: raise it, or set it to 0 (as the data).')


def to_global(batch, mesh):
  """Process-local numpy batch → global jax arrays, the batch axis split over the mesh's 'data' and 'fsdp'."""
  batch_sharding = steps.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}


def evaluate(run: Run, params, split: str) -> dict:
  return evaluate_split(run.eval_step, params, run.data, split, run.mesh, run.config)


def evaluate_split(eval_step, params, data: data_lib.Data, split: str, mesh, config) -> dict:
  """The metrics of `split` (`steps.summarize`), over at most train.max_eval_batches batches."""
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
  return steps.summarize(jax.device_get(totals), config.model.task, data.label_names)


# ---------------------------------------------------------------------------------------------------- the loop

def due(step: int, every: int, total: int) -> bool:
  """Whether a periodic action (log, evaluate, checkpoint) runs after `step`: every `every` steps and at the end."""
  return step % every == 0 or step == total


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
  workdir_lib.save_config(config, workdir)
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
    with process.StopSignals() as signals:
      state, final_validation = train_loop(run, train_iter, writer, loop_state['log_window'], signals)
    results = {'step': int(state.step)}
    for split in run.data.eval_splits:
      if split == 'validation' and final_validation is not None:
        results[split] = final_validation  # the loop evaluated at its last step already
      else:
        results[split] = evaluate(run, state.params, split)
        log.info(metrics_lib.format_eval_line(split, results['step'], results[split]))
        if writer:
          writer.write(int(state.step), split, results[split])
  finally:  # whatever happens, the checkpoints and metrics written so far are complete on disk
    run.ckpt.wait_until_finished()
    run.ckpt.close()
    if writer:
      writer.close()
  if jax.process_index() == 0:
    if config.model.task == 'classification':
      add_baseline_and_reports(run, results)
    with open(results_path, 'w') as f:
      json.dump(results, f, indent=2)
  log.info('Results (full precision): %s', results_path)
  return state, results


def add_baseline_and_reports(run: Run, results: dict) -> None:
  """results['baseline']: the bag-of-words baseline on the same splits; WORKDIR/reports/: each split's report."""
  results['baseline'] = baseline.for_run(run.data, run.data.eval_splits, num_classes=run.config.model.num_classes,
                                         seed=run.config.seed)
  if 'skipped' in results['baseline']:
    log.info('Baseline skipped: %s.', results['baseline']['skipped'])
  for split in run.data.eval_splits:
    if split in results['baseline']:
      log.info(metrics_lib.format_eval_line(f'baseline {split}', results['step'], results['baseline'][split]))
  report.write_reports(os.path.join(run.workdir, 'reports'), results)


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
  """Means of the step metrics since the last log line, and the norms of its last step (the one that logs, the only
  one that computed them); skipped (non-finite) steps are counted, not averaged."""
  kept = [m for m in window if not m.get('skipped')] or window
  summary = {k: float(np.mean([m[k] for m in kept])) for k in window[0] if k not in steps.NORMS}
  summary.update({k: window[-1][k] for k in steps.NORMS if k in window[-1]})
  if 'skipped' in summary:
    summary['skipped'] = float(sum(m['skipped'] for m in window))
  return summary


def train_loop(run: Run, train_iter, writer, log_window: list[dict], signals: process.StopSignals):
  """Steps from run.state.step to run.total_steps: logs, evaluates and checkpoints on the config's schedule.

  `log_window` holds the step metrics since the last log line (restored from the checkpoint on resume).
  Returns the final state and the validation metrics of the last step (None when no step was run).
  """
  config, total = run.config, run.total_steps
  if sharding.data_parallel_only(run.mesh):
    rows, path = row_gradients.for_training(run.model, run.state.params, config.optim, total,
                                            config.train.batch_size * config.data.max_len)
  else:
    rows, path = None, 'dense (sharded parameters: the row-gradient update is for data-only meshes)'
  log.info('Mesh %s; gradient path: %s.', dict(run.mesh.shape), path)
  train_step = steps.make_train_step(run.model, run.optimizer, run.mesh, config.optim.grad_accum_steps,
                                     skip_nonfinite=config.train.skip_nonfinite_steps, rows=rows,
                                     state_shardings=run.state_shardings, mlm_predictions=mlm_predictions(config))
  tokens_per_step = config.train.batch_size * config.data.max_len
  peak = metrics_lib.peak_flops_per_device(jax.devices()[0], config.model.dtype)
  flops_per_token = models.train_flops_per_token(config.model, vocab_size=run.data.tokenizer.vocab_size,
                                                 seq_len=config.data.max_len)
  schedule = optim.learning_rate_schedule(config.optim, total)
  state, step = run.state, int(run.state.step)
  first_step = step
  pending, timer_start, timer_step = [], time.perf_counter(), step
  val_metrics = None
  while step < total:
    at_log = due(step + 1, config.train.log_every_steps, total)
    params_before = jax.tree.map(jnp.copy, state.params) if at_log else None  # the step donates state.params
    state, step_metrics = train_step(state, to_global(next(train_iter), run.mesh), at_log)  # grad norms when logged
    if at_log:
      step_metrics.update(steps.param_norms(params_before, state.params))
    step += 1
    pending.append(step_metrics)
    at_eval = due(step, config.train.eval_every_steps, total)
    stop = signals.received   # read once: a signal arriving later is handled after the next step
    at_ckpt = due(step, config.train.checkpoint_every_steps, total) or stop
    if not (at_log or at_eval or at_ckpt or step % SYNC_EVERY_STEPS == 0):
      continue
    # Sync point (waits for the device): fetch the queued metrics, so a NaN is caught before it is checkpointed.
    fetched, pending = jax.device_get(pending), []
    if step - len(fetched) == first_step:   # this process's first steps are done: compiling is over
      process.release_freed_memory()
    check_finite(fetched, step, run)
    log_window += [{k: float(v) for k, v in m.items() if k != 'grad_norms'} for m in fetched]
    if at_log:
      elapsed = time.perf_counter() - timer_start
      summary = summarize_window(log_window)
      summary.update(lr=float(schedule(step - 1)), steps_per_sec=(step - timer_step) / elapsed,
                     tokens_per_sec=(step - timer_step) * tokens_per_step / elapsed)
      log.info(metrics_lib.format_log_line(
          step, total, summary,
          mfu=metrics_lib.mfu(summary['tokens_per_sec'] / run.mesh.size, flops_per_token, peak),
          eta_seconds=(total - step) * elapsed / (step - timer_step)))
      if writer:
        writer.write(step, 'train', summary)
      log_window, timer_start, timer_step = [], time.perf_counter(), step
    val_metrics = None
    if at_eval:
      eval_start = time.perf_counter()
      val_metrics = evaluate(run, state.params, 'validation')
      process.release_freed_memory()   # what compiling and running the eval step freed
      log.info(metrics_lib.format_eval_line('validation', step, val_metrics))
      if writer:
        writer.write(step, 'validation', val_metrics)
      timer_start += time.perf_counter() - eval_start  # evaluation time is not training throughput
    if at_ckpt:
      loop_state = {'data': train_iter.get_state(), 'log_window': log_window,
                    'metrics_lines': writer.lines if writer else 0}
      scalars = val_metrics and {k: v for k, v in val_metrics.items() if isinstance(v, float)}
      run.ckpt.save(step, state, loop_state=loop_state, metrics=scalars, force=bool(stop))
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
