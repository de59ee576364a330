"""The token cache: each text split is tokenized once, in parallel, into memory-mapped .npy files that every run,
resume, evaluation and ablation over the same data reads row by row.

Where: data.cache_dir, or beside the dataset when that is empty (Corpus.home: <TFDS data dir>/lm_jax_cache, or
.lm_jax_cache in the directory holding the data.paths files). Each split's cache is a directory named by the hash of
its manifest:

  format     FORMAT_VERSION, the version of what cleaning, tokenization and the file layout produce
  source     Corpus.identity: the dataset (paths, sizes and mtimes; or the TFDS directory and split sizes) and the
             options that select its documents (max_documents, validation_fraction, ...)
  split      the split name
  tokenizer  tokenizers.fingerprint: a hash of the tokenizer's saved files
  layout     'packed' (lm and mlm: one token stream, cut into rows of any max_len when read) or 'classification'
  max_len    (classification only) the row length the inputs were truncated and padded to

Any change names another directory, so a stale cache is never read. A cache directory holds
  manifest.json   the manifest, the split's TextStats and sizes
  packed          tokens.npy (uint16 or uint32 [tokens]: the documents, each followed by eos),
                  doc_ends.npy (int64 [documents]: each document's end offset in tokens.npy)
  classification  inputs.npy (int32 [N, max_len]: cls, tokens, sep, pad 0), label.npy (int32 [N])
read with np.load(mmap_mode='r'): memory stays flat whatever the corpus size, and a process touches only the rows
it reads. A trained SentencePiece model is kept beside the split caches (`trained_tokenizer_dir`).

A build writes into a temporary sibling directory and renames it into place when complete, so a directory with a
manifest.json is always whole; a killed build leaves only its temporary directory, which the next build of that
cache on the same machine deletes before starting over. Processes that build the same cache at once (the hosts of
one job on a shared disk) each write their own copy, and the first rename wins. Tokenizing runs in one process
per core over chunks of documents, each cleaning and encoding its chunk; the parent reads the documents and writes
the results in order, with a progress bar (tqdm, on stderr).
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import time
from typing import Callable, Iterable, Iterator
import warnings

import numpy as np
import tqdm

from lm_jax.data import corpus as corpus_lib
from lm_jax.data import packing
from lm_jax.data import tokenizers

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MANIFEST = 'manifest.json'
_LABEL_NAMES = 'label_names.json'   # a classification split's class names, when the data names them
_CHUNK_DOCS = 1024   # documents per worker task: large enough to amortise the transfer, small for an even load
_QUEUED_PER_WORKER = 2   # tasks in flight per worker: keeps workers busy while bounding the text held in memory


def root(data_config, corpus: corpus_lib.Corpus) -> str:
  """The directory of this corpus's caches: data.cache_dir, or beside the dataset."""
  return os.path.abspath(os.path.expanduser(data_config.cache_dir or corpus.home))


def _key(manifest: dict) -> str:
  return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:24]


def trained_tokenizer_dir(cache_root: str, corpus: corpus_lib.Corpus, data_config) -> str:
  """Where a SentencePiece model trained on this corpus's train split is kept, for every run to reuse."""
  manifest = {'format': FORMAT_VERSION, 'source': corpus.identity, 'vocab_size': data_config.vocab_size,
              'train_docs': data_config.tokenizer_train_docs}
  return os.path.join(cache_root, f'sentencepiece-{_key(manifest)}')


def manifest(corpus: corpus_lib.Corpus, split: str, tokenizer, *, task: str, max_len: int) -> dict:
  """What the cache of `split` depends on; see the module docstring."""
  layout = {'layout': 'classification', 'max_len': max_len} if task == 'classification' else {'layout': 'packed'}
  return {'format': FORMAT_VERSION, 'source': corpus.identity, 'split': split,
          'tokenizer': tokenizers.fingerprint(tokenizer), **layout}


def split_rows(cache_root: str, corpus: corpus_lib.Corpus, split: str, tokenizer, *, task: str, max_len: int,
               workers: int = 0) -> tuple[packing.Rows, corpus_lib.TextStats]:
  """The rows of `split` and its TextStats, from its cache in `cache_root`, built first when missing.

  workers: tokenizing processes; 0 means one per core available to this process.
  """
  if task == 'classification' and max_len < 3:
    raise ValueError(f'data.max_len={max_len} must be at least 3 for classification (cls, a token, sep).')
  spec = manifest(corpus, split, tokenizer, task=task, max_len=max_len)
  directory = os.path.join(cache_root, _key(spec))
  missing = not os.path.exists(os.path.join(directory, _MANIFEST))
  if missing:
    with _gc_frozen():
      _build(directory, spec, lambda out: _tokenize(out, corpus.views()[split], tokenizer, spec, workers))
  with open(os.path.join(directory, _MANIFEST), encoding='utf-8') as f:
    stored = json.load(f)
  if stored['manifest'] != json.loads(json.dumps(spec)):
    raise ValueError(f'{directory} holds the cache of {stored["manifest"]}, not of {spec}: delete it.')
  if not missing:
    log.info('Split %s: reading the token cache %s (%d documents, %.1f MB of text).', split, directory,
             stored['stats']['documents'], stored['stats']['text_bytes'] / 1e6)
  load = lambda name: np.load(os.path.join(directory, name), mmap_mode='r', allow_pickle=False)
  if task == 'classification':
    labels = load('label.npy')
    names = None
    if os.path.exists(os.path.join(directory, _LABEL_NAMES)):
      with open(os.path.join(directory, _LABEL_NAMES), encoding='utf-8') as f:
        names = tuple(json.load(f))
    rows = packing.ArrayRows({'inputs': load('inputs.npy'), 'label': labels,
                              'weights': np.ones(len(labels), np.float32)}, label_names=names)
  else:
    rows = packing.PackedRows(load('tokens.npy'), load('doc_ends.npy'), max_len, next_token_targets=task == 'lm')
  return rows, corpus_lib.TextStats(**stored['stats'])


