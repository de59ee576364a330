"""The user's own data: text files (lm/mlm) and csv/jsonl with text and label columns (any task).

data.paths is a glob, or several separated by commas ('~' and '**' work); files are read in sorted order.
  text_files  UTF-8 .txt files; documents are separated by blank lines (a file without one is one document),
              as in BERT's pretraining corpora.
  csv         a header row naming data.text_column and, for classification, data.label_column.
  jsonl       one JSON object per line with those keys; blank lines are skipped.
Labels are class names ('positive', 'neutral', ...) or non-negative integers (0, 1, ... or their decimal strings),
all of one kind (labels.py). 'validation' is data.validation_fraction of the documents (rows), carved with a fixed
seed, unless data.validation_paths names its own files; data.test_paths adds a 'test' split. data.max_documents
caps the documents read per split. Bytes that are not
UTF-8 become U+FFFD and are counted, never an error; a byte order mark starting a csv or jsonl file is skipped.
The files' paths, sizes and mtimes identify the corpus (the token cache's key), and nothing is read while a cache
for them exists. Building one scans each file once for the byte ranges of its documents (paragraphs; csv records,
which may span lines; jsonl lines), validating csv and jsonl records and keeping their labels (an int array); the
documents are then read by offset from the memory-mapped files, a chunk at a time, never all at once.
"""

import array
import codecs
import csv
import functools
import glob
import json
import mmap
import os
import re
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from lm_jax.data import corpus as corpus_lib
from lm_jax.data import labels as labels_lib
from lm_jax.data import pipeline

# Paragraph separators: two or more line breaks ('\n' or '\r\n'), each followed by optional spaces or tabs. Matched
# from their first '\n', a literal start the regex engine finds quickly; a '\r' just before it joins the separator.
_BLANK_LINES = re.compile(rb'\n[ \t\f\v]*(?:\r?\n[ \t\f\v]*)+')
_NON_SPACE = re.compile(rb'\S')
# A line with its break, as Python's text files split lines: '\n', '\r\n' or a lone '\r' (the last line may have none).
_LINE = re.compile(rb'[^\r\n]*(?:\r\n?|\n|\Z)')
_LINE_BREAKS = re.compile(rb'[\r\n]*')
_LONE_CR = re.compile(rb'\r(?!\n)')
_FIELD_SIZE_LIMIT = 1 << 30   # csv's default (128 KiB) rejects long documents


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


def _columns(text_column: str, label_column: str | None) -> tuple[str, ...]:
  if not text_column:
    raise ValueError('data.text_column is empty: name the csv column / jsonl key that holds the text.')
  return (text_column, label_column) if label_column else (text_column,)


def _home(files: list[str]) -> str:
  return os.path.join(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]), '.lm_jax_cache')


def _mapped(path: str) -> mmap.mmap | bytes:
  with open(path, 'rb') as f:
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b''


class _Spans:
  """Documents at byte ranges of memory-mapped files; subclasses find the ranges and read them."""

  def __init__(self, files: list[str], ranges: list[np.ndarray]):
    self._files = files
    # int64 [documents, (file number, start, end)], from each file's [documents, (start, end)]
    self._file_start_end = np.concatenate([np.zeros((0, 3), np.int64)] + [
        np.column_stack([np.full(len(r), number), r]) for number, r in enumerate(ranges)])
    self._open = (-1, b'')   # the file read last: documents are read in index order

  def __len__(self) -> int:
    return len(self._file_start_end)

  def _ranges(self, indices) -> Iterator[tuple[int, mmap.mmap | bytes, int, int]]:
    """(file number, its mapped bytes, start, end) of each document."""
    # Columns, not rows, as lists: a list per document would wake the garbage collector, which then walks every
    # object of the process (JAX's included) again and again.
    for number, start, end in zip(*self._file_start_end[indices].T.tolist()):
      if number != self._open[0]:
        self._open = (number, _mapped(self._files[number]))
      yield number, self._open[1], start, end


