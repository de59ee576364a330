"""The user's own data: text files, csv and jsonl, bad text, and the registry's errors."""

import csv
import json
import os
import re
from unittest import mock

import chex
import numpy as np

from experiments import base
from lm_jax import data as data_lib
from lm_jax.data import text_files
from lm_jax.data import tokenizers


def _config(name, paths, **overrides):
  cfg = base.get_config().data
  cfg.name, cfg.paths, cfg.tokenizer, cfg.max_len = name, paths, 'bytes', 32
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def _segments(data, split):
  """The documents of a packed split, read back from its rows: the bytes of each segment, joined across rows."""
  original = 'targets' if data.task == 'mlm' else 'inputs'   # mlm inputs are masked
  rows = [b for batch in data.eval_batches(split, 4) for b in zip(batch[original], batch['segment_ids'])]
  docs, current = [], []
  for inputs, segments in rows[:data.num_examples(split)]:   # the rest are filler rows
    for token in inputs[segments > 0]:
      if token == data.tokenizer.eos_id:
        docs.append(data.tokenizer.decode(current))
        current = []
      else:
        current.append(token)
  return docs


def _random_words(rng, n):
  return ' '.join(''.join(rng.choice(list('abcdefgh'), rng.integers(1, 6))) for _ in range(n))


