"""The plots of a sweep in DIR/plots/ (PNG, matplotlib Agg): learning curves, final metrics, recall vs length.

  learning_curves.png     validation metric against training step, one panel per variant: the mean over seeds
                          and a band from the lowest to the highest seed
  final_<metric>.png      the final validation metric per variant: mean, sample-std error bars, one dot per seed
  recall_vs_length.png    (MQAR sweeps over data.max_len) final validation query accuracy against sequence length,
                          one line per model
"""

import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from lm_jax.sweeps import report as sweep_report  # pylint: disable=g-import-not-at-top,wrong-import-position

_METRIC_LABELS = {'accuracy': 'accuracy (fraction correct)', 'loss': 'cross-entropy loss (nats)',
                  'perplexity': 'perplexity', 'bits_per_byte': 'bits per byte'}
_TASK_LABELS = {'classification': 'classification', 'lm': 'next-token LM', 'mlm': 'masked LM'}


def _metric(run: sweep_report.RunResult) -> str:
  """The metric a run is judged by: its config's train.best_metric."""
  return run.config.train.best_metric


def _label(run: sweep_report.RunResult, split: str = 'validation') -> str:
  """'validation accuracy (fraction correct)'; MQAR scores only queries, so its accuracy is 'query accuracy'."""
  metric = _metric(run)
  text = _METRIC_LABELS.get(metric, metric)
  if run.config.data.name == 'mqar' and metric == 'accuracy':
    text = 'query ' + text
  return f'{split} {text}'


def write_all(groups: list[sweep_report.Group], directory: str, title: str) -> list[str]:
  """Writes every plot that applies to these groups; returns the paths written."""
  groups = [g for g in groups if g.finished]
  if not groups:
    return []
  os.makedirs(directory, exist_ok=True)
  paths = [learning_curves(groups, os.path.join(directory, 'learning_curves.png'), title)]
  paths += final_metrics(groups, directory, title)
  if _is_length_sweep(groups):
    paths.append(recall_vs_length(groups, os.path.join(directory, 'recall_vs_length.png'), title))
  return paths


def _save(fig, path: str) -> str:
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


def _columns(groups) -> int:
  """One column per label of a grid's last axis (so a row is one value of the other axes), else up to 4."""
  labels = [g.runs[0].variant.labels for g in groups]
  if all(len(l) >= 2 for l in labels):
    last = len({l[-1] for l in labels})
    if 1 < last <= 6 and len(groups) % last == 0:
      return last
  return min(4, len(groups))


def learning_curves(groups, path: str, title: str) -> str:
  cols = _columns(groups)
  rows = math.ceil(len(groups) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
  for ax, group in zip(axes.flat, groups):
    runs = group.finished
    metric = _metric(runs[0])
    curves = [r.curve('validation', metric) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.array([[c[s] for s in steps] for c in curves])
    ax.fill_between(steps, values.min(0), values.max(0), alpha=0.3, color='C0', label='lowest to highest seed')
    ax.plot(steps, values.mean(0), color='C0', marker='.', label='mean over seeds')
    ax.set_title(f'{group.name} ({len(runs)} seed{"s" * (len(runs) > 1)})', fontsize=9)
    ax.set_xlabel('training step (optimizer updates)', fontsize=8)
    ax.set_ylabel(_label(runs[0]), fontsize=8)
    if metric == 'accuracy':
      ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(groups):]:
    ax.set_visible(False)
  axes.flat[0].legend(fontsize=7, loc='best')
  fig.suptitle(f'{title}: validation metric during training', fontsize=11)
  fig.tight_layout()
  return _save(fig, path)


def final_metrics(groups, directory: str, title: str) -> list[str]:
  """One figure per metric judged (a sweep may mix tasks, e.g. an MLM pretraining run and classifiers)."""
  by_metric = {}
  for group in groups:
    by_metric.setdefault((_metric(group.finished[0]), group.finished[0].config.model.task), []).append(group)
  paths = []
  for (metric, task), members in by_metric.items():
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(members) + 2), 3.6))
    x = np.arange(len(members))
    for i, group in enumerate(members):
      values = [r.final_metrics()[f'validation/{metric}'] for r in group.finished]
      mean, std = sweep_report.mean_std(values)
      ax.bar(i, mean, color='C0', alpha=0.6, yerr=None if math.isnan(std) else std, capsize=4,
             label='mean over seeds (± sample std)' if i == 0 else None)
      ax.plot([i] * len(values), values, 'k.', label='one seed' if i == 0 else None)
    ax.set_xticks(x, [g.name for g in members], rotation=35, ha='right', fontsize=8)
    ax.set_xlabel('variant')
    ax.set_ylabel('final ' + _label(members[0].finished[0]), fontsize=9)
    if metric == 'accuracy':
      ax.set_ylim(0, 1.05)
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f'{title}: final validation {metric} ({_TASK_LABELS[task]})', fontsize=10)
    suffix = '' if len(by_metric) == 1 else f'_{task}'
    paths.append(_save(fig, os.path.join(directory, f'final_{metric}{suffix}.png')))
  return paths


