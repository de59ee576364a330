"""MQAR: every scored position asks for the value paired with its key; example i of a split is a function of
(seed, split, i); train is fresh and resumes exactly, validation is fixed; the docstring's ids."""

import chex
import fixtures
import numpy as np

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
  answers = scored[scored + 1 < len(inputs)] + 1   # hidden from the inputs, as in Zoology
  test.assertTrue(np.all(inputs[answers] == 0))
  shown = np.ones(len(inputs) - 1, bool)
  shown[answers - 1] = False
  np.testing.assert_array_equal(targets[:-1][shown], inputs[1:][shown])
  rest = np.ones(len(inputs), bool)
  rest[:2 * num_pairs] = rest[scored] = False
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
    cfg = fixtures.data('mqar', vocab_size=16, max_len=10, **{'mqar.num_pairs': 2, 'mqar.num_queries': 2,
                                                              'mqar.num_train': 8, 'mqar.num_eval': 4})
    data = data_lib.get_dataset(cfg, task='lm', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    tok = data.tokenizer
    self.assertEqual(tok.vocab_size, 16)
    self.assertEqual(tok.decode([7, 13, 9, 11, 0, 0, 9, 0, 7, 0]), 'k1 v2 k3 v0 k3 k1')
    self.assertEqual(tok.encode('k1 v2 k3 v0'), [7, 13, 9, 11])
    np.testing.assert_array_equal(tok.token_bytes()[[0, 5, 6, 15]], [0, 0, 2, 2])
    # Draws that choose the docstring's example: keys k1 then k3 (smallest sort keys), values v2 and v0, the
    # queries k3 then k1, in slots 1 and 2 (positions 6 and 8).
    uniform = np.array([[.5, .1, .6, .2, .7,   .5, .1,   .9, .1,   .9, .1, .2]])
    example = mqar.Spec(vocab_size=16, length=10, num_pairs=2, num_queries=2).examples(uniform)
    np.testing.assert_array_equal(example['inputs'], [[7, 13, 9, 11, 0, 0, 9, 0, 7, 0]])
    np.testing.assert_array_equal(example['targets'], [[13, 9, 11, 0, 0, 9, 11, 7, 13, 0]])
    np.testing.assert_array_equal(example['weights'], [[0, 0, 0, 0, 0, 0, 1, 0, 1, 0]])

  def _data(self, seed=1, **mqar_config):
    mqar_config = {'num_train': 300, 'num_eval': 40, **mqar_config}
    cfg = fixtures.data('mqar', vocab_size=128, max_len=48, **{f'mqar.{k}': v for k, v in mqar_config.items()})
    return data_lib.get_dataset(cfg, task='lm', seed=seed, tokenizer_dir=self.create_tempdir().full_path)

  def test_train_example_i_depends_only_on_seed_and_i(self):
    train = self._data().rows('train')
    self.assertLen(train, 300)
    first, second = train.take(np.arange(0, 100)), train.take(np.arange(50, 150))
    chex.assert_trees_all_equal({k: v[50:] for k, v in first.items()}, {k: v[:50] for k, v in second.items()})
    scattered = np.array([149, 3, 77, 3])
    chex.assert_trees_all_equal(train.take(scattered), {k: v[scattered] for k, v in
                                                        train.take(np.arange(150)).items()})
    for i in (0, 7, 299):   # the documented definition: one example drawn from the stream [seed, 0, 0, i]
      one = mqar.generate(1, vocab_size=128, length=48, num_pairs=8, num_queries=8,
                          rng=np.random.default_rng([1, 0, 0, i]))
      chex.assert_trees_all_equal(train.take(np.array([i])), one)
    for i in range(100):
      _check_example(self, first['inputs'][i], first['targets'][i], first['weights'][i], num_keys=61, num_pairs=8,
                     num_queries=8)
    self.assertFalse(np.array_equal(first['inputs'], self._data(seed=2).rows('train').take(np.arange(100))['inputs']))
    with self.assertRaisesRegex(IndexError, r'Rows 0\.\.300 asked of a split with 300 examples'):
      train.take(np.array([0, 300]))

  def test_validation_is_fixed_and_apart_from_train(self):
    data = self._data()
    validation = data.rows('validation').arrays
    chex.assert_trees_all_equal(validation, self._data().rows('validation').arrays)
    self.assertLen(validation['inputs'], 40)
    np.testing.assert_array_equal(validation['weights'].sum(1), np.full(40, 8))
    one = mqar.generate(1, vocab_size=128, length=48, num_pairs=8, num_queries=8,
                        rng=np.random.default_rng([1, 0, 1, 39]))
    chex.assert_trees_all_equal({k: v[39:] for k, v in validation.items()}, one)
    train = data.rows('train').take(np.arange(300))['inputs']
    self.assertEmpty(set(map(bytes, train)) & set(map(bytes, validation['inputs'])))

  def test_batches_are_fresh_and_resume_exactly(self):
    data = self._data(num_train=16 * 18)
    batches = data.train_iterator(16)
    seen = [next(batches) for _ in range(3)]
    state = batches.get_state()
    expected = [next(batches) for _ in range(15)]   # the rest of the one epoch
    rows = np.concatenate([b['inputs'] for b in seen + expected])
    self.assertLen(set(map(bytes, rows)), 16 * 18)   # no example repeats within the stream
    resumed = self._data(num_train=16 * 18).train_iterator(16)
    resumed.set_state(state)
    for want in expected:
      chex.assert_trees_all_equal(next(resumed), want)

  def test_errors(self):
    cfg = fixtures.data('mqar')
    with self.assertRaisesRegex(ValueError, "serves tasks lm, not 'classification'"):
      data_lib.get_dataset(cfg, task='classification', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    rng = np.random.default_rng(0)
    with self.assertRaisesRegex(ValueError, r'num_queries \(9\) <= num_pairs \(8\)'):
      mqar.generate(2, vocab_size=64, length=64, num_pairs=8, num_queries=9, rng=rng)
    with self.assertRaisesRegex(ValueError, 'data.max_len=20 has room for 2 queries'):
      mqar.generate(2, vocab_size=64, length=20, num_pairs=8, num_queries=3, rng=rng)
    directory = self.create_tempdir().full_path
    cfg.vocab_size, cfg.mqar.num_train, cfg.mqar.num_eval = 64, 10, 10
    data_lib.get_dataset(cfg, task='lm', seed=0, tokenizer_dir=directory)
    cfg.vocab_size = 80
    with self.assertRaisesRegex(ValueError, 'data.vocab_size=80'):
      data_lib.get_dataset(cfg, task='lm', seed=0, tokenizer_dir=directory)
