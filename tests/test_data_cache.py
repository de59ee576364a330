"""The token cache: equal to in-memory tokenization, keyed by what it depends on, atomic, shared, resumable."""

import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from unittest import mock

import chex
import fixtures
import jax
import numpy as np
import pytest

from lm_jax import data as data_lib
from lm_jax.data import cache
from lm_jax.data import corpus as corpus_lib
from lm_jax.data import packing
from lm_jax.data import text_files
from lm_jax.data import tokenizers

# The paragraph separator as text_files documents it, matched the plain way: the reference for its faster scan.
_BLANK_LINES = re.compile(rb'(?:\r?\n[ \t\f\v]*){2,}')
_WORDS = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta', 'iota', 'kappa', 'lambda', 'mu']


def _write_corpus(root, rng, num_files=3, docs_per_file=40):
  """Text files of random paragraphs (some with odd whitespace and \\r\\n breaks); returns their paths."""
  paths = []
  for f in range(num_files):
    docs = [' '.join(rng.choice(_WORDS, rng.integers(1, 60))) for _ in range(docs_per_file)]
    docs[1] += '\tand\u00a0more\r\nsecond line'
    path = os.path.join(root, f'part{f}.txt')
    with open(path, 'wb') as fh:
      fh.write(('\n\n' if f % 2 else '\r\n \r\n\n').join(docs).encode() + b'\n\n\n')
    paths.append(path)
  return paths


def _reference_docs(paths):
  """Cleaned paragraphs of `paths`, read whole and split with the documented separator."""
  raw = [d for p in paths for d in _BLANK_LINES.split(open(p, 'rb').read()) if d.strip()]
  return [corpus_lib.clean_text(d, corpus_lib.TextStats()) for d in raw]


def _config(paths, cache_dir, **overrides):
  """text_files over `paths`, cached in `cache_dir`, with a trained 300-piece SentencePiece and 16 tokens."""
  return fixtures.data(**{'name': 'text_files', 'paths': ','.join(paths), 'cache_dir': cache_dir,
                          'tokenizer': 'sentencepiece', 'vocab_size': 300, 'max_len': 16, 'validation_fraction': 0.0,
                          **overrides})


def _all_rows(data, split):
  rows = data.rows(split)
  return rows.take(np.arange(len(rows)))


def _cache_dirs(cache_dir):
  return sorted(d for d in os.listdir(cache_dir) if not d.startswith(('.', 'sentencepiece-')))


class CacheTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)
    self.paths = _write_corpus(self.create_tempdir().full_path, self.rng)
    self.cache_dir = self.create_tempdir().full_path

  def _build(self, task='lm', tokenizer_dir=None, **overrides):
    return data_lib.get_dataset(_config(self.paths, self.cache_dir, **overrides), task=task, seed=3,
                                tokenizer_dir=tokenizer_dir or self.create_tempdir().full_path)

  def test_cache_equals_in_memory_tokenization(self):
    data = self._build('lm')
    tok = data.tokenizer
    docs = _reference_docs(self.paths)
    self.assertLen(docs, 120)
    tokens, ends = packing.pack([[tok.encode(d) for d in docs]], tok.eos_id, tok.vocab_size)
    want = packing.PackedRows(tokens, ends, 16, next_token_targets=True)
    rows = data.rows('train')
    self.assertIsInstance(rows.tokens, np.memmap)   # mapped, not loaded
    self.assertEqual(rows.tokens.dtype, np.uint16)
    chex.assert_trees_all_equal(_all_rows(data, 'train'), want.take(np.arange(len(want))))
    self.assertEqual(data.stats['train'].documents, 120)
    self.assertEqual(data.stats['train'].odd_whitespace, 3)
    self.assertEqual(data.stats['train'].text_bytes, sum(len(d.encode()) for d in docs))
    # Several processes, a few documents per task: the same bytes, in order.
    corpus = text_files.read_text_files(_config(self.paths, self.cache_dir), 'lm')
    with mock.patch.object(cache, '_CHUNK_DOCS', 7):
      parallel, _ = cache.split_rows(self.create_tempdir().full_path, corpus, 'train', tok, task='lm', max_len=16,
                                     workers=2)
    np.testing.assert_array_equal(parallel.tokens, rows.tokens)
    np.testing.assert_array_equal(parallel.doc_ends, rows.doc_ends)

  def test_classification_cache_equals_in_memory_rows(self):
    root = self.create_tempdir()
    texts = [' '.join(self.rng.choice(_WORDS, self.rng.integers(0, 12))) for _ in range(50)]
    labels = self.rng.integers(0, 3, 50)
    path = root.create_file('t.jsonl', content=''.join(
        json.dumps({'text': t, 'label': int(y)}) + '\n' for t, y in zip(texts, labels))).full_path
    cfg = _config([path], self.cache_dir, name='jsonl', max_len=10, validation_fraction=0.0)
    data = data_lib.get_dataset(cfg, task='classification', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    tok = data.tokenizer
    want = np.zeros((50, 10), np.int64)
    for i, text in enumerate(texts):
      ids = [tok.cls_id] + tok.encode(text)[:8] + [tok.sep_id]
      want[i, :len(ids)] = ids
    got = _all_rows(data, 'train')
    np.testing.assert_array_equal(got['inputs'], want)
    np.testing.assert_array_equal(got['label'], labels)
    self.assertEqual(data.stats['train'].truncated, sum(len(tok.encode(t)) > 8 for t in texts))
    with mock.patch.object(cache, '_CHUNK_DOCS', 6):
      parallel, _ = cache.split_rows(self.create_tempdir().full_path, text_files.read_jsonl(cfg, 'classification'),
                                     'train', tok, task='classification', max_len=10, workers=2)
    np.testing.assert_array_equal(parallel.arrays['inputs'], want)
    np.testing.assert_array_equal(parallel.arrays['label'], labels)

  def test_changed_tokenizer_or_max_len_builds_a_new_cache(self):
    tokenizer_dir = self.create_tempdir().full_path
    first = self._build('lm', tokenizer_dir=tokenizer_dir)
    first.rows('train')
    self.assertLen(_cache_dirs(self.cache_dir), 1)
    # lm/mlm rows are cut from one stream when read: another max_len reuses it, with rows of the new length.
    longer = self._build('mlm', tokenizer_dir=tokenizer_dir, max_len=24)
    with mock.patch.object(cache, '_tokenize', side_effect=AssertionError('rebuilt')):
      self.assertEqual(longer.rows('train').tokens.shape, first.rows('train').tokens.shape)
    self.assertEqual(_all_rows(longer, 'train')['inputs'].shape[1], 24)
    # Another tokenizer (vocab size: a different SentencePiece model; bytes) gives another cache.
    for overrides in ({'vocab_size': 285}, {'tokenizer': 'bytes'}):
      other = self._build('lm', **overrides)
      self.assertNotEqual(tokenizers.fingerprint(other.tokenizer), tokenizers.fingerprint(first.tokenizer))
      other.rows('train')
    self.assertLen(_cache_dirs(self.cache_dir), 3)
    # Classification rows depend on max_len: each length has its own cache.
    root = self.create_tempdir()
    path = root.create_file('t.csv', content='text,label\n' + ''.join(f'w{i} x y,{i % 2}\n' for i in range(20)))
    for max_len in (5, 6, 5):
      cfg = _config([path.full_path], self.cache_dir, name='csv', max_len=max_len, tokenizer='bytes')
      rows = data_lib.get_dataset(cfg, task='classification', seed=0, tokenizer_dir=tokenizer_dir + 'b').rows('train')
      self.assertEqual(rows.arrays['inputs'].shape, (20, max_len))
    self.assertLen(_cache_dirs(self.cache_dir), 5)

  def test_failed_build_leaves_no_cache_and_is_rebuilt(self):
    data = self._build('lm')
    original = cache._encode_chunk
    calls = []

    def fail_on_second(*args):
      calls.append(1)
      if len(calls) == 2:
        raise RuntimeError('disk full')
      return original(*args)
    with mock.patch.object(cache, '_CHUNK_DOCS', 10), mock.patch.object(cache, '_encode_chunk', fail_on_second), \
         self.assertRaisesRegex(RuntimeError, 'disk full'):
      data.rows('train')
    self.assertEqual(os.listdir(self.cache_dir), [d for d in os.listdir(self.cache_dir) if d.startswith('sentence')])
    again = self._build('lm', tokenizer_dir=None)
    self.assertGreater(len(again.rows('train')), 10)
    self.assertLen(_cache_dirs(self.cache_dir), 1)

  def test_build_freezes_garbage_collection_only_meanwhile(self):
    frozen = []
    original = cache._tokenize

    def tokenize(*args):
      frozen.append(gc.get_freeze_count())   # the objects left out of collection while building
      if len(frozen) == 2:
        raise RuntimeError('disk full')
      return original(*args)
    with mock.patch.object(cache, '_tokenize', tokenize):
      self.assertGreater(len(self._build('lm', tokenizer='bytes').rows('train')), 10)
      self.assertEqual(gc.get_freeze_count(), 0)
      with self.assertRaisesRegex(RuntimeError, 'disk full'):
        self._build('lm', tokenizer='bytes', max_documents=5).rows('train')
    self.assertEqual(gc.get_freeze_count(), 0)
    self.assertGreater(min(frozen), 1000)

  @pytest.mark.slow   # a build in a subprocess, killed
  def test_killed_build_is_detected_and_rebuilt(self):
    tokenizer_dir = self.create_tempdir().full_path
    tokenizers.save(tokenizers.ByteTokenizer(), tokenizer_dir)
    marker = os.path.join(self.create_tempdir().full_path, 'started')
    script = textwrap.dedent(f'''
        import sys
        import time
        from unittest import mock
        from lm_jax.data import cache
        from lm_jax.data import text_files
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import fixtures
        cfg = fixtures.data('text_files', paths={','.join(self.paths)!r}, cache_dir={self.cache_dir!r},
                            validation_fraction=0.0)
        def slow(*args):
          open({marker!r}, 'w').close()
          time.sleep(600)
        with mock.patch.object(cache, '_encode_chunk', slow):
          data = text_files.TEXT_FILES.make_data(cfg, task='lm', seed=0, tokenizer_dir={tokenizer_dir!r})
          data.rows('train')
        ''')
    proc = subprocess.Popen([sys.executable, '-c', script], cwd=os.getcwd())
    try:
      deadline = time.monotonic() + 120
      while not os.path.exists(marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
      self.assertTrue(os.path.exists(marker), 'the build did not start')
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    partial = [d for d in os.listdir(self.cache_dir) if '.partial-' in d]
    self.assertLen(partial, 1)
    self.assertEqual(_cache_dirs(self.cache_dir), [])   # nothing that looks complete
    cfg = _config(self.paths, self.cache_dir, tokenizer='bytes')
    data = data_lib.get_dataset(cfg, task='lm', seed=0, tokenizer_dir=tokenizer_dir)
    want = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8) + 6, 3) for d in
                           _reference_docs(self.paths)])
    np.testing.assert_array_equal(data.rows('train').tokens, want)
    self.assertEqual([d for d in os.listdir(self.cache_dir) if '.partial-' in d], [])   # the killed build's, gone

  def test_two_runs_share_one_cache(self):
    first = self._build('lm', validation_fraction=0.2)
    batches = [next(first.train_iterator(4)), next(iter(first.eval_batches('validation', 4)))]
    self.assertLen(_cache_dirs(self.cache_dir), 2)
    mtimes = {d: os.stat(os.path.join(self.cache_dir, d, 'tokens.npy')).st_mtime_ns for d in _cache_dirs(self.cache_dir)}
    # Another run (its own workdir): the SentencePiece model and both splits come from the cache.
    with mock.patch.object(tokenizers.SentencePieceTokenizer, 'train', side_effect=AssertionError('retrained')), \
         mock.patch.object(cache, '_tokenize', side_effect=AssertionError('retokenized')):
      second = self._build('lm', validation_fraction=0.2)
      again = [next(second.train_iterator(4)), next(iter(second.eval_batches('validation', 4)))]
    chex.assert_trees_all_equal(batches, again)
    self.assertEqual(tokenizers.fingerprint(second.tokenizer), tokenizers.fingerprint(first.tokenizer))
    self.assertEqual({d: os.stat(os.path.join(self.cache_dir, d, 'tokens.npy')).st_mtime_ns
                      for d in _cache_dirs(self.cache_dir)}, mtimes)

  def test_resume_is_exact_over_the_cache(self):
    data = self._build('mlm', max_len=8)
    steps = data.steps_per_epoch(4)
    it = data.train_iterator(4)
    for _ in range(steps + 1):   # into the second epoch
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(steps)]
    with mock.patch.object(cache, '_tokenize', side_effect=AssertionError('retokenized')):
      resumed = self._build('mlm', max_len=8).train_iterator(4)
      resumed.set_state(state)
      got = [next(resumed) for _ in range(steps)]
    chex.assert_trees_all_equal(want, got)
    self.assertGreater(sum(b['weights'].sum() for b in got), 0)
    with mock.patch.object(jax, 'process_count', return_value=2), \
         mock.patch.object(jax, 'process_index', return_value=1):
      second_half = self._build('mlm', max_len=8).train_iterator(4)
      second_half.set_state(state)
      for a, b in zip(want, [next(second_half) for _ in range(steps)]):
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[2:], a), b)

  def test_evaluation_reads_the_cache_without_reading_the_text(self):
    data = self._build('lm', validation_fraction=0.25)
    want = list(data.eval_batches('validation', 4))
    with mock.patch.object(text_files, 'Paragraphs', side_effect=AssertionError('read the corpus')), \
         mock.patch.object(cache, '_tokenize', side_effect=AssertionError('retokenized')):
      evaluation = self._build('lm', validation_fraction=0.25)
      got = list(evaluation.eval_batches('validation', 4))
    chex.assert_trees_all_equal(want, got)
    self.assertEqual(evaluation.stats['validation'], data.stats['validation'])

  def test_changed_file_is_a_new_corpus(self):
    data = self._build('lm')
    data.rows('train')
    with open(self.paths[0], 'ab') as f:
      f.write(b'\n\nan appended paragraph')
    grown = self._build('lm')
    self.assertEqual(grown.rows('train').doc_ends.shape, (121,))
    self.assertEqual(grown.stats['train'].documents, 121)
    self.assertLen(_cache_dirs(self.cache_dir), 2)
