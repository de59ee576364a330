"""Packing, BERT masking, shuffling, resume and process shares of lm_jax.data.pipeline, on synthetic rows."""

import json
from unittest import mock

import chex
import jax
import numpy as np

from lm_jax.data import packing
from lm_jax.data import pipeline
from lm_jax.data import tokenizers


def _random_docs(rng, num_docs, vocab=50, max_len=40):
  return [rng.integers(6, vocab, rng.integers(1, max_len)).tolist() for _ in range(num_docs)]


def _reference_rows(docs, eos, length, next_token):
  """Packing by a plain loop over tokens: float64-free, index-free reference for PackedRows."""
  stream = [(t, d) for d, doc in enumerate(docs) for t in doc + [eos]]
  rows = []
  for start in range(0, len(stream), length):
    chunk = stream[start:start + length]
    first_doc = chunk[0][1]
    row = {k: np.zeros(length, np.int64) for k in ('inputs', 'targets', 'weights', 'segment_ids', 'positions')}
    for j, (token, doc) in enumerate(chunk):
      row['inputs'][j] = token
      row['segment_ids'][j] = doc - first_doc + 1
      row['positions'][j] = 0 if j == 0 or chunk[j - 1][1] != doc else row['positions'][j - 1] + 1
      nxt = stream[start + j + 1] if start + j + 1 < len(stream) else None
      if next_token and nxt is not None and nxt[1] == doc:
        row['targets'][j], row['weights'][j] = nxt[0], 1
    if not next_token:
      row['targets'] = row['inputs'].copy()
    rows.append(row)
  return rows


