"""The user's own data: text files, csv and jsonl, bad text, and the registry's errors."""

import codecs
import collections
import csv
import io
import json
import os
import random
import re
import tracemalloc
from unittest import mock

import chex
import fixtures
import numpy as np

from lm_jax import data as data_lib
from lm_jax.data import corpus as corpus_lib
from lm_jax.data import labels as labels_lib
from lm_jax.data import text_files
from lm_jax.data import tokenizers


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
    data = data_lib.get_dataset(fixtures.data('text_files', paths=os.path.join(root.full_path, '*.txt')), task='lm',
                                seed=0, tokenizer_dir=self.create_tempdir().full_path)
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
    cfg = fixtures.data('text_files', paths=os.path.join(root.full_path, 'bad.txt'), validation_fraction=0.0)
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
    cfg = fixtures.data('text_files', paths=os.path.join(root.full_path, 'a.txt'), tokenizer='sentencepiece',
                        vocab_size=300)
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
      data_lib.get_dataset(fixtures.data('text_files', paths=' , '), task='lm', seed=0,
                           tokenizer_dir=self.create_tempdir().full_path)
    missing = os.path.join(self.create_tempdir().full_path, '*.txt')
    with self.assertRaisesRegex(FileNotFoundError, 'matches no file'):
      data_lib.get_dataset(fixtures.data('text_files', paths=missing), task='lm', seed=0,
                           tokenizer_dir=self.create_tempdir().full_path)


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
    cfg = fixtures.data(fmt, paths=path, text_column='review', label_column='stars')
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
    data = data_lib.get_dataset(fixtures.data('jsonl', paths=path, text_column='review'), task='lm', seed=0,
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
      cfg = fixtures.data(fmt, paths=_write_table(root.full_path, fmt, rows), text_column='review',
                          label_column='stars')
      with self.assertRaisesRegex(ValueError, f"{where}: label 'two'"):
        self._read(cfg, 'classification')
      cfg.text_column = 'body'
      with self.assertRaisesRegex(ValueError, "'body'"):
        self._read(cfg, 'classification')
    rows[2]['stars'] = '²'   # str.isdigit() says yes, int() says no
    cfg = fixtures.data('csv', paths=_write_table(root.full_path, 'csv', rows), text_column='review',
                        label_column='stars')
    with self.assertRaisesRegex(ValueError, ":7: label '²'"):
      self._read(cfg, 'classification')
    cfg.label_column = ''
    with self.assertRaisesRegex(ValueError, 'data.label_column is empty'):
      self._read(cfg, 'classification')
    cfg.text_column = ''
    with self.assertRaisesRegex(ValueError, 'data.text_column is empty'):
      self._read(cfg, 'lm')
    root.create_file('short.csv', content='stars,review\n1,fine\n2\n')
    cfg = fixtures.data('csv', paths=os.path.join(root.full_path, 'short.csv'), text_column='review')
    with self.assertRaisesRegex(ValueError, r"short.csv:3: the row has no field for column\(s\) \['review'\]"):
      self._read(cfg, 'lm')
    root.create_file('broken.jsonl', content='{"review": "a", "stars": 1}\n{"review": \n')
    cfg = fixtures.data('jsonl', paths=os.path.join(root.full_path, 'broken.jsonl'), text_column='review',
                        label_column='stars')
    with self.assertRaisesRegex(ValueError, 'broken.jsonl:2: not a JSON object'):
      self._read(cfg, 'classification')
    root.create_file('huge.csv', content='review,stars\na,2147483647\nb,2147483648\n')   # the cache's labels: int32
    cfg = fixtures.data('csv', paths=os.path.join(root.full_path, 'huge.csv'), text_column='review',
                        label_column='stars')
    with self.assertRaisesRegex(ValueError, "huge.csv:3: label '2147483648' .* too large"):
      self._read(cfg, 'classification')


def _whole_file_csv(path, text_column, label_column):
  """The reference: the whole file read as text and parsed with csv.DictReader (how csv was read before streaming)."""
  csv.field_size_limit(1 << 30)
  columns = (text_column, label_column) if label_column else (text_column,)
  texts, labels = [], []
  with open(path, newline='', encoding='utf-8-sig', errors='surrogateescape') as f:
    reader = csv.DictReader(f)
    for column in columns:
      if column not in (reader.fieldnames or ()):
        raise ValueError(f'{path}: no column {column!r}; the header has {reader.fieldnames}.')
    for row in reader:
      where = f'{path}:{reader.line_num}'
      missing = [column for column in columns if row[column] is None]
      if missing:
        raise ValueError(f'{where}: the row has no field for column(s) {missing}; the header has {reader.fieldnames}.')
      texts.append(row[text_column])
      if label_column:
        labels.append(labels_lib.raw_label(row[label_column], where))
  return texts, labels


def _whole_file_jsonl(path, text_column, label_column):
  """The reference: the whole file read as text, line by line, each parsed with json.loads."""
  columns = (text_column, label_column) if label_column else (text_column,)
  texts, labels = [], []
  with open(path, encoding='utf-8-sig', errors='surrogateescape') as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path}:{line_no}'
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where}: not a JSON object ({e}).') from e
      for key in columns:
        if not isinstance(record, dict) or key not in record:
          raise ValueError(f'{where}: no key {key!r} in {str(record)[:200]}.')
      if not isinstance(record[text_column], str):
        raise ValueError(f'{where}: {text_column!r} is {type(record[text_column]).__name__}, not a string.')
      texts.append(record[text_column])
      if label_column:
        labels.append(labels_lib.raw_label(record[label_column], where))
  return texts, labels