@contextlib.contextmanager
def _gc_frozen():
  """Leaves the objects that exist now (JAX's and the rest of the process's, some 150k) out of garbage collection
  meanwhile: a build allocates enough to trigger full collections, each of which would walk them all (~0.1 s), in
  this process and in each forked worker, where walking them would also copy the pages they share with the parent."""
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()


def _build(directory: str, spec: dict, tokenize: Callable[[str], corpus_lib.TextStats]) -> None:
  """Runs `tokenize(temporary directory)` and renames the result to `directory` with its manifest."""
  parent, name = os.path.split(directory)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise OSError(f'Cannot create the token cache directory {parent} ({e}); set data.cache_dir to a writable '
                  'directory.') from e
  host = socket.gethostname()
  for stale in glob.glob(os.path.join(parent, f'.{name}.partial-{host}-*')):
    if not _alive(int(stale.rsplit('-', 1)[1])):
      log.info('Deleting %s: a build of this cache that did not finish.', stale)
      shutil.rmtree(stale, ignore_errors=True)
  partial = os.path.join(parent, f'.{name}.partial-{host}-{os.getpid()}')
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    stats = tokenize(partial)
    with open(os.path.join(partial, _MANIFEST), 'w', encoding='utf-8') as f:
      json.dump({'manifest': spec, 'stats': dataclasses.asdict(stats)}, f, indent=1)
    try:
      os.rename(partial, directory)
    except OSError:
      if not os.path.exists(os.path.join(directory, _MANIFEST)):
        raise
      log.info('%s was completed by another process meanwhile; using it.', directory)   # the first rename wins
  finally:
    shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # another user's process
    return True
  return True


