"""Runs a sweep (lm_jax/sweeps.py): each variant an ordinary training run, then the table and plots.

Variants run in the sweep's order, each as `train.train_and_evaluate(config, DIR/<run>)`: its own config.json,
tokenizer, checkpoints, metrics.jsonl and results.json. Running again skips finished runs and resumes an interrupted
one from its latest checkpoint. A run that raises leaves its traceback in DIR/<run>/error.txt and the sweep goes on.

  DIR/<run>/ablate.json   parameters, the runner's wall and CPU time (summed over attempts)
  DIR/results.csv, .md    one row per variant, seeds merged (sweeps/report.py)
  DIR/plots/*.png         learning curves, final metrics, MQAR recall vs length (sweeps/plots.py)
  DIR/compile_cache/      compiled XLA programs the seeds of a variant share (safe to delete)
"""

import contextlib
import json
import logging
import os
import re
import time
import traceback
from typing import Sequence

import jax
from jax.experimental.compilation_cache import compilation_cache

from lm_jax import models
from lm_jax import sweeps
from lm_jax import train
from lm_jax.sweeps import plots as sweep_plots
from lm_jax.sweeps import report as sweep_report

log = logging.getLogger(__name__)


def _select(variants, only: str):
  try:
    pattern = re.compile(only)
  except re.error as e:
    raise ValueError(f'--only={only!r} is not a valid regular expression: {e}') from None
  selected = [v for v in variants if pattern.search(v.run_name)]
  if not selected:
    raise ValueError(f'--only={only!r} matches none of the runs: {", ".join(v.run_name for v in variants)}.')
  return selected


def dry_run(sweep: str, workdir: str, only: str = '', overrides: Sequence[str] = ()) -> list[dict]:
  """Prints one line per selected run: parameters, state size, and the overrides that set it apart."""
  variants = _select(sweeps.load(sweep), only)
  common = _common_overrides(variants)
  lines, params = [], {}
  for variant in variants:
    config = sweeps.resolve(variant, workdir, overrides)
    floats, unit = models.state_size(config.model)
    own = {k: v for k, v in variant.overrides.items() if k not in common}
    shape_key = (config.model.to_json(), config.data.to_json())   # seeds share a model: count it once
    if shape_key not in params:
      params[shape_key] = sweeps.count_params(config)
    lines.append({'run': variant.run_name, 'params': params[shape_key], 'state': f'{floats} {unit}',
                  'config': variant.config + (f' init_from={variant.init_from}' if variant.init_from else ''),
                  'overrides': own})
  width = max(len(line['run']) for line in lines)
  print(f'{len(lines)} runs; overrides shared by all: {common}')
  print(f'{"run":<{width}}  {"params":>10}  {"state (floats)":<16}  config, own overrides')
  for line in lines:
    print(f'{line["run"]:<{width}}  {line["params"]:>10,}  {line["state"]:<16}  {line["config"]} {line["overrides"]}')
  return lines


def _common_overrides(variants) -> dict:
  """The overrides every variant sets to the same value."""
  first = dict(variants[0].overrides)
  return {k: v for k, v in first.items() if all(k in o.overrides and o.overrides[k] == v for o in variants)}


def _finished(run_dir: str, config) -> bool:
  """results.json at the config's last step, and the runner's own record: nothing to do."""
  results_path = os.path.join(run_dir, 'results.json')
  # An epoch-counted run's length needs its data: train_and_evaluate finds out, and returns at once if finished.
  if config.train.num_steps <= 0 or not os.path.exists(os.path.join(run_dir, sweep_report.INFO_FILE)):
    return False
  if not os.path.exists(results_path):
    return False
  with open(results_path, encoding='utf-8') as f:
    return json.load(f)['step'] == config.train.num_steps


def _update_info(run_dir: str, **values) -> None:
  path = os.path.join(run_dir, sweep_report.INFO_FILE)
  info = {'wall_s': 0.0, 'cpu_s': 0.0, 'attempts': 0}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      info = json.load(f)
  for key in ('wall_s', 'cpu_s'):   # summed over attempts
    info[key] += values.pop(key)
  info['attempts'] += 1
  info.update(values)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=2)


