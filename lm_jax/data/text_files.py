"""The user's own data: text files (lm/mlm) and csv/jsonl with text and label columns (any task).

data.paths is a glob, or several separated by commas ('~' and '**' work); files are read in sorted order.
  text_files  UTF-8 .txt files; documents are separated by blank lines (a file without one is one document),
              as in BERT's pretraining corpora.
  csv         a header row naming data.text_column and, for classification, data.label_column.
  jsonl       one JSON object per line with those keys; blank lines are skipped.
Labels are non-negative integers (0, 1, ... or their decimal strings). 'validation' is data.validation_fraction
of the documents (rows), carved with a fixed seed; data.max_documents caps the documents read. Bytes that are not
UTF-8 become U+FFFD and are counted, never an error; a byte order mark starting a csv or jsonl file is skipped.
The files' paths, sizes and mtimes identify the corpus (the token cache's key), and nothing is read while a cache
for them exists; text files are then indexed in one scan and their paragraphs read by offset, never all at once.
"""

import array
import csv
import functools
import glob
import json
import mmap
import os
import re

import numpy as np

from lm_jax.data import corpus as corpus_lib
from lm_jax.data import pipeline

# Paragraph separators: two or more line breaks ('\n' or '\r\n'), each followed by optional spaces or tabs. Matched
# from their first '\n', a literal start the regex engine finds quickly; a '\r' just before it joins the separator.
_BLANK_LINES = re.compile(rb'\n[ \t\f\v]*(?:\r?\n[ \t\f\v]*)+')
_NON_SPACE = re.compile(rb'\S')


def expand_paths(paths: str) -> list[str]:
  """Sorted files matching each comma-separated glob, in pattern order, without duplicates."""
  patterns = [p.strip() for p in paths.split(',') if p.strip()]
  if not patterns:
    raise ValueError('data.paths is empty: set it to a glob of your files, e.g. data.paths="corpus/*.txt".')
  files = []
  for pattern in patterns:
    matched = sorted(f for f in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(f))
    if not matched:
      raise FileNotFoundError(f'data.paths pattern {pattern!r} matches no file.')
    files += matched
  return list(dict.fromkeys(files))


def _label(value, where: str) -> int:
  if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():   # '²'.isdigit() too
    return int(value)
  if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
    return value
  raise ValueError(f'{where}: label {value!r} (data.label_column) is not a non-negative integer.')


def _columns(text_column: str, label_column: str | None) -> tuple[str, ...]:
  if not text_column:
    raise ValueError('data.text_column is empty: name the csv column / jsonl key that holds the text.')
  return (text_column, label_column) if label_column else (text_column,)


def _identity(data_config, files: list[str], **columns) -> dict:
  return corpus_lib.identity(data_config, files=[[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files],
                             **columns)


def _home(files: list[str]) -> str:
  return os.path.join(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]), '.lm_jax_cache')


def _mapped(path: str) -> mmap.mmap | bytes:
  with open(path, 'rb') as f:
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b''


class Paragraphs:
  """The non-blank paragraphs of text files as `corpus.Documents`: one scan finds their byte ranges, and `read`
  reads those from the memory-mapped files (no text held in memory)."""

  def __init__(self, files: list[str]):
    self._files = files
    spans = [np.zeros((0, 3), np.int64)]
    for number, path in enumerate(files):
      data = _mapped(path)
      cuts = array.array('q', [0])   # paragraph i is data[cuts[2i]:cuts[2i + 1]]
      for m in _BLANK_LINES.finditer(data):
        cuts.extend((m.start() - (data[m.start() - 1:m.start()] == b'\r'), m.end()))
      cuts.append(len(data))
      start_end = np.frombuffer(cuts, np.int64).reshape(-1, 2)
      kept = [_NON_SPACE.search(data, a, b) is not None for a, b in start_end.tolist()]
      spans.append(np.column_stack([np.full(sum(kept), number), start_end[kept]]))
    self._file_start_end = np.concatenate(spans)   # [paragraphs, (file, start, end)]
    self._open = (-1, b'')   # the file read last: documents are read in index order

  def __len__(self) -> int:
    return len(self._file_start_end)

  def read(self, indices):
    texts = []
    for number, start, end in self._file_start_end[indices].tolist():
      if number != self._open[0]:
        self._open = (number, _mapped(self._files[number]))
      texts.append(self._open[1][start:end])
    return texts, None


def _read_csv(path: str, text_column: str, label_column: str | None) -> tuple[list[str], list[int]]:
  csv.field_size_limit(1 << 30)   # the default (128 KiB) rejects long documents
  columns = _columns(text_column, label_column)
  texts, labels = [], []
  # utf-8-sig: spreadsheet programs start their csv with a byte order mark, which would rename the first column.
  # surrogateescape keeps bad bytes readable; clean_text turns them into U+FFFD and counts them.
  with open(path, newline='', encoding='utf-8-sig', errors='surrogateescape') as f:
    reader = csv.DictReader(f)
    for column in columns:
      if column not in (reader.fieldnames or ()):
        raise ValueError(f'{path}: no column {column!r}; the header has {reader.fieldnames}.')
    for row in reader:
      where = f'{path}:{reader.line_num}'
      missing = [column for column in columns if row[column] is None]   # DictReader's filler for short rows
      if missing:
        raise ValueError(f'{where}: the row has no field for column(s) {missing}; the header has {reader.fieldnames}.')
      texts.append(row[text_column])
      if label_column:
        labels.append(_label(row[label_column], where))
  return texts, labels


def _read_jsonl(path: str, text_column: str, label_column: str | None) -> tuple[list[str], list[int]]:
  columns = _columns(text_column, label_column)
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
        labels.append(_label(record[label_column], where))
  return texts, labels


def read_text_files(data_config, task: str) -> corpus_lib.Corpus:
  del task
  files = expand_paths(data_config.paths)
  views = functools.cache(lambda: corpus_lib.train_and_validation(Paragraphs(files), data_config))
  return corpus_lib.Corpus(corpus_lib.train_and_validation_names(data_config), labelled=False,
                           identity=_identity(data_config, files), views=views, home=_home(files))


def _table_reader(read_file):
  def read_corpus(data_config, task: str) -> corpus_lib.Corpus:
    label_column = data_config.label_column if task == 'classification' else None
    if label_column == '':
      raise ValueError('data.label_column is empty: classification needs the csv column / jsonl key of the labels.')
    _columns(data_config.text_column, label_column)
    files = expand_paths(data_config.paths)

    def views():
      texts, labels = [], []
      for path in files:
        file_texts, file_labels = read_file(path, data_config.text_column, label_column)
        texts += file_texts
        labels += file_labels
      docs = corpus_lib.InMemoryDocuments(texts, labels if label_column else None)
      return corpus_lib.train_and_validation(docs, data_config)

    identity = _identity(data_config, files, text_column=data_config.text_column, label_column=label_column)
    return corpus_lib.Corpus(corpus_lib.train_and_validation_names(data_config), labelled=label_column is not None,
                             identity=identity, views=functools.cache(views), home=_home(files))
  return read_corpus


read_csv = _table_reader(_read_csv)
read_jsonl = _table_reader(_read_jsonl)
TEXT_FILES = pipeline.corpus_source(('lm', 'mlm'), read_text_files)
CSV = pipeline.corpus_source(pipeline.TASKS, read_csv)
JSONL = pipeline.corpus_source(pipeline.TASKS, read_jsonl)
