"""wikipedia through tfds.testing.mock_data: packing keeps every token of every article once; lm and mlm batches."""

import contextlib
import tempfile
import time
from unittest import mock

import chex
import fixtures
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from lm_jax import data as data_lib
from lm_jax.data import corpus as corpus_lib
from lm_jax.data import tfds_source

_NUM_ARTICLES = 200
# The mock's data dir is inside the TFDS package, where the cache would go by default: one temporary cache instead.
_CACHE = tempfile.TemporaryDirectory()


@contextlib.contextmanager
def _mock_wikipedia():
  """mock_data, plus two things it leaves out: the builder reports itself prepared, and the batched read works
  (TFDS 4.9.10's mock binds `__getitems__` without `self`)."""
  def getitems(record_keys, generator, serialized=False):
    del serialized
    return [generator[k] for k in record_keys]
  with tfds.testing.mock_data(num_examples=_NUM_ARTICLES), \
       mock.patch.object(tfds.core.DatasetBuilder, 'is_prepared', return_value=True), \
       mock.patch.object(mocking, '_getitems', getitems):
    yield


def _config(**overrides):
  return fixtures.data('wikipedia', **{'tfds_name': 'wikipedia/20230601.en', 'download': False, 'max_len': 32,
                                       'vocab_size': 300, 'cache_dir': _CACHE.name, **overrides})


def _articles():
  """The mock's articles as the pipeline sees them (cleaned), read straight from TFDS."""
  with _mock_wikipedia():
    source = tfds.builder('wikipedia/20230601.en', file_format='array_record').as_data_source(split='train')
    return [corpus_lib.clean_text(source[i]['text'], corpus_lib.TextStats()) for i in range(len(source))]


class WikipediaTest(chex.TestCase):

  def _build(self, task, **overrides):
    with _mock_wikipedia():
      data = data_lib.get_dataset(_config(**overrides), task=task, seed=0, tokenizer_dir=self.create_tempdir().full_path)
      for split in ('train',) + data.eval_splits:
        data.rows(split)   # tokenize while the mock is active
    return data

  def test_lm_packing_keeps_every_token_once(self):
    data = self._build('lm')
    self.assertEqual(data.eval_splits, ('validation',))
    tok = data.tokenizer
    want = sorted(tuple(tok.encode(a)) + (tok.eos_id,) for a in _articles() if a)
    got = []
    for split in ('train', 'validation'):
      rows = [r for b in data.eval_batches(split, 4) for r in zip(b['inputs'], b['segment_ids'])]
      stream = np.concatenate([inputs[seg > 0] for inputs, seg in rows[:data.num_examples(split)]])
      ends = np.flatnonzero(stream == tok.eos_id) + 1
      got += [tuple(d) for d in np.split(stream, ends)[:-1]]
    self.assertEqual(sorted(got), want)

  def test_lm_batch_contract(self):
    data = self._build('lm')
    batch = next(data.train_iterator(8))
    chex.assert_shape(list(batch.values()), [(8, 32)] * 5)
    self.assertEqual({k: v.dtype for k, v in batch.items()},
                     {'inputs': np.int32, 'targets': np.int32, 'segment_ids': np.int32, 'positions': np.int32,
                      'weights': np.float32})
    same_segment = batch['segment_ids'][:, 1:] == batch['segment_ids'][:, :-1]
    scored = batch['weights'][:, :-1] > 0
    np.testing.assert_array_equal(batch['targets'][:, :-1][scored & same_segment],
                                  batch['inputs'][:, 1:][scored & same_segment])
    self.assertTrue(np.all(batch['weights'][batch['segment_ids'] == 0] == 0))
    self.assertTrue(np.all(batch['weights'][batch['inputs'] == data.tokenizer.eos_id] == 0))

  def test_mlm_masks_only_text_tokens(self):
    data = self._build('mlm', mlm_probability=0.3)
    batches = [b for b in data.eval_batches('train', 8)][:data.num_examples('train') // 8]
    inputs, targets, weights = (np.concatenate([b[k] for b in batches]) for k in ('inputs', 'targets', 'weights'))
    chosen = weights > 0
    text = data.tokenizer.token_bytes()[targets] > 0
    self.assertFalse(np.any(chosen & ~text))
    self.assertAlmostEqual(chosen.sum() / text.sum(), 0.3, delta=0.05)
    np.testing.assert_array_equal(inputs[~chosen], targets[~chosen])
    self.assertGreater((inputs[chosen] == data.tokenizer.mask_id).mean(), 0.6)

  def test_task_and_name_errors(self):
    with self.assertRaisesRegex(ValueError, "serves tasks lm, mlm, not 'classification'"):
      self._build('classification')
    with self.assertRaisesRegex(ValueError, 'needs data.tfds_name like'):
      self._build('lm', tfds_name='imdb_reviews/plain_text')

  def test_not_prepared_fails_fast(self):
    start = time.monotonic()
    missing = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, f'wikipedia/20230601.en.*not prepared in {missing}'):
      data_lib.get_dataset(_config(tfds_data_dir=missing), task='lm', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    self.assertLess(time.monotonic() - start, 5)

  def test_missing_beam_is_named(self):
    missing = self.create_tempdir().full_path
    no_beam = ModuleNotFoundError("No module named 'apache_beam'", name='apache_beam')
    with mock.patch.object(tfds_source, 'reachable', return_value=True), \
         mock.patch.object(tfds.core.DatasetBuilder, 'download_and_prepare', side_effect=no_beam), \
         self.assertRaisesRegex(ImportError, 'apache_beam.*needs apache-beam, mwparserfromhell and mwxml'):
      data_lib.get_dataset(_config(tfds_data_dir=missing, download=True), task='lm', seed=0,
                           tokenizer_dir=self.create_tempdir().full_path)