def _is_length_sweep(groups) -> bool:
  configs = [g.finished[0].config for g in groups]
  return all(c.data.name == 'mqar' for c in configs) and len({c.data.max_len for c in configs}) > 1


def series_names(groups) -> list[str]:
  """The line each group belongs to in recall_vs_length: its labels minus the axis that sets the length.

  An axis sets the length when every label on it goes with one max_len. Groups without grid labels fall back to
  the model name.
  """
  lengths = [g.finished[0].config.data.max_len for g in groups]
  labels = [g.runs[0].variant.labels for g in groups]
  num_axes = min(len(l) for l in labels)

  def sets_length(axis):
    length_of = {}
    for label, length in zip(labels, lengths):
      length_of.setdefault(label[axis], set()).add(length)
    return len(length_of) > 1 and all(len(v) == 1 for v in length_of.values())

  kept = [axis for axis in range(num_axes) if not sets_length(axis)]
  return ['-'.join(label[a] for a in kept) or g.finished[0].config.model.name for label, g in zip(labels, groups)]


def recall_vs_length(groups, path: str, title: str) -> str:
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  series = series_names(groups)
  pairs = {}
  names = list(dict.fromkeys(series))
  for i, name in enumerate(names):
    members = sorted((g for g, s in zip(groups, series) if s == name), key=lambda g: g.finished[0].config.data.max_len)
    lengths, means, stds = [], [], []
    for group in members:
      config = group.finished[0].config
      mean, std = sweep_report.mean_std([r.final_metrics()['validation/accuracy'] for r in group.finished])
      lengths.append(config.data.max_len)
      means.append(mean)
      stds.append(0.0 if math.isnan(std) else std)
      pairs[config.data.max_len] = config.data.mqar.num_pairs
    dodge = 2 ** (0.04 * (i - (len(names) - 1) / 2))   # side by side, so error bars do not hide each other
    ax.errorbar([l * dodge for l in lengths], means, yerr=stds, marker='o', capsize=3, color=f'C{i}', label=name)
  vocab = groups[0].finished[0].config.data.vocab_size
  ax.axhline(1 / ((vocab - 6) // 2), color='gray', linestyle='--', linewidth=1,
             label=f'chance (1 of {(vocab - 6) // 2} values)')
  ax.set_xscale('log', base=2)
  ticks = sorted(pairs)
  ax.set_xticks(ticks, [f'{t}\n{pairs[t]} pairs' for t in ticks])
  ax.minorticks_off()
  ax.set_ylim(0, 1.05)
  ax.set_xlabel('sequence length (tokens) and key-value pairs per example')
  ax.set_ylabel('final validation query accuracy')
  ax.grid(alpha=0.3)
  ax.legend(title='model', fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.set_title(f'{title}: MQAR recall vs sequence length\n(mean ± sample std over seeds)', fontsize=10)
  return _save(fig, path)
