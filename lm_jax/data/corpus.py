"""Documents, splits and text cleaning shared by the text sources.

A source describes its data as a `Corpus`: the split names and an identity (what the documents are) known without
reading a document, and, read only when a split's token cache is built, each split as a tuple of `View`s: a
random-access document collection plus the indices of the documents that belong to the split. Documents are read in
chunks (`raw_chunks`), so a large split is never held as Python strings all at once.

Every document passes through `clean_text`, which never fails and counts what it repaired in the split's `TextStats`:
  invalid_utf8    bytes that are not UTF-8 (or lone surrogates) became U+FFFD
  control_chars   control characters other than tab/newline were removed
  odd_whitespace  tabs, '\\r', no-break and other Unicode spaces became ' '
  empty           nothing was left after stripping (kept for classification, skipped when packing)
  truncated       longer than the example length (classification) -- counted by the token cache
and `text_bytes`, the UTF-8 size of the cleaned text.
"""

import dataclasses
import logging
import re
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)
# The validation carve must not depend on config.seed: every run of a dataset is validated on the same documents.
_CARVE_SEED = 20240601
# C0 and C1 controls (U+0085 is a line break: it counts as whitespace) and the byte order mark.
_CONTROL = re.compile(r'[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff]')
_ODD_SPACE = re.compile(r'[^\S\n ]')   # whitespace other than '\n' and ' '
_SURROGATE = re.compile(r'[\ud800-\udfff]')
# Every character that _CONTROL or _ODD_SPACE matches ('\r' of '\r\n' among them), the whitespace written out: a
# search that usually finds nothing spares the two substitutions, most of cleaning's time.
_NEEDS_CLEANING = re.compile(r'[\x00-\x09\x0b-\x1f\x7f-\xa0\ufeff\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]')
_ASCII_NEEDS_CLEANING = bytes(c for c in range(128) if _NEEDS_CLEANING.match(chr(c)))


@dataclasses.dataclass
class TextStats:
  """Counts of documents per split and of the repairs `clean_text` made."""
  documents: int = 0
  empty: int = 0
  invalid_utf8: int = 0
  control_chars: int = 0
  odd_whitespace: int = 0
  truncated: int = 0
  text_bytes: int = 0

  def add(self, other: 'TextStats') -> None:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def clean_text(raw: bytes | str, stats: TextStats) -> str:
  """UTF-8 text with repaired bytes, no control characters and plain spaces, stripped; counts into `stats`.

  clean_text(b'caf\\xe9\\tbar\\r\\n') == 'caf\\ufffd bar'  (invalid_utf8, odd_whitespace += 1)
  """
  stats.documents += 1
  if isinstance(raw, bytes):
    try:
      text = raw.decode('utf-8')
    except UnicodeDecodeError:
      text = raw.decode('utf-8', errors='replace')
      stats.invalid_utf8 += 1
  else:
    text = raw
    if not text.isascii() and _SURROGATE.search(text):   # from a 'surrogateescape' decode, or a JSON '\udcxx' escape
      text = _SURROGATE.sub('\ufffd', text)
      stats.invalid_utf8 += 1
  if _needs_cleaning(text):
    text = text.replace('\r\n', '\n')
    text, n = _CONTROL.subn('', text)
    stats.control_chars += bool(n)
    text, n = _ODD_SPACE.subn(' ', text)
    stats.odd_whitespace += bool(n)
  text = text.strip()
  stats.empty += not text
  stats.text_bytes += len(text.encode())
  return text


def _needs_cleaning(text: str) -> bool:
  """Whether `text` holds a character that _CONTROL or _ODD_SPACE matches."""
  if text.isascii():   # most documents: bytes.translate scans several times faster than the regex
    return len(text.encode().translate(None, _ASCII_NEEDS_CLEANING)) != len(text)
  return _NEEDS_CLEANING.search(text) is not None


class Documents(Protocol):
  """A random-access collection of raw documents, optionally labelled."""

  def __len__(self) -> int:
    ...

  def read(self, indices: Sequence[int]) -> tuple[list[bytes | str], list[int] | None]:
    """The raw texts at `indices`, and their labels (None when unlabelled)."""
    ...


@dataclasses.dataclass(frozen=True)
class InMemoryDocuments:
  """Documents already in memory (local files, tests)."""
  texts: Sequence[bytes | str]
  labels: Sequence[int] | None = None

  def __len__(self) -> int:
    return len(self.texts)

  def read(self, indices):
    texts = [self.texts[i] for i in indices]
    return texts, None if self.labels is None else [self.labels[i] for i in indices]


