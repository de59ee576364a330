"""The training loop end to end on synthetic data: it learns, resumes exactly, and 1 device == 2 devices."""

import json
import os
from unittest import mock

import chex
import fixtures
import jax
import numpy as np
import pytest

from lm_jax import checkpoint
from lm_jax import steps
from lm_jax import train


def tiny_recall_config(**train_overrides):
  """fixtures.recall() with `train_overrides` naming keys of its train section (num_steps=60)."""
  return fixtures.recall({f'train.{key}': value for key, value in train_overrides.items()})


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def poisoned_train_step(from_step, until_step=None):
  """make_train_step whose steps from_step..until_step see NaN loss weights, as from a bad batch."""
  real_make_train_step = steps.make_train_step

  def make(*args, **kwargs):
    step_fn = real_make_train_step(*args, **kwargs)

    def poisoned(state, batch, with_norms):
      if from_step <= int(state.step) < (until_step or 1 << 30):
        batch = {**batch, 'weights': batch['weights'] * np.nan}
      return step_fn(state, batch, with_norms)
    return poisoned
  return make


class TrainLoopTest(chex.TestCase):

  @pytest.mark.slow   # 60 steps, then the finished run again
  def test_trains_writes_everything_and_does_not_retrain(self):
    workdir = self.create_tempdir().full_path
    config = tiny_recall_config(num_steps=60, log_every_steps=10, eval_every_steps=30, checkpoint_every_steps=30)
    state, results = train.train_and_evaluate(config, workdir)
    self.assertEqual(int(state.step), 60)
    for name in ('config.json', 'metrics.jsonl', 'results.json', 'tokenizer', 'checkpoints', 'events'):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    lines = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    train_losses = [l['loss'] for l in lines if l['split'] == 'train']
    self.assertLen(train_losses, 6)
    self.assertLess(train_losses[-1], 0.8 * train_losses[0])
    for line in (l for l in lines if l['split'] == 'train'):   # the logged step's norms, from the step and the loop
      self.assertTrue(all(np.isfinite(line[k]) and line[k] > 0 for k in ('grad_norm', 'param_norm', 'update_norm')))
    self.assertEqual([l['step'] for l in lines if l['split'] == 'validation'], [30, 60])
    self.assertEqual(set(results), {'step', 'validation'})  # mqar has no test split
    self.assertGreater(results['validation']['accuracy'], 0.1)  # chance is 1/14 (num keys for vocab 32)
    self.assertTrue(np.isfinite(results['validation']['perplexity']))
    self.assertIn('bits_per_byte', results['validation'])
    with open(os.path.join(workdir, 'results.json')) as f:
      self.assertEqual(json.load(f), results)
    # A finished run is not retrained: same results, no new metric lines.
    _, again = train.train_and_evaluate(config, workdir)
    self.assertEqual(again, results)
    self.assertLen(read_jsonl(os.path.join(workdir, 'metrics.jsonl')), len(lines) + 0)

  @pytest.mark.slow   # three runs
  def test_resume_is_bitwise_exact(self):
    straight, resumed = self.create_tempdir().full_path, self.create_tempdir().full_path
    final_straight, _ = train.train_and_evaluate(tiny_recall_config(num_steps=20), straight)
    train.train_and_evaluate(tiny_recall_config(num_steps=10), resumed)  # "interrupted" after 10 steps
    final_resumed, _ = train.train_and_evaluate(tiny_recall_config(num_steps=20), resumed)
    chex.assert_trees_all_equal(jax.device_get(final_straight.params), jax.device_get(final_resumed.params))
    chex.assert_trees_all_equal(jax.device_get(final_straight.opt_state), jax.device_get(final_resumed.opt_state))
    loss = lambda w: [l['loss'] for l in read_jsonl(os.path.join(w, 'metrics.jsonl')) if l['split'] == 'train']
    self.assertEqual(loss(straight), loss(resumed))

  @pytest.mark.slow   # two runs
  def test_one_device_equals_two_devices(self):
    self.assertLen(jax.devices(), 2)
    one, two = self.create_tempdir().full_path, self.create_tempdir().full_path
    state_one, _ = train.train_and_evaluate(tiny_recall_config(), one, devices=jax.devices()[:1])
    state_two, _ = train.train_and_evaluate(tiny_recall_config(), two)
    loss = lambda w: [l['loss'] for l in read_jsonl(os.path.join(w, 'metrics.jsonl')) if l['split'] == 'train']
    np.testing.assert_allclose(loss(one), loss(two), rtol=1e-5)
    chex.assert_trees_all_close(fixtures.without_key_bias(state_one.params),
                                fixtures.without_key_bias(state_two.params), atol=1e-5)

  @pytest.mark.slow   # two runs
  def test_gradient_accumulation_equals_one_big_batch(self):
    whole, accumulated = self.create_tempdir().full_path, self.create_tempdir().full_path
    state_whole, _ = train.train_and_evaluate(tiny_recall_config(num_steps=5), whole)
    config = tiny_recall_config(num_steps=5)
    config.optim.grad_accum_steps = 4
    state_accumulated, _ = train.train_and_evaluate(config, accumulated)
    loss = lambda w: [l['loss'] for l in read_jsonl(os.path.join(w, 'metrics.jsonl')) if l['split'] == 'train']
    np.testing.assert_allclose(loss(whole), loss(accumulated), rtol=1e-5)
    chex.assert_trees_all_close(fixtures.without_key_bias(state_whole.params),
                                fixtures.without_key_bias(state_accumulated.params), atol=1e-5)

  @pytest.mark.slow   # a run to its eighth step
  def test_nan_loss_halts_and_keeps_last_good_checkpoint(self):
    workdir = self.create_tempdir().full_path
    config = tiny_recall_config(num_steps=30, checkpoint_every_steps=5)

    with mock.patch.object(steps, 'make_train_step', poisoned_train_step(from_step=7)):
      with self.assertRaisesRegex(FloatingPointError, r'Loss is nan at step 8: stopping\. Non-finite gradient '
                                  r'norms in: decoder/.*last good checkpoint \(step 5\)'):
        train.train_and_evaluate(config, workdir)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=3, best_metric='loss',
                                   best_mode='min')
    self.assertEqual(ckpt.latest_step(), 5)
    ckpt.close()

  @pytest.mark.slow   # a 20-step run
  def test_skip_nonfinite_steps_skips_and_counts(self):
    workdir = self.create_tempdir().full_path
    config = tiny_recall_config(num_steps=20, log_every_steps=10, skip_nonfinite_steps=True)
    with mock.patch.object(steps, 'make_train_step', poisoned_train_step(from_step=6, until_step=9)):
      state, _ = train.train_and_evaluate(config, workdir)
    chex.assert_tree_all_finite(jax.device_get(state.params))
    lines = [l for l in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if l['split'] == 'train']
    self.assertEqual([l['skipped'] for l in lines], [3.0, 0.0])
    self.assertTrue(all(np.isfinite(l['loss']) for l in lines))

  def test_logs_param_and_update_norms(self):
    workdir = self.create_tempdir().full_path
    state, _ = train.train_and_evaluate(tiny_recall_config(num_steps=5, log_every_steps=5), workdir)
    (line,) = [l for l in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if l['split'] == 'train']
    # The last logged param norm is of the params entering step 5; the final one is after it: close, not equal.
    final_norm = float(np.sqrt(sum(np.sum(np.square(p)) for p in jax.tree.leaves(jax.device_get(state.params)))))
    self.assertBetween(line['param_norm'], 0.9 * final_norm, 1.1 * final_norm)
    self.assertGreater(line['update_norm'], 0.0)

  def test_refuses_workdir_of_another_model(self):
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(tiny_recall_config(num_steps=2, log_every_steps=1), workdir)
    other = tiny_recall_config(num_steps=2)
    other.model.d_model = 64
    with self.assertRaisesRegex(ValueError, r'model\.d_model: 32 -> 64'):
      train.train_and_evaluate(other, workdir)

  def test_labels_beyond_num_classes_are_refused(self):
    tmp = self.create_tempdir()
    reviews = tmp.create_file('reviews.jsonl', content='\n'.join(
        json.dumps({'text': f'review number {i}', 'label': i % 3}) for i in range(40)))
    config = fixtures.recall({'data.name': 'jsonl', 'data.paths': reviews.full_path, 'data.tokenizer': 'bytes',
                              'model.task': 'classification', 'model.num_classes': 2})
    with self.assertRaisesRegex(ValueError, r'labels 0\.\.2, more than config\.model\.num_classes=2'):
      train.prepare_run(config, os.path.join(tmp.full_path, 'run'))

  def test_batch_size_must_divide_device_count(self):
    with self.assertRaisesRegex(
        ValueError, r'config\.train\.batch_size=15 must divide by the batch shards \(mesh data × fsdp = 2\)'):
      train.train_and_evaluate(tiny_recall_config(batch_size=15), self.create_tempdir().full_path)