def run_variant(variant, workdir: str, overrides: Sequence[str] = ()) -> str | None:
  """Trains (or resumes, or skips) one run; returns None, or the error line of a failure (also in error.txt)."""
  run_dir = os.path.join(workdir, variant.run_name)
  error_path = os.path.join(run_dir, sweep_report.ERROR_FILE)
  try:
    config = sweeps.resolve(variant, workdir, overrides)
    if variant.init_from and not os.path.exists(os.path.join(workdir, variant.init_from, 'results.json')):
      raise RuntimeError(f'init_from run {variant.init_from!r} has not finished (see {workdir}/'
                         f'{variant.init_from}/{sweep_report.ERROR_FILE}).')
    if _finished(run_dir, config):
      log.info('%s: finished; skipping.', variant.run_name)
      return None
    _train(config, run_dir)
  except Exception:  # pylint: disable=broad-exception-caught  # one failed variant must not stop the sweep
    os.makedirs(run_dir, exist_ok=True)
    with open(error_path, 'w', encoding='utf-8') as f:
      f.write(traceback.format_exc())
    error = traceback.format_exc().strip().splitlines()[-1]
    log.error('%s failed: %s (traceback in %s); going on with the sweep.', variant.run_name, error, error_path)
    return error
  if os.path.exists(error_path):
    os.remove(error_path)   # an earlier attempt failed; this one finished
  return None


def _train(config, run_dir: str) -> None:
  """train_and_evaluate, timed; the time counts toward the run's wall time even when interrupted or failed."""
  log.info('Training %s.', run_dir)
  start, cpu_start = time.perf_counter(), time.process_time()
  params = {}
  try:
    state, _ = train.train_and_evaluate(config, run_dir)
    params = {'params': models.count_params(state.params)}
  finally:
    if os.path.isdir(run_dir):
      _update_info(run_dir, wall_s=time.perf_counter() - start, cpu_s=time.process_time() - cpu_start, **params)


@contextlib.contextmanager
def compile_cache(directory: str):
  """JAX's persistent compilation cache in `directory` while the sweep runs.

  The seeds of a variant compile the same programs (the seed is data, not shape), and so does a rerun: they load
  the executables instead of compiling again (a tiny run on a CPU: 10 s of compiling become 1 s). A cache directory
  the user configured is left alone.
  """
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  previous_min_time = jax.config.jax_persistent_cache_min_compile_time_secs
  compilation_cache.set_cache_dir(directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)   # small programs too: they add up
  compilation_cache.reset_cache()   # JAX decides once per process whether to cache: let it decide again
  try:
    yield
  finally:
    jax.config.update('jax_compilation_cache_dir', None)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', previous_min_time)
    compilation_cache.reset_cache()


def run_sweep(sweep: str, workdir: str, only: str = '', overrides: Sequence[str] = ()) -> dict[str, str]:
  """Runs the selected variants in order, then writes the table and plots of every run found.

  Returns {run name: error line} of the runs that failed.
  """
  variants = sweeps.load(sweep)
  selected = _select(variants, only)
  os.makedirs(workdir, exist_ok=True)
  failures = {}
  with compile_cache(os.path.join(workdir, 'compile_cache')):
    for i, variant in enumerate(selected):
      log.info('Sweep %s: run %d of %d: %s', sweep, i + 1, len(selected), variant.run_name)
      if (error := run_variant(variant, workdir, overrides)) is not None:
        failures[variant.run_name] = error
  path, _, arg = sweep.partition(':')
  write_report(variants, workdir, title=os.path.splitext(os.path.basename(path))[0] + (f':{arg}' if arg else ''))
  return failures


def write_report(variants, workdir: str, title: str) -> str:
  """results.csv, results.md and plots/ over every run of the sweep present in workdir; returns the markdown."""
  groups = sweep_report.group_runs([sweep_report.read_run(workdir, v) for v in variants])
  metric_names, rows = sweep_report.summarize(groups)
  sweep_report.write_csv(os.path.join(workdir, 'results.csv'), metric_names, rows)
  text = sweep_report.markdown(metric_names, rows, groups, workdir)
  plots = sweep_plots.write_all(groups, os.path.join(workdir, 'plots'), title)
  text += ''.join(f'\n![{os.path.basename(p)}](plots/{os.path.basename(p)})\n' for p in plots)
  with open(os.path.join(workdir, 'results.md'), 'w', encoding='utf-8') as f:
    f.write(f'# {title}\n\n{text}')
  log.info('Wrote %s/results.csv, results.md and %d plots.', workdir, len(plots))
  return text