def _tokenize(out: str, views: tuple[corpus_lib.View, ...], tokenizer, spec: dict, workers: int
              ) -> corpus_lib.TextStats:
  """Writes the split's arrays into `out` (see the module docstring) and returns its TextStats."""
  num_docs = sum(len(v.indices) for v in views)
  if not num_docs:
    raise ValueError(f'Split {spec["split"]!r} has no documents (data.max_documents?).')
  workers = min(workers or len(os.sched_getaffinity(0)), -(-num_docs // _CHUNK_DOCS))
  log.info('Split %s: tokenizing %d documents into the token cache %s with %d process(es).', spec['split'],
           num_docs, os.path.dirname(out), workers)
  start = time.perf_counter()
  stats = corpus_lib.TextStats()
  encoded = _encoded(tokenizer, spec, corpus_lib.raw_chunks(views, _CHUNK_DOCS), workers)
  with tqdm.tqdm(total=num_docs, desc=f'Tokenizing {spec["split"]}', unit=' docs',
                 mininterval=2) as bar:
    if spec['layout'] == 'classification':
      _write_classification(out, encoded, num_docs, spec['max_len'], stats, bar)
      if names := getattr(views[0].docs, 'label_names', None):
        with open(os.path.join(out, _LABEL_NAMES), 'w', encoding='utf-8') as f:
          json.dump(list(names), f)
    else:
      _write_packed(out, encoded, tokenizer.vocab_size, stats, bar)
  seconds = time.perf_counter() - start
  log.info('Split %s: %.1f MB of text tokenized in %.1fs (%.1f MB/s); %s.', spec['split'], stats.text_bytes / 1e6,
           seconds, stats.text_bytes / 1e6 / seconds, stats)
  return stats


def _write_packed(out: str, encoded: Iterable, vocab_size: int, stats: corpus_lib.TextStats, bar) -> None:
  with _NpyWriter(os.path.join(out, 'tokens.npy'), packing.token_dtype(vocab_size)) as tokens, \
       _NpyWriter(os.path.join(out, 'doc_ends.npy'), np.int64) as doc_ends:
    for (stream, ends), chunk_stats, _ in encoded:
      doc_ends.write(ends + tokens.length)
      tokens.write(stream)
      stats.add(chunk_stats)
      bar.update(chunk_stats.documents)
    if not tokens.length:
      raise ValueError('No non-empty documents to pack.')


def _write_classification(out: str, encoded: Iterable, num_docs: int, max_len: int, stats: corpus_lib.TextStats,
                          bar) -> None:
  inputs = np.lib.format.open_memmap(os.path.join(out, 'inputs.npy'), 'w+', np.int32, (num_docs, max_len))
  labels = np.lib.format.open_memmap(os.path.join(out, 'label.npy'), 'w+', np.int32, (num_docs,))
  done = 0
  for rows, chunk_stats, chunk_labels in encoded:
    inputs[done:done + len(rows)] = rows
    labels[done:done + len(rows)] = chunk_labels
    done += len(rows)
    stats.add(chunk_stats)
    bar.update(chunk_stats.documents)
  inputs.flush()
  labels.flush()


def _encode_chunk(tokenizer, spec: dict, raw: list[bytes | str]):
  """(arrays, TextStats) of one chunk: the packed (stream, doc_ends) or the classification rows."""
  stats = corpus_lib.TextStats()
  token_ids = tokenizer.encode_batch([corpus_lib.clean_text(r, stats) for r in raw])
  if spec['layout'] == 'packed':
    return packing.pack([token_ids], tokenizer.eos_id, tokenizer.vocab_size), stats
  return _classification_rows(token_ids, tokenizer, spec['max_len'], stats), stats


def _classification_rows(token_ids: list[np.ndarray], tokenizer, max_len: int, stats: corpus_lib.TextStats
                         ) -> np.ndarray:
  """int32 [N, max_len]: [cls, tokens[:max_len - 2], sep] padded with 0; counts the truncated into `stats`."""
  lengths = np.fromiter(map(len, token_ids), np.int64, len(token_ids))
  stats.truncated += int((lengths > max_len - 2).sum())
  kept = np.minimum(lengths, max_len - 2)
  inputs = np.zeros((len(token_ids), max_len), np.int32)
  inputs[:, 0] = tokenizer.cls_id
  body = np.arange(max_len) - 1
  flat = np.concatenate([ids[:n] for ids, n in zip(token_ids, kept)] + [np.zeros(0, np.int32)])
  inputs[(body >= 0) & (body < kept[:, None])] = flat   # row-major: fills each row's token slots in order
  inputs[np.arange(len(kept)), kept + 1] = tokenizer.sep_id
  return inputs


_worker_tokenizer = None


def _start_worker(tokenizer) -> None:
  global _worker_tokenizer
  _worker_tokenizer = tokenizer
  if hasattr(tokenizer, 'encode_threads'):
    tokenizer.encode_threads = 1   # the processes are the parallelism


def _encode_in_worker(spec: dict, raw: list[bytes | str]):
  return _encode_chunk(_worker_tokenizer, spec, raw)


def _encoded(tokenizer, spec: dict, chunks: Iterator[tuple[list, list[int] | None]], workers: int) -> Iterator:
  """(arrays, TextStats, labels) of each (raw texts, labels) chunk, in order: in this process when workers == 1,
  else in `workers` processes, with a bounded number of chunks in flight."""
  if workers <= 1:
    for raw, labels in chunks:
      yield *_encode_chunk(tokenizer, spec, raw), labels
    return
  # fork: a spawned process would first import the parent's main module and JAX (seconds each). A forked child
  # runs only this module's numpy, re and tokenizer code, never JAX, whose threads it does not inherit: JAX's
  # warning that fork deadlocks multithreaded JAX code does not apply to it.
  pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('fork'),
                                                initializer=_start_worker, initargs=(tokenizer,))
  try:
    pending = collections.deque()
    for raw, labels in chunks:
      with warnings.catch_warnings():   # the first submit forks the workers
        warnings.filterwarnings('ignore', 'os.fork', RuntimeWarning)
        pending.append((pool.submit(_encode_in_worker, spec, raw), labels))
      if len(pending) >= _QUEUED_PER_WORKER * workers:
        future, labels = pending.popleft()
        yield *future.result(), labels
    while pending:
      future, labels = pending.popleft()
      yield *future.result(), labels
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


class _NpyWriter:
  """Appends arrays to one growing 1-D .npy file; the header gets the final length on close."""
  _HEADER_BYTES = 128   # fits any 1-D shape; np.load reads the header's padding as spaces

  def __init__(self, path: str, dtype):
    self.dtype, self.length = np.dtype(dtype), 0
    self._file = open(path, 'wb')
    self._file.write(self._header())

  def _header(self) -> bytes:
    d = {'descr': np.lib.format.dtype_to_descr(self.dtype), 'fortran_order': False, 'shape': (self.length,)}
    text = repr(d).encode('latin1')
    size = self._HEADER_BYTES - 10   # magic (6), version (2), header length (2)
    return b'\x93NUMPY\x01\x00' + size.to_bytes(2, 'little') + text.ljust(size - 1) + b'\n'

  def write(self, array: np.ndarray) -> None:
    self._file.write(np.ascontiguousarray(array, self.dtype).tobytes())
    self.length += len(array)

  def __enter__(self) -> '_NpyWriter':
    return self

  def __exit__(self, *exc) -> None:
    self._file.seek(0)
    self._file.write(self._header())
    self._file.close()