@pytest.mark.slow   # pretrains an MLM, then builds a classifier from it
class InitFromTest(chex.TestCase):

  def test_mlm_encoder_initializes_a_classifier(self):
    tmp = self.create_tempdir()
    rng = np.random.default_rng(0)
    words = ['good', 'bad', 'film', 'plot', 'actor', 'great', 'awful', 'scene', 'story', 'music']
    sentence = lambda: ' '.join(rng.choice(words, 12))
    corpus = tmp.create_file('corpus.txt', content='\n\n'.join(sentence() for _ in range(200)))
    labelled = tmp.create_file('reviews.jsonl', content='\n'.join(
        json.dumps({'text': sentence(), 'label': int(rng.integers(2))}) for _ in range(200)))

    def tiny(name, path, task):
      return fixtures.recall({'train.num_steps': 3, 'train.log_every_steps': 1, 'data.name': name,
                              'data.paths': path.full_path, 'data.tokenizer': 'bytes', 'model.task': task})

    mlm_dir = os.path.join(tmp.full_path, 'mlm')
    pretrained, _ = train.train_and_evaluate(tiny('text_files', corpus, 'mlm'), mlm_dir)

    classifier = tiny('jsonl', labelled, 'classification')
    classifier.init_from = mlm_dir
    with self.assertRaisesRegex(ValueError, r'classifier_head/.*missing in the checkpoint'):
      train.prepare_run(classifier, os.path.join(tmp.full_path, 'no_reinit'))
    classifier.init_from_reinit = 'head'
    finetune_dir = os.path.join(tmp.full_path, 'finetune')
    run = train.prepare_run(classifier, finetune_dir)
    run.ckpt.close()
    state = run.state
    chex.assert_trees_all_equal(jax.device_get(state.params['encoder']), jax.device_get(pretrained.params['encoder']))
    self.assertIn('classifier_head', state.params)
    self.assertNotIn('mlm_head', state.params)
    self.assertEqual(sorted(os.listdir(os.path.join(finetune_dir, 'tokenizer'))),
                     sorted(os.listdir(os.path.join(mlm_dir, 'tokenizer'))))
