"""The classification report against scikit-learn (a peer), the eval step's confusion matrix against NumPy, and a
run on named csv splits end to end: results.json, the reports, `lm_jax.evaluate`, `lm_jax.predict`."""

import csv
import json
import os
import subprocess
import sys

from absl.testing import absltest
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from lm_jax import baseline
from lm_jax import report
from lm_jax import steps
from lm_jax import train
from tests import fixtures

sklearn_metrics = pytest.importorskip('sklearn.metrics')


class ReportTest(absltest.TestCase):

  def test_equals_scikit_learn_on_random_labels(self):
    rng = np.random.default_rng(0)
    for trial in range(5):
      classes = int(rng.integers(2, 6))
      labels = rng.integers(0, classes, 200)
      predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, classes - 1, 200))  # the last class:
      confusion = report.confusion_matrix(labels, predictions, classes)                       # rarely predicted
      np.testing.assert_array_equal(confusion, sklearn_metrics.confusion_matrix(labels, predictions,
                                                                                labels=range(classes)))
      got = report.classification_report(confusion)
      precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
          labels, predictions, labels=range(classes), zero_division=0)
      self.assertAlmostEqual(got['accuracy'], sklearn_metrics.accuracy_score(labels, predictions), msg=trial)
      self.assertAlmostEqual(got['macro_f1'], sklearn_metrics.f1_score(labels, predictions, labels=range(classes),
                                                                       average='macro', zero_division=0), msg=trial)
      for k, row in enumerate(got['per_class'].values()):
        np.testing.assert_allclose([row['precision'], row['recall'], row['f1'], row['support']],
                                   [precision[k], recall[k], f1[k], support[k]], rtol=1e-12)

  def test_names_and_weights(self):
    confusion = report.confusion_matrix([0, 1, 1, 2], [0, 0, 1, 2], 3, weights=[1, 1, 1, 0])
    np.testing.assert_array_equal(confusion, [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    got = report.classification_report(confusion, ('neg', 'pos', 'meh'))
    self.assertEqual(list(got['per_class']), ['neg', 'pos', 'meh'])
    self.assertEqual(got['per_class']['meh'], {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 0})

  def test_eval_step_confusion_equals_numpy(self):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(32, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 32)
    weights = (rng.random(32) < 0.8).astype(np.float32)
    got = steps.confusion_counts(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    chex.assert_trees_all_close(np.asarray(got), report.confusion_matrix(labels, logits.argmax(-1), 4, weights))


def _write_split(path, rng, n):
  """Reviews whose class shows in their words (so a classifier and the baseline can learn it), named classes."""
  words = {'good': ['fine', 'great', 'superb'], 'bad': ['awful', 'poor', 'dull'], 'meh': ['plain', 'okay', 'average']}
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(['review', 'sentiment'])
    for _ in range(n):
      label = str(rng.choice(sorted(words)))
      writer.writerow([' '.join(str(rng.choice(words[label] + ['the', 'film', 'was'])) for _ in range(8)), label])
  return path


@pytest.mark.slow
class NamedSplitsEndToEndTest(absltest.TestCase):

  def test_train_report_evaluate_predict(self):
    root = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    paths = {split: _write_split(os.path.join(root, f'{split}.csv'), rng, n)
             for split, n in (('train', 96), ('validation', 24), ('test', 24))}
    overrides = {'data.name': 'csv', 'data.paths': paths['train'], 'data.validation_paths': paths['validation'],
                 'data.test_paths': paths['test'], 'data.text_column': 'review', 'data.label_column': 'sentiment',
                 'data.tokenizer': 'bytes', 'data.max_len': 48, 'model.task': 'classification',
                 'model.num_layers': 1, 'model.d_model': 16, 'model.num_heads': 2, 'model.mlp_dim': 32,
                 'optim.learning_rate': 3e-3, 'optim.warmup_steps': 2, 'train.batch_size': 8,
                 'train.eval_batch_size': 8, 'train.num_steps': 12, 'train.eval_every_steps': 12,
                 'train.checkpoint_every_steps': 12, 'train.log_every_steps': 6}
    workdir = os.path.join(root, 'run')
    _, results = train.train_and_evaluate(fixtures.config(overrides), workdir)

    with open(os.path.join(workdir, 'labels.json'), encoding='utf-8') as f:
      self.assertEqual(json.load(f), ['bad', 'good', 'meh'])
    with open(os.path.join(workdir, 'results.json'), encoding='utf-8') as f:
      saved = json.load(f)
    test = saved['test']
    self.assertEqual(set(test), {'loss', 'accuracy', 'macro_f1', 'per_class', 'confusion'})
    self.assertEqual(sum(row['support'] for row in test['per_class'].values()), 24)   # every test review, once
    self.assertEqual(np.sum(test['confusion']), 24)
    self.assertAlmostEqual(test['accuracy'], np.trace(test['confusion']) / 24)
    if baseline.available():
      self.assertEqual(saved['baseline']['method'], baseline.METHOD)
      self.assertGreater(saved['baseline']['test']['accuracy'], 0.9)   # the words give the class away
    for name in ('test.txt', 'test_confusion.png', 'validation.txt', 'validation_confusion.png'):
      self.assertTrue(os.path.exists(os.path.join(workdir, 'reports', name)), name)

    command = [sys.executable, '-m', 'lm_jax.evaluate', '--workdir', workdir]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    with open(os.path.join(workdir, 'evaluations', 'splits', 'results.json'), encoding='utf-8') as f:
      again = json.load(f)
    for split in ('validation', 'test'):   # the same checkpoint (the only one): the same figures
      self.assertEqual(again[split]['confusion'], saved[split]['confusion'])
      self.assertAlmostEqual(again[split]['macro_f1'], saved[split]['macro_f1'], places=6)
    self.assertIn('test: accuracy', printed)
    subprocess.run(command + ['--file', paths['test']], capture_output=True, text=True, check=True)
    with open(os.path.join(workdir, 'evaluations', 'test.csv', 'results.json'), encoding='utf-8') as f:
      self.assertEqual(json.load(f)['test']['confusion'], saved['test']['confusion'])

    predicted = subprocess.run([sys.executable, '-m', 'lm_jax.predict', '--workdir', workdir, '--json',
                                '--text', 'superb great fine film'], capture_output=True, text=True, check=True)
    line = json.loads(predicted.stdout.strip().splitlines()[-1])
    self.assertIn(line['label'], ('bad', 'good', 'meh'))
    self.assertEqual(['bad', 'good', 'meh'][line['label_id']], line['label'])
    self.assertEqual(set(line['probabilities']), {'bad', 'good', 'meh'})
    texts = self.create_tempfile(content='superb\u2028great film\n\nawful\x85dull\r\nplain okay\n').full_path
    predicted = subprocess.run([sys.executable, '-m', 'lm_jax.predict', '--workdir', workdir, '--file', texts],
                               capture_output=True, text=True, check=True)
    printed = [line.split('\t') for line in predicted.stdout.strip().split('\n')]   # split at newlines only
    self.assertEqual([text for _, _, text in printed], ['superb\u2028great film', 'awful\x85dull', 'plain okay'])
    self.assertTrue(all(name in ('bad', 'good', 'meh') for name, _, _ in printed))


if __name__ == '__main__':
  absltest.main()
