"""MQAR: every scored position asks for the value paired with its key; seeded, reproducible; the docstring's ids."""

import chex
import numpy as np

from experiments import base
from lm_jax import data as data_lib
from lm_jax.data import mqar


def _check_example(test, inputs, targets, weights, *, num_keys, num_pairs, num_queries):
  """Reads one example as a person would: the pairs first, then every query must be answered from them."""
  first = 6
  keys, values = inputs[0:2 * num_pairs:2] - first, inputs[1:2 * num_pairs:2] - first - num_keys
  test.assertTrue(np.all((keys >= 0) & (keys < num_keys)) and np.all((values >= 0) & (values < num_keys)))
  test.assertLen(set(keys.tolist()), num_pairs)
  answer = dict(zip(keys.tolist(), values.tolist()))
  scored = np.flatnonzero(weights)
  test.assertLen(scored, num_queries)
  test.assertTrue(np.all(scored >= 2 * num_pairs))
  asked = [int(inputs[t]) - first for t in scored]
  test.assertLen(set(asked), num_queries)
  for t, key in zip(scored, asked):
    test.assertEqual(targets[t] - first - num_keys, answer[key])
  np.testing.assert_array_equal(targets[:-1], inputs[1:])
  rest = np.ones(len(inputs), bool)
  rest[:2 * num_pairs] = False
  rest[scored] = rest[np.minimum(scored + 1, len(inputs) - 1)] = False
  test.assertTrue(np.all(inputs[rest] == 0))


class MqarTest(chex.TestCase):

  def test_examples_answer_their_queries(self):
    rng = np.random.default_rng(0)
    for vocab, length, pairs, queries in [(16, 10, 2, 2), (64, 40, 8, 5), (1000, 33, 16, 1), (20, 15, 7, 1)]:
      ex = mqar.generate(50, vocab_size=vocab, length=length, num_pairs=pairs, num_queries=queries, rng=rng)
      chex.assert_shape([ex['inputs'], ex['targets'], ex['weights']], [(50, length)] * 3)
      for i in range(50):
        _check_example(self, ex['inputs'][i], ex['targets'][i], ex['weights'][i], num_keys=(vocab - 6) // 2,
                       num_pairs=pairs, num_queries=queries)

  def test_docstring_ids_and_symbols(self):
    cfg = base.get_config().data
    cfg.name, cfg.vocab_size, cfg.max_len = 'mqar', 16, 10
    cfg.mqar.num_pairs, cfg.mqar.num_queries, cfg.mqar.num_train, cfg.mqar.num_eval = 2, 2, 8, 4
    data = data_lib.build(cfg, task='lm', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    tok = data.tokenizer
    self.assertEqual(tok.vocab_size, 16)
    self.assertEqual(tok.decode([7, 13, 9, 11, 0, 0, 9, 11, 7, 13]), 'k1 v2 k3 v0 k3 v0 k1 v2')
    self.assertEqual(tok.encode('k1 v2 k3 v0'), [7, 13, 9, 11])
    np.testing.assert_array_equal(tok.token_bytes()[[0, 5, 6, 15]], [0, 0, 2, 2])

  def test_seeded_and_reproducible(self):
    cfg = base.get_config().data
    cfg.name, cfg.vocab_size, cfg.max_len = 'mqar', 128, 48
    cfg.mqar.num_train, cfg.mqar.num_eval = 300, 40

    def arrays(seed, split):
      data = data_lib.build(cfg, task='lm', seed=seed, tokenizer_dir=self.create_tempdir().full_path)
      return data.rows(split).arrays

    chex.assert_trees_all_equal(arrays(1, 'train'), arrays(1, 'train'))
    self.assertFalse(np.array_equal(arrays(1, 'train')['inputs'], arrays(2, 'train')['inputs']))
    self.assertFalse(np.array_equal(arrays(1, 'train')['inputs'][:40], arrays(1, 'validation')['inputs']))
    batch = next(data_lib.build(cfg, task='lm', seed=1, tokenizer_dir=self.create_tempdir().full_path)
                 .train_iterator(16))
    np.testing.assert_array_equal(batch['weights'].sum(1), np.full(16, cfg.mqar.num_queries))

  def test_errors(self):
    cfg = base.get_config().data
    cfg.name = 'mqar'
    with self.assertRaisesRegex(ValueError, "serves tasks lm, not 'classification'"):
      data_lib.build(cfg, task='classification', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    rng = np.random.default_rng(0)
    with self.assertRaisesRegex(ValueError, r'num_queries \(9\) <= num_pairs \(8\)'):
      mqar.generate(2, vocab_size=64, length=64, num_pairs=8, num_queries=9, rng=rng)
    with self.assertRaisesRegex(ValueError, 'data.max_len=20 has room for 2 queries'):
      mqar.generate(2, vocab_size=64, length=20, num_pairs=8, num_queries=3, rng=rng)
    directory = self.create_tempdir().full_path
    cfg.vocab_size, cfg.mqar.num_train, cfg.mqar.num_eval = 64, 10, 10
    data_lib.build(cfg, task='lm', seed=0, tokenizer_dir=directory)
    cfg.vocab_size = 80
    with self.assertRaisesRegex(ValueError, 'data.vocab_size=80'):
      data_lib.build(cfg, task='lm', seed=0, tokenizer_dir=directory)
