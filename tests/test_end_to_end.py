"""The README's main command on IMDB, offline: the real imdb_reviews builder prepared from a generated archive."""

import json
import os
import subprocess
import sys
import tempfile

import chex
import fixtures
import pytest

from test_data_imdb import prepare_offline  # the real builder on a generated aclImdb_v1.tar.gz

pytestmark = pytest.mark.slow   # the main command in subprocesses, 40 steps three times

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(workdir, data_dir, *extra):
  """`python -m lm_jax.main --config experiments/imdb.py:local`, shrunk to a tiny model and 40 steps."""
  overrides = {'data.tfds_data_dir': data_dir, 'data.download': False, 'data.vocab_size': 300, 'data.max_len': 64,
               'model.num_layers': 1, 'model.d_model': 32, 'model.num_heads': 2, 'model.mlp_dim': 64,
               'optim.learning_rate': 3e-3, 'optim.warmup_steps': 5, 'train.num_steps': 40,
               'train.log_every_steps': 10, 'train.eval_every_steps': 20, 'train.checkpoint_every_steps': 20,
               'train.eval_batch_size': 16}
  return subprocess.run([sys.executable, '-m', 'lm_jax.main', '--config', 'experiments/imdb.py:local', '--workdir',
                         workdir, *fixtures.flags(overrides), *extra], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


class ImdbMainCommandTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.data_dir = os.path.join(cls.tmp.name, 'tfds')
    prepare_offline(cls.tmp.name, fixtures.data('imdb_reviews', tfds_data_dir=cls.data_dir, vocab_size=300),
                    os.path.join(cls.tmp.name, 'tok'))

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_trains_resumes_and_evaluates(self):
    workdir = os.path.join(self.tmp.name, 'run')
    first = main_command(workdir, self.data_dir)
    self.assertEqual(first.returncode, 0, first.stderr[-3000:])
    self.assertIn('step 40/40 | loss', first.stderr)
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    self.assertEqual(set(results), {'step', 'validation', 'test', 'baseline'})
    self.assertEqual(set(results['baseline']), {'method', 'validation', 'test'})   # the bag of words, same splits
    # The generated reviews name their label ('train pos 7 good film ...'): a classifier that trains finds it in the
    # held-out validation reviews. (Test reviews start with 'test', a word the tokenizer never saw, so the label
    # word sits at another position there: no such promise for them.)
    self.assertGreaterEqual(results['validation']['accuracy'], 0.9, results)
    self.assertTrue(0.0 <= results['test']['accuracy'] <= 1.0 and results['test']['loss'] > 0, results)

    again = main_command(workdir, self.data_dir)  # a finished run is not retrained
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn('is finished', again.stderr)
    self.assertNotIn('step 10/40', again.stderr)

    evaluated = main_command(workdir, self.data_dir, '--mode=evaluate')
    self.assertEqual(evaluated.returncode, 0, evaluated.stderr[-3000:])
    self.assertEqual(json.loads(evaluated.stdout), {k: v for k, v in results.items() if k != 'baseline'})

  def test_missing_data_fails_fast_with_what_to_do(self):
    result = main_command(os.path.join(self.tmp.name, 'offline'), os.path.join(self.tmp.name, 'empty'))
    self.assertNotEqual(result.returncode, 0)
    self.assertIn('is not prepared in', result.stderr)
    self.assertIn('data.tfds_data_dir', result.stderr)
    self.assertNotIn('Traceback', result.stderr)
