"""The table of a sweep: what each run left in DIR/<run>/, merged over seeds into DIR/results.csv and results.md.

One row per variant name (its seeds merged): mean ± sample std (ddof=1; none for one seed) of every final metric
in results.json, n finished seeds, parameters, state size, steps, tokens seen (steps · batch · max_len: positions
including padding), wall time of the runner's attempts (compile, data and evaluation included) and training tokens/s
(the median of the loop's logged windows, so compile and evaluation are left out).
"""

import csv
import dataclasses
import json
import math
import os

import ml_collections
import numpy as np

from lm_jax import models
from lm_jax import sweeps

INFO_FILE = 'ablate.json'     # per run: parameters and the runner's wall time, summed over attempts
ERROR_FILE = 'error.txt'      # per run: the traceback of its last failed attempt


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What one run of a sweep left on disk (None where a file is absent)."""
  variant: sweeps.Variant
  config: ml_collections.ConfigDict | None
  results: dict | None
  info: dict
  error: str | None
  history: list[dict]

  @property
  def finished(self) -> bool:
    return self.results is not None and self.error is None

  def final_metrics(self) -> dict[str, float]:
    """{'validation/accuracy': ..., 'test/loss': ..., 'baseline/test/accuracy': ...}: the numbers of results.json
    (a classifier's per-class figures and confusion matrix stay there)."""
    splits = {split: metrics for split, metrics in self.results.items() if split not in ('step', 'baseline')}
    splits.update({f'baseline/{split}': metrics for split, metrics in self.results.get('baseline', {}).items()})
    return {f'{split}/{name}': value for split, metrics in splits.items() if isinstance(metrics, dict)
            for name, value in metrics.items() if isinstance(value, (int, float))}

  def curve(self, split: str, metric: str) -> dict[int, float]:
    """step → metric of `split` in metrics.jsonl (a step logged twice, before and after a resume: the later)."""
    return {line['step']: line[metric] for line in self.history if line['split'] == split and metric in line}

  @property
  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * self.config.data.max_len


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def read_run(workdir: str, variant: sweeps.Variant) -> RunResult:
  run_dir = os.path.join(workdir, variant.run_name)
  config = _read_json(os.path.join(run_dir, 'config.json'))
  error_path = os.path.join(run_dir, ERROR_FILE)
  error = None
  if os.path.exists(error_path):
    with open(error_path, encoding='utf-8') as f:
      error = f.read().strip().splitlines()[-1]   # the exception line of the traceback
  history = []
  if os.path.exists(os.path.join(run_dir, 'metrics.jsonl')):
    with open(os.path.join(run_dir, 'metrics.jsonl'), encoding='utf-8') as f:
      history = [json.loads(line) for line in f if line.strip()]
  return RunResult(variant, None if config is None else ml_collections.ConfigDict(config),
                   _read_json(os.path.join(run_dir, 'results.json')),
                   _read_json(os.path.join(run_dir, INFO_FILE)) or {}, error, history)


@dataclasses.dataclass(frozen=True)
class Group:
  """The runs of one variant name (its seeds), in sweep order."""
  name: str
  runs: tuple[RunResult, ...]

  @property
  def finished(self) -> tuple[RunResult, ...]:
    return tuple(r for r in self.runs if r.finished)

  @property
  def failed(self) -> tuple[RunResult, ...]:
    return tuple(r for r in self.runs if r.error is not None)


def group_runs(runs: list[RunResult]) -> list[Group]:
  names = list(dict.fromkeys(r.variant.name for r in runs))
  return [Group(name, tuple(r for r in runs if r.variant.name == name)) for name in names]


def _started(group: Group) -> bool:
  return bool(group.finished or group.failed)


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1); the std is nan for a single value."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _one(values) -> str:
  """The value all seeds share, else their range (they differ only if the sweep was edited between runs)."""
  unique = sorted(set(values))
  return '' if not unique else str(unique[0]) if len(unique) == 1 else f'{unique[0]}-{unique[-1]}'