class Paragraphs(_Spans):
  """The non-blank paragraphs of text files as `corpus.Documents`: one scan finds their byte ranges, and `read`
  reads those from the memory-mapped files (no text held in memory)."""

  def __init__(self, files: list[str]):
    super().__init__(files, [self._scan(_mapped(path)) for path in files])

  @staticmethod
  def _scan(data) -> np.ndarray:
    cuts = array.array('q', [0])   # paragraph i is data[cuts[2i]:cuts[2i + 1]]
    for m in _BLANK_LINES.finditer(data):
      cuts.extend((m.start() - (data[m.start() - 1:m.start()] == b'\r'), m.end()))
    cuts.append(len(data))
    start_end = np.frombuffer(cuts, np.int64).reshape(-1, 2)
    return start_end[[_NON_SPACE.search(data, a, b) is not None for a, b in zip(*start_end.T.tolist())]]

  def read(self, indices):
    return [data[start:end] for _, data, start, end in self._ranges(indices)], None


class _Lines:
  """The lines of data[start:], split where Python's text files split them ('\\n', '\\r\\n' or a lone '\\r'), with
  bad bytes as surrogates ('surrogateescape'), as open() reads them; `end`: where the line yielded last ends."""

  def __init__(self, data, start: int):
    self._data, self.end = data, start

  def __iter__(self) -> Iterator[str]:
    data = self._data
    if _LONE_CR.search(data, self.end):
      for m in _LINE.finditer(data, self.end):
        if m.start() == m.end():   # the empty match at the end
          return
        self.end = m.end()
        yield m.group().decode('utf-8', 'surrogateescape')
      return
    # Every break is '\n' or '\r\n': lines end at each '\n', which bytes.find finds several times faster.
    while self.end < len(data):
      start, self.end = self.end, data.find(b'\n', self.end) + 1 or len(data)
      yield data[start:self.end].decode('utf-8', 'surrogateescape')


def _text_start(data) -> int:
  """Where the text starts: after a byte order mark, which the utf-8-sig codec skips."""
  return len(codecs.BOM_UTF8) if data[:len(codecs.BOM_UTF8)] == codecs.BOM_UTF8 else 0


class _Scan(NamedTuple):
  """One file's records: int64 [records, (start, end)], and where a record's text is (the csv field's position,
  the jsonl key). Their labels go into the `labels.RawLabels` the scan is given."""
  ranges: np.ndarray
  column: int | str


class _Format(NamedTuple):
  scan: Callable[..., _Scan]   # (path, data, text_column, label_column, labels: RawLabels, file number)
  text: Callable[[Any, int, int, int | str], str]   # (data, start, end, column): the record's text


def _scan(ranges: array.array, column: int | str) -> _Scan:
  return _Scan(np.frombuffer(ranges, np.int64).reshape(-1, 2), column)


class Records(_Spans):
  """The records of csv or jsonl files as `corpus.Documents`: one scan validates every record and finds its byte
  range and raw label; `read` parses only the records asked for, from the memory-mapped files. The labels are class
  ids once `labels.assign_ids` has mapped them (over every split at once, as class names need)."""

  def __init__(self, files: list[str], table_format: _Format, text_column: str, label_column: str | None):
    self.raw_labels = labels_lib.RawLabels(files) if label_column else None
    scans = [table_format.scan(path, _mapped(path), text_column, label_column, self.raw_labels, number)
             for number, path in enumerate(files)]
    super().__init__(files, [s.ranges for s in scans])
    self._labels = None
    self.label_names = None
    self._columns = [s.column for s in scans]
    self._text = table_format.text

  def set_label_ids(self, ids: np.ndarray, names: tuple[str, ...] | None) -> None:
    self._labels, self.label_names = ids, names

  def read(self, indices):
    texts = [self._text(data, start, end, self._columns[number]) for number, data, start, end in self._ranges(indices)]
    if self.raw_labels is None:
      return texts, None
    if self._labels is None:   # not mapped to ids yet: the labels as the files hold them
      return texts, [self.raw_labels.value(i) for i in indices]
    return texts, self._labels[indices].tolist()