class PackingTest(chex.TestCase):

  def test_docstring_example(self):
    a, b, c, eos = 10, 11, 12, 3
    tokens, ends = packing.pack([[[a, a, a], [b, b]], [[c, c, c, c]]], eos, vocab_size=20)
    rows = packing.PackedRows(tokens, ends, 4, next_token_targets=True).take(np.arange(3))
    np.testing.assert_array_equal(rows['inputs'], [[a, a, a, eos], [b, b, eos, c], [c, c, c, eos]])
    np.testing.assert_array_equal(rows['segment_ids'], [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 1, 1]])
    np.testing.assert_array_equal(rows['positions'], [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(rows['targets'], [[a, a, eos, 0], [b, eos, 0, c], [c, c, eos, 0]])
    np.testing.assert_array_equal(rows['weights'], [[1, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 0]])

  def test_rows_match_loop_reference(self):
    rng = np.random.default_rng(0)
    docs = _random_docs(rng, 60) + [[]]   # an empty document is skipped
    eos, length = 3, 16
    tokens, ends = packing.pack([docs[:25], docs[25:]], eos, vocab_size=50)
    for next_token in (True, False):
      rows = packing.PackedRows(tokens, ends, length, next_token_targets=next_token)
      reference = _reference_rows([d for d in docs if d], eos, length, next_token)
      self.assertLen(rows, len(reference))
      want = {k: np.stack([r[k] for r in reference]) for k in reference[0]}
      idx = rng.permutation(len(rows))
      got = rows.take(idx)
      for key in ('inputs', 'targets', 'segment_ids', 'positions') + (('weights',) if next_token else ()):
        np.testing.assert_array_equal(got[key], want[key][idx], err_msg=f'{key}, next_token={next_token}')

  def test_arrays_pack_like_lists(self):
    rng = np.random.default_rng(2)
    docs = _random_docs(rng, 30) + [[]]
    for vocab_size in (50, 70000):   # uint16 and uint32 streams
      want = packing.pack([docs[:10], docs[10:]], 3, vocab_size)
      got = packing.pack([[np.array(d, np.int32) for d in docs[:10]], [np.array(d, np.int32) for d in docs[10:]]], 3,
                         vocab_size)
      chex.assert_trees_all_equal(got, want)
    tokens, ends = packing.pack([[[], np.zeros(0, np.int32)]], 3, 50)
    self.assertEqual((tokens.shape, ends.shape, tokens.dtype), ((0,), (0,), np.uint16))

  def test_every_token_exactly_once(self):
    rng = np.random.default_rng(1)
    docs = _random_docs(rng, 80, vocab=70000)   # > uint16: stored as uint32
    tokens, ends = packing.pack([docs], 3, vocab_size=70000)
    self.assertEqual(tokens.dtype, np.uint32)
    rows = packing.PackedRows(tokens, ends, 24, next_token_targets=True).take(np.arange(-(-len(tokens) // 24)))
    real = rows['segment_ids'] > 0
    np.testing.assert_array_equal(rows['inputs'][real], np.concatenate([d + [3] for d in docs]))
    self.assertTrue(np.all(rows['inputs'][~real] == 0))


class MaskingTest(chex.TestCase):

  def test_bert_rates_and_specials(self):
    rng = np.random.default_rng(2)
    vocab, mask_id = 100, 5
    maskable = np.arange(vocab) >= 6
    inputs = rng.integers(6, vocab, (64, 512))
    inputs[:, ::7] = 3   # specials are never chosen
    batch = {'inputs': inputs.astype(np.int32), 'targets': inputs.astype(np.int32),
             'weights': np.zeros(inputs.shape, np.float32)}
    out = packing.bert_mask(batch, np.random.default_rng(3), probability=0.15, mask_id=mask_id, maskable=maskable,
                            random_ids=np.flatnonzero(maskable), global_batch=64, rows=slice(0, 64))
    chosen = out['weights'] > 0
    np.testing.assert_array_equal(out['targets'], inputs)
    self.assertFalse(chosen[:, ::7].any())
    self.assertAlmostEqual(chosen.sum() / maskable[inputs].sum(), 0.15, delta=0.005)
    masked, kept = out['inputs'][chosen] == mask_id, out['inputs'][chosen] == inputs[chosen]
    self.assertAlmostEqual(masked.mean(), 0.8, delta=0.015)
    # A random replacement equals the original with probability 1/94, so "kept" is 10% + 10%/94.
    self.assertAlmostEqual(kept.mean(), 0.1 + 0.1 / 94, delta=0.01)
    self.assertAlmostEqual((~masked & ~kept).mean(), 0.1 * 93 / 94, delta=0.01)
    np.testing.assert_array_equal(out['inputs'][~chosen], inputs[~chosen])


def _id_rows(n, length=5):
  """Rows whose inputs are their own index: makes orders visible."""
  ids = np.arange(n, dtype=np.int32)
  return packing.ArrayRows({'inputs': np.repeat(ids[:, None], length, 1) + 6, 'label': ids % 2,
                            'weights': np.ones(n, np.float32)})


def _data(seed, n=37, task='classification', rows=None):
  rows = rows or _id_rows(n)
  return pipeline.Data(tokenizers.ByteTokenizer(), {'train': lambda: rows, 'validation': lambda: rows},
                       task=task, seed=seed)


def _order(batches):
  return [tuple(b['inputs'][:, 0] - 6) for b in batches]


class DataTest(chex.TestCase):

  def test_epochs_are_permutations_reshuffled(self):
    data = _data(seed=5)
    self.assertEqual(data.steps_per_epoch(4), 9)
    it = data.train_iterator(4)
    epochs = [sum(_order([next(it) for _ in range(9)]), ()) for _ in range(2)]
    for epoch in epochs:
      self.assertLen(set(epoch), 36)   # 37 rows, the remainder dropped
    self.assertNotEqual(epochs[0], epochs[1])

  def test_seed_decides_order(self):
    first = lambda seed: _order([next(data.train_iterator(4)) for data in [_data(seed)]])
    self.assertEqual(first(7), first(7))
    self.assertNotEqual(first(7), first(8))

  def test_seeds_do_not_replay_each_others_epochs(self):
    # grain's shuffle seeds epoch e with seed + e: seed 7's second epoch was seed 8's first.
    def epoch(seed, number):
      it = _data(seed).train_iterator(4)
      return sum(_order([next(it) for _ in range(9 * (number + 1))][9 * number:]), ())
    self.assertNotEqual(epoch(7, 1), epoch(8, 0))

  def test_resume_mid_epoch_yields_the_same_batches(self):
    rng = np.random.default_rng(4)
    tokens, ends = packing.pack([_random_docs(rng, 50)], 3, vocab_size=262)
    rows = packing.PackedRows(tokens, ends, 12, next_token_targets=False)
    data = _data(seed=9, task='mlm', rows=rows)
    steps = data.steps_per_epoch(6)
    it = data.train_iterator(6)
    for _ in range(steps + 2):   # into the second epoch
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(steps)]
    resumed = _data(seed=9, task='mlm', rows=rows).train_iterator(6)
    resumed.set_state(state)
    for a, b in zip(want, [next(resumed) for _ in range(steps)]):
      chex.assert_trees_all_equal(a, b)
    self.assertGreater(sum(b['weights'].sum() for b in want), 0)
    with mock.patch.object(jax, 'process_count', return_value=2), \
         mock.patch.object(jax, 'process_index', return_value=1):
      second_half = _data(seed=9, task='mlm', rows=rows).train_iterator(6)
      second_half.set_state(state)
      for a, b in zip(want, [next(second_half) for _ in range(steps)]):
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[3:], a), b)

  def test_eval_covers_split_once_with_zero_weight_filler(self):
    data = _data(seed=1)
    batches = list(data.eval_batches('validation', 8))
    self.assertLen(batches, 5)
    for b in batches:
      chex.assert_shape([b['inputs'], b['label'], b['weights']], [(8, 5), (8,), (8,)])
    ids = np.concatenate([b['inputs'][:, 0] - 6 for b in batches])
    weights = np.concatenate([b['weights'] for b in batches])
    np.testing.assert_array_equal(ids[weights > 0], np.arange(37))
    self.assertEqual(weights[37:].sum(), 0)
    self.assertLen(list(data.eval_batches('validation', 8)), 5)   # iterable again

  def test_process_shares_partition_the_global_batch(self):
    rng = np.random.default_rng(6)
    tokens, ends = packing.pack([_random_docs(rng, 40)], 3, vocab_size=262)
    rows = packing.PackedRows(tokens, ends, 10, next_token_targets=False)
    whole = (next(_data(3, task='mlm', rows=rows).train_iterator(8)),
             list(_data(3, task='mlm', rows=rows).eval_batches('validation', 8))[-1])
    shares = []
    for index in range(2):
      with mock.patch.object(jax, 'process_count', return_value=2), \
           mock.patch.object(jax, 'process_index', return_value=index):
        data = _data(3, task='mlm', rows=rows)
        shares.append((next(data.train_iterator(8)), list(data.eval_batches('validation', 8))[-1]))
    for k in range(2):
      joined = jax.tree.map(lambda a, b: np.concatenate([a, b]), shares[0][k], shares[1][k])
      chex.assert_trees_all_equal(joined, whole[k])

  def test_bad_batch_sizes(self):
    data = _data(seed=0)
    with self.assertRaisesRegex(ValueError, 'exceeds the 37 training examples'):
      data.train_iterator(64)
    with self.assertRaisesRegex(ValueError, 'exceeds the 37 training examples'):
      data.steps_per_epoch(64)   # not 0 steps, which would make a run of 0 steps
    with mock.patch.object(jax, 'process_count', return_value=2):
      with self.assertRaisesRegex(ValueError, 'divisible by the process count 2'):
        data.steps_per_epoch(5)
    with self.assertRaisesRegex(ValueError, "Unknown split 'test'"):
      data.num_examples('test')
    with self.assertRaisesRegex(ValueError, 'config.seed=-1 must be >= 0'):
      _data(seed=-1)