@dataclasses.dataclass(frozen=True)
class View:
  """The documents `docs[indices]`, in this order."""
  docs: Documents
  indices: np.ndarray

  @classmethod
  def all(cls, docs: Documents, limit: int = -1) -> 'View':
    """All documents, or the first `limit` of them when limit >= 0 (config.data.max_documents)."""
    n = len(docs) if limit < 0 else min(limit, len(docs))
    return cls(docs, np.arange(n))


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A text source's splits: 'train' first, then the evaluation splits in report order.

  identity: what the documents are (file paths with sizes and mtimes, a TFDS dataset's directory and sizes, the
    options that select documents), JSON-serialisable: with the split and the tokenizer it keys the token cache;
  views: () -> {split: views}; reads or indexes the documents, so it runs only when a split's cache is built
    (sources wrap it in functools.cache);
  home: the directory the token cache goes to when data.cache_dir is empty: beside the dataset.
  """
  split_names: tuple[str, ...]
  labelled: bool
  identity: dict
  views: Callable[[], dict[str, tuple[View, ...]]]
  home: str


def identity(data_config, **source) -> dict:
  """The Corpus.identity of `source` (what a source reads) and the options that select its documents."""
  return {'name': data_config.name, 'max_documents': data_config.max_documents,
          'validation_fraction': data_config.validation_fraction, **source}


def _check_fraction(fraction: float) -> None:
  if not 0 <= fraction < 1:
    raise ValueError(f'data.validation_fraction={fraction} must be in [0, 1).')


def carve_validation(view: View, fraction: float) -> tuple[View, View | None]:
  """Splits `view` into (train, validation) by a fixed permutation; validation is None when fraction == 0.

  Both parts keep the original document order; together they hold every document of `view` exactly once.
  """
  _check_fraction(fraction)
  if fraction == 0:
    return view, None
  n = len(view.indices)
  if n < 2:
    raise ValueError(f'Cannot carve a validation split from {n} document(s); provide more data or set '
                     'data.validation_fraction=0.')
  n_val = min(n - 1, max(1, round(n * fraction)))
  held_out = np.zeros(n, bool)
  held_out[np.random.default_rng(_CARVE_SEED).permutation(n)[:n_val]] = True
  return View(view.docs, view.indices[~held_out]), View(view.docs, view.indices[held_out])


def train_and_validation_names(data_config, *, carve: bool = True) -> tuple[str, ...]:
  """The split names `train_and_validation` gives."""
  _check_fraction(data_config.validation_fraction)
  return ('train', 'validation') if carve and data_config.validation_fraction else ('train',)


def train_and_validation(docs: Documents, data_config, *, carve: bool = True) -> dict[str, tuple[View, ...]]:
  """{'train': ..., 'validation': ...} views of the first data.max_documents of `docs`, data.validation_fraction
  of them carved out as validation (no 'validation' when the fraction is 0 or `carve` is False: the validation
  split has files of its own)."""
  fraction = data_config.validation_fraction if carve else 0.0
  train, validation = carve_validation(View.all(docs, data_config.max_documents), fraction)
  return {'train': (train,)} if validation is None else {'train': (train,), 'validation': (validation,)}


def raw_chunks(views: Sequence[View], chunk_size: int = 4096
               ) -> Iterator[tuple[list[bytes | str], list[int] | None]]:
  """Yields (raw texts, labels or None) for the documents of `views`, in order, `chunk_size` at a time."""
  for view in views:
    for start in range(0, len(view.indices), chunk_size):
      yield view.docs.read(view.indices[start:start + chunk_size].tolist())


def sample_texts(views: Sequence[View], num_docs: int) -> list[str]:
  """Up to `num_docs` non-empty cleaned documents drawn without replacement (fixed seed) from `views`."""
  if num_docs <= 0:
    raise ValueError(f'data.tokenizer_train_docs={num_docs} must be positive.')
  sizes = [len(v.indices) for v in views]
  ends = np.cumsum(sizes)
  total = int(ends[-1])
  log.info('Reading %d of the %d training documents to train the tokenizer on.', min(num_docs, total), total)
  # Index sampling: only the chosen documents are read, whatever the corpus size.
  chosen = np.sort(np.random.default_rng(_CARVE_SEED).choice(total, min(num_docs, total), replace=False))
  picked = []
  for view, start, end in zip(views, ends - sizes, ends):
    local = chosen[(chosen >= start) & (chosen < end)] - start
    picked.append(View(view.docs, view.indices[local]))
  stats = TextStats()
  return [t for raw, _ in raw_chunks(picked) for t in (clean_text(r, stats) for r in raw) if t]