def _scan_csv(path: str, data, text_column: str, label_column: str | None, labels: labels_lib.RawLabels | None,
              file_number: int) -> _Scan:
  csv.field_size_limit(_FIELD_SIZE_LIMIT)
  columns = _columns(text_column, label_column)
  lines = _Lines(data, _text_start(data))
  reader = csv.DictReader(lines)
  for column in columns:
    if column not in (reader.fieldnames or ()):
      raise ValueError(f'{path}: no column {column!r}; the header has {reader.fieldnames}.')
  ranges, start = array.array('q'), lines.end
  for row in reader:   # the reader pulls a record's lines and no more: lines.end is where the record ends
    where = f'{path}:{reader.line_num}'
    missing = [column for column in columns if row[column] is None]   # DictReader's filler for short rows
    if missing:
      raise ValueError(f'{where}: the row has no field for column(s) {missing}; the header has {reader.fieldnames}.')
    if label_column:
      labels.add(labels_lib.raw_label(row[label_column], where), file_number, reader.line_num)
    # The record starts after the blank lines DictReader skipped (a line that starts with a break is blank).
    ranges.extend((_LINE_BREAKS.match(data, start).end(), lines.end))
    start = lines.end
  # DictReader's row maps each name to its last field: the text is the one at the name's last position.
  return _scan(ranges, len(reader.fieldnames) - 1 - reader.fieldnames[::-1].index(text_column))


def _csv_text(data, start: int, end: int, column: int) -> str:
  # The record as one string, not line by line: the csv reader parses it the same way (a break inside quotes is
  # text, the last break ends the record), and only the scan needed line numbers.
  csv.field_size_limit(_FIELD_SIZE_LIMIT)
  return next(csv.reader([data[start:end].decode('utf-8', 'surrogateescape')]))[column]


def _universal_newline(line: str) -> str:
  """The line as text mode's universal newlines give it: its '\\r\\n' or '\\r' as '\\n'."""
  if line.endswith('\r\n'):
    return line[:-2] + '\n'
  return line[:-1] + '\n' if line.endswith('\r') else line


def _scan_jsonl(path: str, data, text_column: str, label_column: str | None, labels: labels_lib.RawLabels | None,
                file_number: int) -> _Scan:
  columns = _columns(text_column, label_column)
  ranges = array.array('q')
  lines = _Lines(data, _text_start(data))
  start = lines.end
  for line_no, line in enumerate(lines, 1):
    line_start, start = start, lines.end
    if not line.strip():
      continue
    where = f'{path}:{line_no}'
    try:
      record = json.loads(_universal_newline(line))
    except json.JSONDecodeError as e:
      raise ValueError(f'{where}: not a JSON object ({e}).') from e
    for key in columns:
      if not isinstance(record, dict) or key not in record:
        raise ValueError(f'{where}: no key {key!r} in {str(record)[:200]}.')
    if not isinstance(record[text_column], str):
      raise ValueError(f'{where}: {text_column!r} is {type(record[text_column]).__name__}, not a string.')
    if label_column:
      labels.add(labels_lib.raw_label(record[label_column], where), file_number, line_no)
    ranges.extend((line_start, start))
  return _scan(ranges, text_column)


def _jsonl_text(data, start: int, end: int, key: str) -> str:
  return json.loads(data[start:end].decode('utf-8', 'surrogateescape'))[key]


CSV_FORMAT = _Format(_scan_csv, _csv_text)
JSONL_FORMAT = _Format(_scan_jsonl, _jsonl_text)