_PIECES = ['a', 'bc', ' ', ',', '"', '""', '\n', '\r\n', '\r', '\t', 'é', '€', '漢', '😀', '1', '07', '-2', '{', '}',
           '\u2028', '\x85', '\xa0', ':', '\udcff', '\udce2\udc82']   # the last two: bad bytes, once encoded
_BAD_BYTES = [b'\xff', b'\xe2\x82', b'\xc3', b'\xed\xa0\x80', b'\x00']


def _random_text(rng, max_pieces=8):
  return ''.join(rng.choices(_PIECES, k=rng.randrange(max_pieces)))


def _damaged(rng, data: bytes) -> bytes:
  """`data` with bad UTF-8, blank lines and stray characters inserted at a few random places."""
  out, last = [], 0
  for cut in sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 4))):
    out += [data[last:cut], rng.choice(_BAD_BYTES + [b'\n', b'\r\n\r\n', b'"', b',', b'\r', b' \n'])]
    last = cut
  return b''.join(out) + data[last:]


def _random_csv(rng):
  header = rng.sample(['text', 'label', 'other'], rng.randrange(1, 4))
  rows = [{c: rng.choice([_random_text(rng), str(rng.randrange(5))]) if c == 'label' else _random_text(rng)
           for c in header} for _ in range(rng.randrange(12))]
  f = io.StringIO(newline='')
  writer = csv.DictWriter(f, header, lineterminator=rng.choice(['\n', '\r\n']),
                          quoting=rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
  writer.writeheader()
  writer.writerows(rows)
  return f.getvalue().encode('utf-8', 'surrogateescape')


def _random_jsonl(rng):
  lines = []
  for _ in range(rng.randrange(12)):
    record = {'text': _random_text(rng), 'label': rng.randrange(5), 'other': 1}
    for key in ('text', 'label'):
      if rng.random() < 0.05:
        record[key] = rng.choice([None, 1.5, -1, '3', [1]]) if rng.random() < 0.8 else record.pop(key)
    line = json.dumps(record, ensure_ascii=rng.random() < 0.5) if rng.random() > 0.03 else rng.choice(['[1]', '7'])
    lines.append(line + rng.choice(['\n', '\r\n', '\n\n', '\n \t\n']))
  return ''.join(lines).encode('utf-8', 'surrogateescape')


_FORMATS = {'csv': text_files.CSV_FORMAT, 'jsonl': text_files.JSONL_FORMAT}


class StreamedTableTest(chex.TestCase):
  """csv and jsonl are indexed in one scan and read by offset: the same documents, labels and errors as reading
  the whole file (the reference above), on random files; memory that does not grow with the file."""

  def _compare(self, fmt, reference, make, seeds):
    root = self.create_tempdir()
    outcomes = collections.Counter()
    for seed in seeds:
      rng = random.Random(seed)
      data = make(rng)
      data = (codecs.BOM_UTF8 if rng.random() < 0.3 else b'') + (_damaged(rng, data) if rng.random() < 0.5 else data)
      path = root.create_file(f'{seed}.{fmt}', content=data, mode='wb').full_path
      label_column = rng.choice(['label', None])
      outcomes['lone_cr'] += b'\r' in data.replace(b'\r\n', b'')   # lines split at '\r' too: the slower scan
      try:
        want = reference(path, 'text', label_column)
      except (ValueError, csv.Error) as e:
        with self.assertRaises(type(e), msg=data) as raised:
          text_files.Records([path], _FORMATS[fmt], 'text', label_column)
        self.assertEqual(str(raised.exception), str(e), data)
        outcomes['error'] += 1
        continue
      docs = text_files.Records([path], _FORMATS[fmt], 'text', label_column)
      texts, labels = docs.read(np.arange(len(docs)))
      self.assertEqual((texts, labels), (want[0], want[1] if label_column else None), data)
      some = sorted(rng.sample(range(len(docs)), rng.randrange(len(docs) + 1)))
      self.assertEqual(docs.read(some)[0], [want[0][i] for i in some])
      outcomes['read'] += 1
      outcomes['invalid_utf8'] += any(corpus_lib._SURROGATE.search(t) for t in texts)
      outcomes['multi_line'] += any('\n' in t or '\r' in t for t in texts)
    return outcomes

  def test_csv_equals_whole_file_reading(self):
    outcomes = self._compare('csv', _whole_file_csv, _random_csv, range(600))
    # Both outcomes and the cases that matter occur often enough to be tested.
    self.assertTrue(all(outcomes[k] > 30 for k in ('error', 'read', 'invalid_utf8', 'multi_line', 'lone_cr')), outcomes)

  def test_jsonl_equals_whole_file_reading(self):
    outcomes = self._compare('jsonl', _whole_file_jsonl, _random_jsonl, range(600))
    self.assertTrue(all(outcomes[k] > 30 for k in ('error', 'read', 'invalid_utf8', 'lone_cr')), outcomes)

  def test_corpus_equals_whole_file_reading(self):
    """Several files, the validation carve and max_documents: the same views as the documents read whole."""
    root = self.create_tempdir()
    rows = TableTest()._rows(n=40, seed=3)
    for fmt, reference in (('csv', _whole_file_csv), ('jsonl', _whole_file_jsonl)):
      paths = [_write_table(root.mkdir().full_path, fmt, rows[i::3]) for i in range(3)]
      cfg = fixtures.data(fmt, paths=','.join(paths), text_column='review', label_column='stars', max_documents=35)
      views = (text_files.read_csv if fmt == 'csv' else text_files.read_jsonl)(cfg, 'classification').views()
      texts, labels = [], []
      for path in paths:
        t, l = reference(path, 'review', 'stars')
        texts, labels = texts + t, labels + l
      want = corpus_lib.train_and_validation(corpus_lib.InMemoryDocuments(texts, labels), cfg)
      for split in ('train', 'validation'):
        (view,), (want_view,) = views[split], want[split]
        np.testing.assert_array_equal(view.indices, want_view.indices)
        self.assertEqual(view.docs.read(view.indices), want_view.docs.read(want_view.indices))

  def test_index_holds_offsets_not_text(self):
    root = self.create_tempdir()
    rng = np.random.default_rng(0)
    words = [_random_words(rng, 60) for _ in range(100)]
    body = ''.join(f'"{words[i % 100]}, ""{i}""\n{words[i % 7]}",{i % 3}\n' for i in range(45_000))
    path = root.create_file('big.csv', content='text,label\n' + body).full_path
    size = os.path.getsize(path)
    self.assertGreater(size, 20e6)
    tracemalloc.start()
    try:
      docs = text_files.Records([path], text_files.CSV_FORMAT, 'text', 'label')
      _, peak = tracemalloc.get_traced_memory()
    finally:
      tracemalloc.stop()
    self.assertLen(docs, 45_000)
    # Offsets and labels (32 bytes a record kept, with the temporaries of building them about 72): 3 MB, not the
    # 22 MB file, which reading whole held as text (more than its size).
    self.assertLess(peak, 100 * len(docs))
    self.assertLess(peak, size / 5)
    texts, labels = docs.read([0, 44_999])
    self.assertEqual(texts, [f'{words[0]}, "0"\n{words[0]}', f'{words[99]}, "44999"\n{words[44_999 % 7]}'])
    self.assertEqual(labels, [0, 44_999 % 3])


class RegistryTest(chex.TestCase):

  def test_unknown_name_and_task(self):
    cfg = fixtures.config().data
    cfg.name = 'c4'
    with self.assertRaisesRegex(ValueError, "data.name='c4'; allowed: imdb_reviews, wikipedia, text_files, csv, "
                                            'jsonl, mqar'):
      data_lib.get_dataset(cfg, task='lm', seed=0, tokenizer_dir=self.create_tempdir().full_path)
    cfg.name = 'text_files'
    with self.assertRaisesRegex(ValueError, "serves tasks lm, mlm, not 'classification'"):
      data_lib.get_dataset(cfg, task='classification', seed=0, tokenizer_dir=self.create_tempdir().full_path)
