"""The classification report: what results.json, `lm_jax.evaluate` and the baseline say about a classifier.

From the confusion matrix C (rows: true class, columns: predicted class):

    precision_k = C[k, k] / Σ_i C[i, k]      recall_k = C[k, k] / Σ_j C[k, j]      support_k = Σ_j C[k, j]
    f1_k = 2·precision_k·recall_k / (precision_k + recall_k)      macro-F1 = mean_k f1_k      accuracy = tr C / Σ C

A class never predicted has precision 0, one never present recall 0 and support 0 (as scikit-learn's
`zero_division=0`); macro-F1 averages over every class of the model, present or not.
"""

import os

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
  """int64 [C, C]: how many examples of class i (row) were predicted as j (column); weight-0 rows do not count.

    confusion_matrix([0, 1, 1], [0, 0, 1], 2) == [[1, 0], [1, 1]]
  """
  weights = np.ones(len(labels)) if weights is None else np.asarray(weights)
  counts = np.zeros((num_classes, num_classes), np.int64)
  keep = weights > 0
  np.add.at(counts, (np.asarray(labels)[keep], np.asarray(predictions)[keep]), 1)
  return counts


def classification_report(confusion: np.ndarray, names: tuple[str, ...] | None = None) -> dict:
  """accuracy, macro_f1, per_class {name: precision, recall, f1, support} and the confusion matrix (a list of
  rows), from `confusion`; classes are named by `names`, or by their ids."""
  confusion = np.asarray(confusion, np.float64)
  names = names or tuple(str(k) for k in range(len(confusion)))
  true_positives = np.diag(confusion)
  predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
  precision = np.divide(true_positives, predicted, out=np.zeros_like(predicted), where=predicted > 0)
  recall = np.divide(true_positives, support, out=np.zeros_like(support), where=support > 0)
  both = precision + recall
  f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
  return {
      'accuracy': float(true_positives.sum() / max(confusion.sum(), 1)),
      'macro_f1': float(f1.mean()),
      'per_class': {name: {'precision': float(p), 'recall': float(r), 'f1': float(f), 'support': int(s)}
                    for name, p, r, f, s in zip(names, precision, recall, f1, support)},
      'confusion': confusion.astype(np.int64).tolist(),
  }


def format_report(split: str, report: dict) -> str:
  """The report as text: per-class precision, recall, F1 and support, then the confusion matrix."""
  names = list(report['per_class'])
  width = max(10, *(len(n) for n in names))
  lines = [f'{split}: accuracy {report["accuracy"]:.4f}, macro-F1 {report["macro_f1"]:.4f}',
           f'{"class":<{width}}  precision  recall  f1      support']
  for name, row in report['per_class'].items():
    lines.append(f'{name:<{width}}  {row["precision"]:9.4f}  {row["recall"]:6.4f}  {row["f1"]:6.4f}  '
                 f'{row["support"]:7d}')
  lines.append('confusion (rows: true, columns: predicted, in the order above)')
  lines += ['  ' + ' '.join(f'{count:7d}' for count in row) for row in report['confusion']]
  return '\n'.join(lines)


def plot_confusion(report: dict, path: str, title: str) -> str:
  """The confusion matrix as a PNG at `path` (counts in the cells, rows normalized for the colour)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (only reports draw)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(report['per_class'])
  counts = np.asarray(report['confusion'])
  rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  size = 1.5 + 0.6 * len(names)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  image = ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  ax.set_xticks(range(len(names)), names, rotation=45, ha='right')
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  for (i, j), count in np.ndenumerate(counts):
    ax.text(j, i, str(count), ha='center', va='center', color='white' if rates[i, j] > 0.5 else 'black')
  fig.colorbar(image, ax=ax, label='share of the true class')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def write_reports(directory: str, results: dict) -> list[str]:
  """For each split of `results` (train.py's results.json) with a classification report: DIR/<split>.txt (the
  text report, the baseline's beside it when there is one) and DIR/<split>_confusion.png; returns the paths."""
  os.makedirs(directory, exist_ok=True)
  written = []
  baseline = results.get('baseline', {})
  for split, metrics in results.items():
    if not isinstance(metrics, dict) or 'confusion' not in metrics:
      continue
    text = format_report(split, metrics)
    if split in baseline:
      text += '\n\nbaseline (' + baseline['method'] + ')\n' + format_report(split, baseline[split])
    path = os.path.join(directory, f'{split}.txt')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text + '\n')
    written += [path, plot_confusion(metrics, os.path.join(directory, f'{split}_confusion.png'), split)]
  return written