def _split_files(data_config) -> dict[str, list[str]]:
  """{'train': data.paths's files, 'validation': data.validation_paths's, 'test': data.test_paths's}, as given."""
  given = {'train': data_config.paths, 'validation': data_config.validation_paths, 'test': data_config.test_paths}
  return {split: expand_paths(paths) for split, paths in given.items() if split == 'train' or paths.strip()}


def _split_views(make_docs, files: dict[str, list[str]], data_config) -> dict[str, tuple[corpus_lib.View, ...]]:
  """train (and a carved validation unless validation files are given) from the train files; the given splits
  each from its own files (data.max_documents caps each)."""
  views = corpus_lib.train_and_validation(make_docs(files['train']), data_config,
                                          carve='validation' not in files)
  for split in ('validation', 'test'):
    if split in files:
      views[split] = (corpus_lib.View.all(make_docs(files[split]), data_config.max_documents),)
  return views


def _split_names(files: dict[str, list[str]], data_config) -> tuple[str, ...]:
  names = corpus_lib.train_and_validation_names(data_config, carve='validation' not in files)
  return names + tuple(split for split in ('validation', 'test') if split in files and split not in names)


def _corpus_identity(data_config, files: dict[str, list[str]], **columns) -> dict:
  stamps = {split: [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in paths] for split, paths in files.items()}
  train = stamps.pop('train')
  # Keys are added only when used, so that caches built before these options existed keep their keys.
  given = {key: value for key, value in (('split_files', stamps), ('label_names', columns.pop('label_names', [])))
           if value}
  return corpus_lib.identity(data_config, files=train, **columns, **given)


def read_text_files(data_config, task: str) -> corpus_lib.Corpus:
  del task
  files = _split_files(data_config)
  views = functools.cache(lambda: _split_views(Paragraphs, files, data_config))
  return corpus_lib.Corpus(_split_names(files, data_config), labelled=False,
                           identity=_corpus_identity(data_config, files), views=views,
                           home=_home(sum(files.values(), [])))


def _table_reader(table_format: _Format):
  def read_corpus(data_config, task: str) -> corpus_lib.Corpus:
    label_column = data_config.label_column if task == 'classification' else None
    if label_column == '':
      raise ValueError('data.label_column is empty: classification needs the csv column / jsonl key of the labels.')
    _columns(data_config.text_column, label_column)
    files = _split_files(data_config)

    def views():
      split_views = _split_views(lambda paths: Records(paths, table_format, data_config.text_column, label_column),
                                 files, data_config)
      if label_column:
        _assign_label_ids(split_views, data_config.label_names)
      return split_views

    identity = _corpus_identity(data_config, files, text_column=data_config.text_column, label_column=label_column,
                                label_names=list(data_config.label_names) if label_column else [])
    return corpus_lib.Corpus(_split_names(files, data_config), labelled=label_column is not None, identity=identity,
                             views=functools.cache(views), home=_home(sum(files.values(), [])))
  return read_corpus


def _assign_label_ids(split_views: dict[str, tuple[corpus_lib.View, ...]], label_names) -> None:
  """Maps every split's raw labels to class ids at once (`labels.assign_ids`); a carved validation split shares the
  train files' Records, whose labels all count as training labels."""
  records = {}
  for split, (view,) in split_views.items():
    records.setdefault(id(view.docs), (split, view.docs))
  raw = {split: docs.raw_labels for split, docs in records.values()}
  ids, names = labels_lib.assign_ids(raw, label_names)
  for split, docs in records.values():
    docs.set_label_ids(ids[split], names)


read_csv = _table_reader(CSV_FORMAT)
read_jsonl = _table_reader(JSONL_FORMAT)
TEXT_FILES = pipeline.corpus_source(('lm', 'mlm'), read_text_files)
CSV = pipeline.corpus_source(pipeline.TASKS, read_csv)
JSONL = pipeline.corpus_source(pipeline.TASKS, read_jsonl)
