"""The real imdb_reviews builder, prepared offline from a small generated aclImdb_v1.tar.gz, through the pipeline."""

import io
import os
import tarfile
import tempfile
import time
from unittest import mock

import chex
import fixtures
import numpy as np
import tensorflow_datasets as tfds

from lm_jax import data as data_lib
from lm_jax.data import tfds_source

_PER_CLASS = 30   # labelled reviews per class and split
_UNSUP = 20
_WORDS = ['good', 'bad', 'film', 'plot', 'acting', 'great', 'awful', 'scene', 'story', 'the', 'a']


def _review(rng, split, label, i):
  return f'{split} {label} {i} ' + ' '.join(rng.choice(_WORDS, rng.integers(3, 40)))


def _write_archive(path):
  """aclImdb/{train,test}/{pos,neg}/*.txt and train/unsup/*.txt, as the real archive lays them out."""
  rng = np.random.default_rng(0)
  texts = {}
  with tarfile.open(path, 'w:gz') as tar:
    def add(name, text):
      data = text.encode()
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    for split in ('train', 'test'):
      for label in ('neg', 'pos'):
        for i in range(_PER_CLASS):
          texts[split, label, i] = _review(rng, split, label, i).replace(' the ', ' the<br />', 1)
          add(f'aclImdb/{split}/{label}/{i}_{7 if label == "pos" else 2}.txt', texts[split, label, i])
    for i in range(_UNSUP):
      add(f'aclImdb/train/unsup/{i}_0.txt', f'unsup {i} ' + ' '.join(rng.choice(_WORDS, 10)))
  return texts


def _config(data_dir, **overrides):
  return fixtures.data('imdb_reviews', **{'tfds_data_dir': data_dir, 'vocab_size': 300, 'max_len': 64,
                                          'download': False, **overrides})


def prepare_offline(directory, data_config, tokenizer_dir):
  """Writes the archive into `directory` and prepares it as a machine with network would (TFDS "downloads" the
  local archive; lm_jax's own code path does the rest). Returns (texts by (split, label, i), the built Data)."""
  archive = os.path.join(directory, 'aclImdb_v1.tar.gz')
  texts = _write_archive(archive)
  with mock.patch.object(tfds.download.DownloadManager, 'download', lambda self, url: archive), \
       mock.patch.object(tfds_source, 'reachable', return_value=True):
    return texts, data_lib.get_dataset(data_config, task='classification', seed=0, tokenizer_dir=tokenizer_dir)


class ImdbTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.data_dir = os.path.join(cls.tmp.name, 'tfds')
    cls.tokenizer_dir = os.path.join(cls.tmp.name, 'tokenizer')
    cls.texts, cls.data = prepare_offline(cls.tmp.name, _config(cls.data_dir, download=True), cls.tokenizer_dir)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def _build(self, seed=0, task='classification', **overrides):
    return data_lib.get_dataset(_config(self.data_dir, **overrides), task=task, seed=seed, tokenizer_dir=self.tokenizer_dir)

  def _examples(self, data, split):
    """(normalised text, label) of every real example of `split`, in order."""
    out = []
    for batch in data.eval_batches(split, 16):
      for inputs, label, weight in zip(batch['inputs'], batch['label'], batch['weights']):
        if weight:
          out.append((data.tokenizer.decode(inputs), int(label)))
    return out

  def test_splits_labels_and_disjoint_validation(self):
    data = self.data
    self.assertEqual(data.eval_splits, ('validation', 'test'))
    sizes = {s: data.num_examples(s) for s in ('train', 'validation', 'test')}
    self.assertEqual(sizes, {'train': 54, 'validation': 6, 'test': 60})
    full = {f'{s} {lab} {i}': ' '.join(t.replace('<br />', ' ').split()) for (s, lab, i), t in self.texts.items()}
    keys = {}
    for split, source in (('train', 'train'), ('validation', 'train'), ('test', 'test')):
      keys[split] = []
      for text, label in self._examples(data, split):
        key = ' '.join(text.split()[:3])   # '<split> <neg|pos> <i>' names the review
        self.assertEqual(key.split()[:2], [source, ('neg', 'pos')[label]])
        self.assertTrue(full[key].startswith(text), (full[key], text))   # truncated to max_len, never altered
        keys[split].append(key)
    self.assertEqual(sorted(keys['train'] + keys['validation']), sorted(k for k in full if k.startswith('train')))
    self.assertEmpty(set(keys['train']) & set(keys['validation']))
    self.assertEqual(sorted(keys['test']), sorted(k for k in full if k.startswith('test')))

  def test_seed_decides_order(self):
    def first_batches(seed):
      it = self._build(seed).train_iterator(8)
      return np.stack([next(it)['inputs'] for _ in range(3)])
    np.testing.assert_array_equal(first_batches(3), first_batches(3))
    self.assertFalse(np.array_equal(first_batches(3), first_batches(4)))

  def test_lm_with_unsupervised_reviews(self):
    data = self._build(task='lm', use_unsupervised=True)
    self.assertEqual(data.eval_splits, ('validation', 'test'))
    batch = next(data.train_iterator(4))
    chex.assert_shape([batch['inputs'], batch['targets'], batch['segment_ids'], batch['positions']], [(4, 64)] * 4)
    data.num_examples('train')
    self.assertEqual(data.stats['train'].documents, 54 + _UNSUP)
    with self.assertRaisesRegex(ValueError, 'use_unsupervised adds unlabelled reviews'):
      self._build(use_unsupervised=True)

  def test_missing_data_fails_fast_and_says_what_to_do(self):
    empty = os.path.join(self.tmp.name, 'nothing_here')
    start = time.monotonic()
    with self.assertRaisesRegex(FileNotFoundError, f'not prepared in {empty}.*data.download=False.*text_files'):
      self._build(tfds_data_dir=empty)
    with mock.patch.object(tfds_source.socket, 'create_connection', side_effect=OSError('offline')), \
         self.assertRaisesRegex(FileNotFoundError, 'ai.stanford.edu:80 is unreachable.*data.tfds_data_dir'):
      self._build(tfds_data_dir=empty, download=True)
    self.assertLess(time.monotonic() - start, 10)
    with mock.patch.dict(os.environ, {'HOME': self.tmp.name}), \
         self.assertRaisesRegex(FileNotFoundError, f'not prepared in {empty}/imdb_reviews'):
      self._build(tfds_data_dir='~/nothing_here')   # expanded like data.paths, not taken literally
    with self.assertRaisesRegex(ValueError, 'needs data.tfds_name imdb_reviews'):
      self._build(tfds_name='wikipedia/20230601.en')
