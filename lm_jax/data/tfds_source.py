"""TFDS datasets without TensorFlow: array_record files read as random-access data sources, failing fast.

`open_splits` looks for the prepared dataset in data.tfds_data_dir (or TFDS's default, $TFDS_DATA_DIR or
~/tensorflow_datasets). When it is not there it raises at once if data.download is False, and otherwise first
checks within seconds that the download host is reachable, instead of letting TFDS retry for minutes offline.
Preparing runs TFDS's own builder with file_format='array_record'; archives are iterated with Python's tarfile /
zipfile because TFDS would open them through tf.io.gfile. The token cache of a TFDS dataset goes beside it, into
<data dir>/lm_jax_cache, unless data.cache_dir says otherwise.
"""

import logging
import os
import socket
import tarfile
import threading
import time
from typing import Iterator, NamedTuple
from unittest import mock
import zipfile

import tensorflow_datasets as tfds

from lm_jax.data import corpus as corpus_lib

log = logging.getLogger(__name__)
_PROBE_TIMEOUT_S = 3.0


def reachable(host: str, port: int, timeout: float = _PROBE_TIMEOUT_S) -> bool:
  """Whether a TCP connection to host:port opens within `timeout` (name resolution included)."""
  ok = []

  def probe():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      ok.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)   # getaddrinfo itself has no timeout
  thread.start()
  thread.join(timeout + 0.5)
  return bool(ok)


def _iter_archive(self, resource) -> Iterator[tuple[str, object]]:
  """DownloadManager.iter_archive over tar or zip files, without tf.io.gfile."""
  del self
  path = os.fspath(getattr(resource, 'path', resource))
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      for info in archive.infolist():
        if not info.is_dir():
          with archive.open(info) as f:
            yield info.filename, f
    return
  with tarfile.open(path, 'r:*') as archive:
    for member in archive:
      f = archive.extractfile(member) if member.isfile() else None
      if f is not None:
        yield member.name, f


def _not_there(name: str, builder, data_config, reason: str, prepare_needs: str) -> FileNotFoundError:
  needs = f', with {prepare_needs} installed' if prepare_needs else ''
  return FileNotFoundError(
      f'TFDS dataset {name!r} is not prepared in {builder.data_dir} (data.tfds_data_dir='
      f'{data_config.tfds_data_dir!r}; empty means $TFDS_DATA_DIR or ~/tensorflow_datasets) and {reason}. Either run '
      f'once on a machine with network and data.download=True{needs} (it prepares {name} as array_record), copy '
      'that data dir here and point data.tfds_data_dir at it; or train on your own files: data.name=text_files '
      '(or csv, jsonl) with data.paths=<glob>.')


class Splits(NamedTuple):
  """Opened TFDS splits: their documents, and what a Corpus needs to know about the dataset."""
  docs: dict[str, corpus_lib.Documents]
  identity: dict   # the builder's directory (name, config, version), its dataset_info.json mtime, the split sizes
  home: str        # <data dir>/lm_jax_cache


def open_splits(data_config, splits: tuple[str, ...], *, download_host: tuple[str, int], prepare_needs: str = ''
                ) -> Splits:
  """The TFDS data sources of `splits` for data.tfds_name, prepared first if allowed (see the module docstring).

  download_host: (host, port) the builder downloads from, probed before preparing;
  prepare_needs: packages the builder's preparation imports, named in the error when one is missing.
  """
  name = data_config.tfds_name
  # TFDS takes '~' literally (and would prepare into ./~/); data.paths and the shell expand it, so expand it here too.
  data_dir = os.path.expanduser(data_config.tfds_data_dir) or None
  builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    if not data_config.download:
      raise _not_there(name, builder, data_config, 'data.download=False', prepare_needs)
    if not reachable(*download_host):
      raise _not_there(name, builder, data_config,
                       f'its download host {download_host[0]}:{download_host[1]} is unreachable (no network?)',
                       prepare_needs)
    log.info('Preparing %s in %s (array_record); TFDS shows its own progress.', name, builder.data_dir)
    start = time.perf_counter()
    try:
      with mock.patch.object(tfds.download.DownloadManager, 'iter_archive', _iter_archive):
        builder.download_and_prepare(file_format='array_record')
    except ImportError as e:
      raise ImportError(f'Preparing {name} stopped at a missing package ({e}); it needs {prepare_needs or e.name}. '
                        'Install them, or prepare the dataset elsewhere and set data.tfds_data_dir.') from e
    log.info('Prepared %s in %.0fs: %s.', name, time.perf_counter() - start,
             ', '.join(f'{s} {info.num_examples} examples' for s, info in builder.info.splits.items()))
  available = set(builder.info.splits.keys())
  missing = [s for s in splits if available and s not in available]
  if missing:
    raise ValueError(f'{name} in {builder.data_dir} has splits {sorted(available)}, not {missing}.')
  docs = {s: TfdsDocuments(builder.as_data_source(split=s)) for s in splits}
  info_file = os.path.join(builder.data_dir, 'dataset_info.json')
  identity = {'tfds_dir': os.path.abspath(builder.data_dir), 'sizes': {s: len(d) for s, d in docs.items()},
              'info_mtime_ns': os.stat(info_file).st_mtime_ns if os.path.exists(info_file) else None}
  # data_dir is <root>/<name>[/<config>]/<version>: the cache goes into the root, shared by its datasets.
  root = os.path.abspath(builder.data_dir)
  for _ in range(len(builder.info.full_name.split('/'))):
    root = os.path.dirname(root)
  return Splits(docs, identity, os.path.join(root, 'lm_jax_cache'))


class TfdsDocuments:
  """A TFDS data source as `corpus.Documents` (features 'text' and, when present, 'label')."""

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def read(self, indices):
    records = self._source.__getitems__(indices)   # one batched read, not one per record
    labels = [int(r['label']) for r in records] if records and 'label' in records[0] else None
    return [r['text'] for r in records], labels

