"""The plots of a sweep in DIR/plots/ (PNG, matplotlib Agg): learning curves, final metrics, recall vs length
and vs state size.

  learning_curves.png     validation metric against training step, one panel per variant: the mean over seeds
                          and a band from the lowest to the highest seed
  final_<metric>.png      the final validation metric per variant: mean, sample-std error bars, one dot per seed
  recall_vs_length.png    (MQAR sweeps over data.max_len, each model at one width) final validation query accuracy
                          against sequence length, one line per model
  recall_vs_state.png     (MQAR sweeps over model.d_model) final validation query accuracy against the state the
                          model holds after the sequence (`held_state`), log x, one panel per sequence length and
                          one line per model, as Zoology's figure 2
"""

import math
import os

import matplotlib
import ml_collections

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from lm_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
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
  if _is_state_sweep(groups):   # its panels are the lengths: recall_vs_length's lines, one per model and width
    paths.append(recall_vs_state(groups, os.path.join(directory, 'recall_vs_state.png'), title))
  elif _is_length_sweep(groups):
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


def _axis_sets(labels, values, axis: int) -> bool:
  """Whether grid axis `axis` sets the value: each of its labels goes with one value, and it has several labels."""
  value_of = {}
  for label, value in zip(labels, values):
    value_of.setdefault(label[axis], set()).add(value)
  return len(value_of) > 1 and all(len(v) == 1 for v in value_of.values())


def _width_axis(groups, labels, candidates) -> int | None:
  """The axis that sets model.d_model and leaves, once dropped, lines of one model.name each at several widths.

  A model axis may set d_model too (recall_mixers.py: each model its own width), but dropping it mixes models.
  """
  for axis in candidates:
    if not _axis_sets(labels, [g.finished[0].config.model.d_model for g in groups], axis):
      continue
    lines = {}
    for label, group in zip(labels, groups):
      lines.setdefault(tuple(l for a, l in enumerate(label) if a != axis), []).append(group.finished[0].config.model)
    if all(len({m.name for m in line}) == 1 and len({m.d_model for m in line}) > 1 for line in lines.values()):
      return axis
  return None


def series_names(groups, drop_width: bool = False) -> list[str]:
  """The line each group belongs to: its labels minus the axis that sets the length (and, with `drop_width`, the
  axis that sets the width: `_width_axis`).

  An axis sets the length when every label on it goes with one max_len. Groups without grid labels fall back to
  the model name.
  """
  lengths = [g.finished[0].config.data.max_len for g in groups]
  labels = [g.runs[0].variant.labels for g in groups]
  num_axes = min(len(l) for l in labels)
  kept = [axis for axis in range(num_axes) if not _axis_sets(labels, lengths, axis)]
  if drop_width and (width := _width_axis(groups, labels, kept)) is not None:
    kept.remove(width)
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


# ---------------------------------------------------------------------------------------------------- state size

def held_state(config) -> int:
  """Floats the model holds about the past after the run's data.max_len = T tokens: Zoology's x-axis.

  A recurrent state is the same after any T. A KV cache holds the keys and values of the tokens it keeps: all T,
  or with a sliding window of w the last min(T, w). `models.state_size` gives the cache per token, or with a window
  the cache of w tokens (griffin: 1024 when model.attention_window is 0) even where T < w; with the window set to
  T it gives the cache of T tokens, and the run holds the smaller of the two. With 2 layers of d_model 64:

    transformer, T 128:                    256 per token       → 256 · 128 = 32768
    the same, attention_window 32:         8192 per sequence   → 8192 (32 of the 128 tokens)
    the same, attention_window 256:        65536 per sequence  → 32768 (the 128 tokens there are)
    lstm, any T:                           256 per sequence    → 256
  """
  length = config.data.max_len
  model_config = ml_collections.ConfigDict(config.model.to_dict())   # unlocked: a copy to set the window on
  sizes = [models.state_size(model_config)]
  model_config.attention_window = length
  sizes.append(models.state_size(model_config))
  return min(floats * length if unit == 'per token' else floats for floats, unit in sizes)


def _is_state_sweep(groups) -> bool:
  """MQAR, and some model runs at more than one width at one length."""
  if not all(g.finished[0].config.data.name == 'mqar' for g in groups):
    return False
  widths = {}
  for name, group in zip(series_names(groups, drop_width=True), groups):
    config = group.finished[0].config
    widths.setdefault((name, config.data.max_len), set()).add(config.model.d_model)
  return any(len(w) > 1 for w in widths.values())


def state_points(groups) -> dict[int, dict[str, list[tuple[int, float, float]]]]:
  """{length: {line: [(held state, mean accuracy, sample std), ...] by state}}: what recall_vs_state draws.

  Lines are `series_names(groups, drop_width=True)`; the std is 0.0 for one seed.
  """
  points = {}
  for name, group in zip(series_names(groups, drop_width=True), groups):
    config = group.finished[0].config
    mean, std = sweep_report.mean_std([r.final_metrics()['validation/accuracy'] for r in group.finished])
    line = points.setdefault(config.data.max_len, {}).setdefault(name, [])
    line.append((held_state(config), mean, 0.0 if math.isnan(std) else std))
  return {length: {name: sorted(line) for name, line in lines.items()} for length, lines in sorted(points.items())}


def recall_vs_state(groups, path: str, title: str) -> str:
  points = state_points(groups)
  names = list(dict.fromkeys(series_names(groups, drop_width=True)))   # one colour per model in every panel
  pairs = {g.finished[0].config.data.max_len: g.finished[0].config.data.mqar.num_pairs for g in groups}
  vocab = groups[0].finished[0].config.data.vocab_size
  fig, axes = plt.subplots(1, len(points), figsize=(3.6 * len(points) + 1.8, 3.6), squeeze=False, sharey=True)
  for ax, (length, lines) in zip(axes.flat, points.items()):
    for i, name in enumerate(names):
      if name in lines:
        states, means, stds = zip(*lines[name])
        ax.errorbar(states, means, yerr=stds, marker='o', markersize=4, capsize=3, color=f'C{i % 10}',
                    linestyle='-' if i < 10 else '--', label=name)
    ax.axhline(1 / ((vocab - 6) // 2), color='gray', linestyle=':', linewidth=1,
               label=f'chance (1 of {(vocab - 6) // 2} values)')
    ax.set_xscale('log')
    ax.set_ylim(0, 1.05)
    ax.set_title(f'T = {length} tokens, {pairs[length]} key-value pairs', fontsize=9)
    ax.set_xlabel('state after T tokens (floats)', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, which='both')
  axes.flat[0].set_ylabel('final validation query accuracy', fontsize=8)
  handles, labels = axes.flat[0].get_legend_handles_labels()
  for ax in axes.flat[1:]:   # a line absent from the first panel still gets its legend entry
    for handle, label in zip(*ax.get_legend_handles_labels()):
      if label not in labels:
        handles.append(handle)
        labels.append(label)
  axes.flat[-1].legend(handles, labels, title='model', fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.suptitle(f'{title}: MQAR recall vs state size (mean ± sample std over seeds; one point per width)\n'
               'state: the recurrent state, or the KV cache of the min(T, window) tokens attention keeps',
               fontsize=10)
  fig.tight_layout()
  return _save(fig, path)