class TextFilesTest(chex.TestCase):

  def test_documents_are_paragraphs_packed_exactly_once(self):
    rng = np.random.default_rng(0)
    root = self.create_tempdir()
    expected = []
    for f in range(3):
      docs = [_random_words(rng, rng.integers(1, 30)) for _ in range(15)]
      docs[0] = docs[0] + '\nsecond line of the same paragraph'
      expected += docs
      root.create_file(f'part{f}.txt', content='\n\n'.join(docs) + '\n \n\n')
    root.create_file('skipped.md', content='not matched')
    data = data_lib.get_dataset(_config('text_files', os.path.join(root.full_path, '*.txt')), task='lm', seed=0,
                                tokenizer_dir=self.create_tempdir().full_path)
    train, validation = _segments(data, 'train'), _segments(data, 'validation')
    self.assertEqual((len(train), len(validation)), (41, 4))   # round(45 * 0.1)
    self.assertEqual(sorted(train + validation), sorted(expected))
    self.assertEqual(train, [d for d in expected if d in set(train)])   # stored order is file order

  def test_bad_text_is_repaired_and_counted(self):
    root = self.create_tempdir()
    long_doc = 'word ' * 500
    content = (b'caf\xe9 ok\n\n' + 'ctrl\x00\x07\x9b chars\n\n'.encode()   # C0 and C1 controls
               + 'tab\there\u00a0nbsp'.encode() + b'\n\n   \n\n' + long_doc.encode() + b'\n\nplain')
    root.create_file('bad.txt', content=content, mode='wb')
    cfg = _config('text_files', os.path.join(root.full_path, 'bad.txt'), validation_fraction=0.0)
    data = data_lib.get_dataset(cfg, task='mlm', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    self.assertEqual(data.eval_splits, ())
    docs = _segments(data, 'train')
    self.assertEqual(docs, ['caf\ufffd ok', 'ctrl chars', 'tab here nbsp', long_doc.strip(), 'plain'])
    stats = data.stats['train']
    self.assertEqual((stats.documents, stats.invalid_utf8, stats.control_chars, stats.odd_whitespace, stats.empty),
                     (5, 1, 1, 1, 0))
    self.assertGreater(data.num_examples('train'), len(long_doc) // 32)
    batch = next(data.train_iterator(4))
    masked = batch['weights'] > 0
    self.assertTrue(masked.any())
    self.assertTrue(np.all(data.tokenizer.token_bytes()[batch['targets'][masked]] == 1))   # only text bytes

  def test_second_build_loads_the_tokenizer_it_saved(self):
    rng = np.random.default_rng(5)
    root = self.create_tempdir()
    root.create_file('a.txt', content='\n\n'.join(_random_words(rng, 30) for _ in range(40)))
    cfg = _config('text_files', os.path.join(root.full_path, 'a.txt'), tokenizer='sentencepiece', vocab_size=300)
    tokenizer_dir = self.create_tempdir().full_path
    first = data_lib.get_dataset(cfg, task='lm', seed=0, tokenizer_dir=tokenizer_dir)
    with mock.patch.object(tokenizers.SentencePieceTokenizer, 'train', side_effect=AssertionError('retrained')):
      again = data_lib.get_dataset(cfg, task='lm', seed=0, tokenizer_dir=tokenizer_dir)
    self.assertGreater(first.num_examples('train'), 2)
    chex.assert_trees_all_equal(next(first.train_iterator(2)), next(again.train_iterator(2)))

  def test_paragraph_scan_matches_the_documented_separator(self):
    # The separator as documented (two or more line breaks, each followed by optional spaces or tabs), matched the
    # plain way; text_files finds it faster, from its first newline.
    separator = re.compile(rb'(?:\r?\n[ \t\f\v]*){2,}')
    rng = np.random.default_rng(7)
    root = self.create_tempdir()
    files = []
    for i in range(300):
      data = bytes(rng.choice(list(b'ab \t\r\n\x0b'), rng.integers(0, 40)).tolist())
      files.append(root.create_file(f'{i}.txt', content=data, mode='wb').full_path)
    want = [d for f in files for d in separator.split(open(f, 'rb').read()) if d.strip()]
    paragraphs = text_files.Paragraphs(files)
    self.assertEqual(paragraphs.read(np.arange(len(paragraphs)))[0], want)
    self.assertGreater(len(want), 300)

  def test_path_errors(self):
    with self.assertRaisesRegex(ValueError, 'data.paths is empty'):
      data_lib.get_dataset(_config('text_files', ' , '), task='lm', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    missing = os.path.join(self.create_tempdir().full_path, '*.txt')
    with self.assertRaisesRegex(FileNotFoundError, 'matches no file'):
      data_lib.get_dataset(_config('text_files', missing), task='lm', seed=0, tokenizer_dir=self.create_tempdir().full_path)


def _write_table(root, fmt, rows):
  path = os.path.join(root, f'data.{fmt}')
  # With a byte order mark, as spreadsheet programs write them; the text column first, where the mark would stick.
  with open(path, 'w', newline='', encoding='utf-8-sig') as f:
    if fmt == 'csv':
      writer = csv.DictWriter(f, fieldnames=['review', 'id', 'stars'])
      writer.writeheader()
      writer.writerows(rows)
    else:
      f.writelines(json.dumps(r) + '\n' + '\n' * (i % 5 == 0) for i, r in enumerate(rows))
  return path


class TableTest(chex.TestCase):

  def _rows(self, n=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{'id': i, 'review': f'r{i} ' + _random_words(rng, rng.integers(0, 12)) + ', "quoted"\nline',
             'stars': int(rng.integers(0, 3))} for i in range(n)]
    rows[3]['review'] = ''
    rows[4]['review'] = 'x' * 200   # longer than max_len: truncated
    return rows

  def _check_classification(self, fmt):
    rows = self._rows()
    path = _write_table(self.create_tempdir().full_path, fmt, rows)
    cfg = _config(fmt, path, text_column='review', label_column='stars')
    data = data_lib.get_dataset(cfg, task='classification', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    self.assertEqual((data.num_examples('train'), data.num_examples('validation')), (54, 6))
    by_text = {}
    for split in ('train', 'validation'):
      for batch in data.eval_batches(split, 8):
        chex.assert_shape(batch['inputs'], (8, 32))
        for inputs, label, weight in zip(batch['inputs'], batch['label'], batch['weights']):
          if weight:
            self.assertEqual(inputs[0], data.tokenizer.cls_id)
            text = data.tokenizer.decode(inputs[1:])
            by_text.setdefault(split, []).append((text, label))
    want = {r['review'].strip()[:30]: r['stars'] for r in rows}   # cls + 30 bytes + sep = max_len
    seen = by_text['train'] + by_text['validation']
    self.assertEqual(sorted(t for t, _ in seen), sorted(want))
    self.assertTrue(all(want[t] == label for t, label in seen))
    self.assertEmpty({t for t, _ in by_text['train']} & {t for t, _ in by_text['validation']})
    counted = [sum(getattr(s, k) for s in data.stats.values()) for k in ('empty', 'truncated')]
    self.assertEqual(counted, [1, sum(len(r['review'].strip()) > 30 for r in rows)])

  def test_csv_classification(self):
    self._check_classification('csv')

  def test_jsonl_classification(self):
    self._check_classification('jsonl')

  def test_jsonl_lm_needs_no_labels(self):
    rows = [{'id': i, 'review': f'document {i}'} for i in range(10)]
    path = _write_table(self.create_tempdir().full_path, 'jsonl', rows)
    data = data_lib.get_dataset(_config('jsonl', path, text_column='review'), task='lm', seed=0,
                                tokenizer_dir=self.create_tempdir().full_path)
    self.assertEqual(sorted(_segments(data, 'train') + _segments(data, 'validation')),
                     sorted(r['review'] for r in rows))

  def _read(self, cfg, task):
    """Builds the Data and reads its train split: a file's content is read only then."""
    data_lib.get_dataset(cfg, task=task, seed=0, tokenizer_dir=self.create_tempdir().full_path).num_examples('train')

  def test_bad_tables(self):
    root = self.create_tempdir()
    rows = self._rows(5)
    rows[2]['stars'] = 'two'
    # csv counts physical lines (each review spans two); jsonl has a blank line after the first record.
    for fmt, where in (('csv', ':7'), ('jsonl', ':4')):
      cfg = _config(fmt, _write_table(root.full_path, fmt, rows), text_column='review', label_column='stars')
      with self.assertRaisesRegex(ValueError, f"{where}: label 'two'"):
        self._read(cfg, 'classification')
      cfg.text_column = 'body'
      with self.assertRaisesRegex(ValueError, "'body'"):
        self._read(cfg, 'classification')
    rows[2]['stars'] = '²'   # str.isdigit() says yes, int() says no
    cfg = _config('csv', _write_table(root.full_path, 'csv', rows), text_column='review', label_column='stars')
    with self.assertRaisesRegex(ValueError, ":7: label '²'"):
      self._read(cfg, 'classification')
    cfg.label_column = ''
    with self.assertRaisesRegex(ValueError, 'data.label_column is empty'):
      self._read(cfg, 'classification')
    cfg.text_column = ''
    with self.assertRaisesRegex(ValueError, 'data.text_column is empty'):
      self._read(cfg, 'lm')
    root.create_file('short.csv', content='stars,review\n1,fine\n2\n')
    cfg = _config('csv', os.path.join(root.full_path, 'short.csv'), text_column='review')
    with self.assertRaisesRegex(ValueError, r"short.csv:3: the row has no field for column\(s\) \['review'\]"):
      self._read(cfg, 'lm')
    root.create_file('broken.jsonl', content='{"review": "a", "stars": 1}\n{"review": \n')
    cfg = _config('jsonl', os.path.join(root.full_path, 'broken.jsonl'), text_column='review', label_column='stars')
    with self.assertRaisesRegex(ValueError, 'broken.jsonl:2: not a JSON object'):
      self._read(cfg, 'classification')


class RegistryTest(chex.TestCase):

  def test_unknown_name_and_task(self):
    cfg = base.get_config().data
    cfg.name = 'c4'
    with self.assertRaisesRegex(ValueError, "data.name='c4'; allowed: imdb_reviews, wikipedia, text_files, csv, "
                                            'jsonl, mqar'):
      data_lib.get_dataset(cfg, task='lm', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    cfg.name = 'text_files'
    with self.assertRaisesRegex(ValueError, "serves tasks lm, mlm, not 'classification'"):
      data_lib.get_dataset(cfg, task='classification', seed=0, tokenizer_dir=self.create_tempdir().full_path)