def summarize(groups: list[Group]) -> tuple[list[str], list[dict]]:
  """(metric names, one row per group): the numbers results.csv holds."""
  metric_names = list(dict.fromkeys(m for g in groups for r in g.finished for m in r.final_metrics()))
  rows = []
  for group in filter(_started, groups):   # variants not run yet are listed under the table, not in it
    done = group.finished
    row = {'variant': group.name, 'n': len(done), 'failed': len(group.failed),
           'seeds': ' '.join(str(r.config.seed) for r in done)}
    if done:
      floats, unit = models.state_size(done[0].config.model)
      row.update(
          params=_one(r.info.get('params') for r in done if 'params' in r.info),
          state=f'{floats} {unit}',
          steps=_one(r.results['step'] for r in done),
          tokens_seen=_one(r.results['step'] * r.tokens_per_step for r in done),
          wall_s=mean_std([r.info.get('wall_s', math.nan) for r in done])[0],
          tokens_per_s=mean_std([_train_tokens_per_s(r) for r in done])[0])
      for metric in metric_names:
        values = [r.final_metrics()[metric] for r in done if metric in r.final_metrics()]
        if values:
          row[metric] = mean_std(values)
    rows.append(row)
  return metric_names, rows


def _train_tokens_per_s(run: RunResult) -> float:
  """Median over the loop's logged windows; the first window holds the compile, the median ignores it."""
  rates = [line['tokens_per_sec'] for line in run.history if line['split'] == 'train' and 'tokens_per_sec' in line]
  return float(np.median(rates)) if rates else math.nan


_COLUMNS = ('variant', 'n', 'failed', 'seeds', 'params', 'state', 'steps', 'tokens_seen', 'wall_s', 'tokens_per_s')


def write_csv(path: str, metric_names: list[str], rows: list[dict]) -> None:
  """Plain numbers: each metric as <metric>_mean and <metric>_std (sample std, ddof=1; empty for one seed)."""
  header = list(_COLUMNS) + [f'{m}_{stat}' for m in metric_names for stat in ('mean', 'std')]
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for row in rows:
      cells = [_csv_cell(row.get(c, '')) for c in _COLUMNS]
      for metric in metric_names:
        mean, std = row.get(metric, (math.nan, math.nan))
        cells += [_csv_cell(mean), _csv_cell(std)]
      writer.writerow(cells)


def _csv_cell(value) -> str:
  if isinstance(value, float):
    return '' if math.isnan(value) else repr(value)
  return str(value)


def _si(value) -> str:
  """12345678 -> '12.3M'; a range string passes through."""
  if not isinstance(value, (int, float)) and not str(value).isdigit():
    return str(value)
  value = float(value)
  for threshold, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(value) >= threshold:
      return f'{value / threshold:.3g}{suffix}'
  return f'{value:.3g}'


def _mean_pm_std(stats) -> str:
  mean, std = stats
  return f'{mean:.4g}' if math.isnan(std) else f'{mean:.4g} ± {std:.2g}'


def markdown(metric_names: list[str], rows: list[dict], groups: list[Group], workdir: str) -> str:
  """results.md: the table, how to read it, and the failed runs with their error line."""
  header = (['variant', 'n seeds', 'params', 'state (floats)', 'steps', 'tokens seen', 'wall time (s)', 'tokens/s']
            + [m.replace('/', ' ') for m in metric_names])
  lines = ['Final metrics: mean ± sample standard deviation (ddof=1) over the n finished seeds (one seed: mean '
           'only). State: KV-cache floats per token (transformer) or recurrent-state floats per sequence (RNN). '
           'Tokens seen = steps · batch · max_len. Wall time: the runner\'s mean per seed, compile and evaluation '
           'included; tokens/s: training only (median over logged windows).', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    if not row['n']:
      cells = [row['variant'], '0'] + [''] * (len(header) - 2)
    else:
      cells = [row['variant'], str(row['n']), f'{int(row["params"]):,}' if row['params'].isdigit() else row['params'],
               row['state'], str(row['steps']), _si(row['tokens_seen']), f'{row["wall_s"]:.0f}',
               _si(row['tokens_per_s'])]
      cells += [_mean_pm_std(row[m]) if m in row else '' for m in metric_names]
    lines.append('| ' + ' | '.join(cells) + ' |')
  failed = [r for g in groups for r in g.failed]
  if failed:
    lines += ['', f'Failed runs ({len(failed)}; the traceback is in DIR/<run>/{ERROR_FILE}):', '']
    lines += [f'- `{r.variant.run_name}`: {r.error} ({os.path.join(workdir, r.variant.run_name, ERROR_FILE)})'
              for r in failed]
  not_run = [r.variant.run_name for g in groups for r in g.runs if not r.finished and r.error is None]
  if not_run:
    lines += ['', f'Not run yet: {", ".join(not_run)}.']
  return '\n'.join(lines) + '\n'
