"""The data object the trainer uses: tokenized splits as rows, shuffled per epoch and batched through grain.

Training order: each epoch visits the rows in a fresh permutation drawn from (config.seed, epoch), cut into
global batches (the remainder of each epoch is dropped), forever; each process builds only its share of every global
batch. The iterator is grain's over the global batch index, so `get_state()` / `set_state()` resume at exactly the
next batch. MLM masks are drawn per global batch from (seed, batch index): resumed runs and any process count see
the same masks. Evaluation visits a split in its stored order; the last batch is filled up with copies of row 0
whose weights are 0, so every batch has the same shape.

Random streams are keyed [seed, tag, index] with one tag per purpose: numpy pads keys with zeros ([s] draws what
[s, 0, 0] draws), so keys of one length and distinct tags keep purposes apart; tag 0 is left to sources that generate
examples (mqar). The permutation is numpy's, not grain's `shuffle`: that one permutes index by index in Python, which
costs more than assembling the batch, and seeds epoch e with seed + e, so a run with seed s + 1 would replay the
epochs of seed s.

A split's rows are made on first use: text splits are memory-mapped from the token cache (cache.py), tokenized into
it first when it does not exist yet, so a batch reads only its own rows from disk.
"""

import dataclasses
import functools
import logging
from typing import Callable

import grain
import jax
import numpy as np

from lm_jax.data import cache
from lm_jax.data import corpus as corpus_lib
from lm_jax.data import packing
from lm_jax.data import tokenizers

log = logging.getLogger(__name__)

TASKS = ('classification', 'lm', 'mlm')
# Enough to overlap batch assembly with the train step without holding many batches in memory.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
_ORDER, _TRAIN_MASKS, _EVAL_MASKS = 1, 2, 3   # stream tags; eval split i uses _EVAL_MASKS + i


@functools.lru_cache(maxsize=2)   # the current epoch, and the next while prefetching across the boundary
def _epoch_order(seed: int, num_rows: int, epoch: int) -> np.ndarray:
  """The permutation of the training rows that epoch `epoch` visits."""
  return np.random.default_rng([seed, _ORDER, epoch]).permutation(num_rows)


@dataclasses.dataclass(frozen=True)
class Source:
  """A registered dataset: the tasks it serves and how to build its Data."""
  tasks: tuple[str, ...]
  make_data: Callable[..., 'Data']   # (data_config, *, task, seed, tokenizer_dir) -> Data


class Data:
  """Splits of one dataset for one task, with its tokenizer; see the module docstring."""

  def __init__(self, tokenizer, splits: dict[str, Callable[[], packing.Rows]], *, task: str, seed: int,
               mlm_probability: float = 0.15, max_predictions: int = 0,
               stats: dict[str, corpus_lib.TextStats] | None = None,
               documents: Callable[[str], tuple[list[str], np.ndarray | None]] | None = None):
    if 'train' not in splits:
      raise ValueError(f'Data needs a train split, got {list(splits)}.')
    if seed < 0:
      raise ValueError(f'config.seed={seed} must be >= 0: it keys numpy random streams.')
    self.tokenizer = tokenizer
    self.task = task
    self.eval_splits = tuple(s for s in splits if s != 'train')
    self.stats = {} if stats is None else stats   # split -> TextStats, filled in as text splits are read
    self._seed = seed
    self._make = splits
    self._documents = documents
    self._rows: dict[str, packing.Rows] = {}
    self._mask = None
    if task == 'mlm':
      if not 0 < mlm_probability < 1:
        raise ValueError(f'data.mlm_probability={mlm_probability} must be in (0, 1).')
      maskable = tokenizer.token_bytes() > 0
      self._mask = functools.partial(packing.bert_mask, probability=mlm_probability, mask_id=tokenizer.mask_id,
                                     maskable=maskable, random_ids=np.flatnonzero(maskable),
                                     max_predictions=max_predictions)

  def rows(self, split: str) -> packing.Rows:
    """The rows of `split`, tokenized on first use."""
    if split not in self._make:
      raise ValueError(f'Unknown split {split!r}; this dataset has {list(self._make)}.')
    if split not in self._rows:
      self._rows[split] = self._make[split]()
      log.info('Split %s: %d rows.', split, len(self._rows[split]))
    return self._rows[split]

  def documents(self, split: str) -> tuple[list[str], np.ndarray | None]:
    """The cleaned texts of `split` and their labels (None when unlabelled), read from the source: for baselines
    that need the text itself. Raises ValueError for data that is not text (mqar)."""
    if self._documents is None:
      raise ValueError('This dataset has no texts to read (it is generated as token ids).')
    return self._documents(split)

  def num_examples(self, split: str) -> int:
    return len(self.rows(split))

  def num_labels(self) -> int:
    """The number of classes: the class names' count when the data names them, else 1 + the largest label in any
    split (classification); model.num_classes follows it when left at 0."""
    if self.task != 'classification':
      raise ValueError(f'num_labels() is for classification data, not {self.task!r}.')
    if self.label_names is not None:
      return len(self.label_names)
    return 1 + max(int(self.rows(split).arrays['label'].max(initial=-1)) for split in self._make)

  @property
  def label_names(self) -> tuple[str, ...] | None:
    """The class names of a classification dataset that names them (labels.py), else None."""
    return getattr(self.rows('train'), 'label_names', None) if self.task == 'classification' else None

  def steps_per_epoch(self, batch_size: int) -> int:
    """Training batches per epoch; the remainder of each epoch is dropped."""
    self._local_rows(batch_size)
    num_rows = self.num_examples('train')
    if num_rows < batch_size:
      raise ValueError(f'Batch size {batch_size} exceeds the {num_rows} training examples.')
    return num_rows // batch_size

  def _local_rows(self, batch_size: int) -> slice:
    """This process's rows of a global batch."""
    processes = jax.process_count()
    if batch_size <= 0 or batch_size % processes:
      raise ValueError(f'Batch size {batch_size} must be positive and divisible by the process count {processes}.')
    local = batch_size // processes
    return slice(jax.process_index() * local, (jax.process_index() + 1) * local)

  def _batch(self, rows: packing.Rows, idx: np.ndarray, real: np.ndarray, rng_key: list[int], global_batch: int,
             local: slice) -> dict[str, np.ndarray]:
    batch = rows.take(np.where(real, idx, 0))
    if self._mask:
      batch = self._mask(batch, np.random.default_rng(rng_key), global_batch=global_batch, rows=local)
    weights = batch['weights']
    batch['weights'] = weights * real.reshape(-1, *[1] * (weights.ndim - 1)).astype(np.float32)
    return batch

  def _train_batch(self, rows, global_batch: int, local: slice, steps_per_epoch: int, step: int, k: int):
    """Global batch `step`, the k-th of its epoch."""
    order = _epoch_order(self._seed, len(rows), step // steps_per_epoch)
    idx = order[k * global_batch:(k + 1) * global_batch][local]
    return self._batch(rows, idx, np.ones(len(idx), bool), [self._seed, _TRAIN_MASKS, step], global_batch, local)

  def train_iterator(self, batch_size: int) -> grain.DatasetIterator:
    """Infinite iterator of this process's share of each global training batch; see the module docstring."""
    local = self._local_rows(batch_size)
    steps = self.steps_per_epoch(batch_size)
    ds = grain.MapDataset.range(steps).repeat()
    ds = ds.map_with_index(functools.partial(self._train_batch, self.rows('train'), batch_size, local, steps))
    return iter(ds.to_iter_dataset(_READ_OPTIONS))

  def _eval_batch(self, rows, split_no: int, global_batch: int, local: slice, k: int):
    idx = k * global_batch + np.arange(local.start, local.stop)
    mask_key = [self._seed, _EVAL_MASKS + split_no, k]
    return self._batch(rows, idx, idx < len(rows), mask_key, global_batch, local)

  def eval_batches(self, split: str, batch_size: int) -> grain.IterDataset:
    """Finite iterable over `split` in its stored order; every batch full, filler rows weighted 0."""
    local = self._local_rows(batch_size)
    rows = self.rows(split)
    split_no = list(self._make).index(split)
    num_batches = -(-len(rows) // batch_size)
    ds = grain.MapDataset.range(num_batches)
    ds = ds.map(functools.partial(self._eval_batch, rows, split_no, batch_size, local))
    return ds.to_iter_dataset(_READ_OPTIONS)


def text_data(corpus: corpus_lib.Corpus, data_config, *, task: str, seed: int, tokenizer_dir: str) -> Data:
  """Data for `task` over a text corpus, its splits read from the token cache; the tokenizer is loaded from, or
  built and saved into, tokenizer_dir (a trained SentencePiece model also into the cache, for other runs)."""
  if task == 'classification' and not corpus.labelled:
    raise ValueError(f'data.name={data_config.name!r} has no labels here; classification needs labelled data.')
  cache_root = cache.root(data_config, corpus)
  tokenizer = tokenizers.get(
      data_config, tokenizer_dir,
      lambda: corpus_lib.sample_texts(corpus.views()['train'], data_config.tokenizer_train_docs),
      trained_dir=cache.trained_tokenizer_dir(cache_root, corpus, data_config))
  stats = {}

  def make(split: str) -> packing.Rows:
    rows, stats[split] = cache.split_rows(cache_root, corpus, split, tokenizer, task=task,
                                          max_len=data_config.max_len)
    return rows

  def documents(split: str) -> tuple[list[str], np.ndarray | None]:
    texts, labels, ignored = [], [], corpus_lib.TextStats()
    for raw, chunk_labels in corpus_lib.raw_chunks(corpus.views()[split]):
      texts += [corpus_lib.clean_text(r, ignored) for r in raw]
      labels += chunk_labels or []
    return texts, np.asarray(labels, np.int32) if corpus.labelled else None

  return Data(tokenizer, {s: functools.partial(make, s) for s in corpus.split_names}, task=task, seed=seed,
              mlm_probability=data_config.mlm_probability, stats=stats, documents=documents,
              max_predictions=packing.max_predictions(data_config.max_len, data_config.mlm_probability,
                                                      data_config.max_predictions_per_seq))


def corpus_source(tasks: tuple[str, ...], read_corpus: Callable[..., corpus_lib.Corpus]) -> Source:
  """A Source whose Data is `text_data` over `read_corpus(data_config, task)`."""
  def make_data(data_config, *, task: str, seed: int, tokenizer_dir: str) -> Data:
    return text_data(read_corpus(data_config, task), data_config, task=task, seed=seed, tokenizer_dir=tokenizer_dir)
  return Source(tasks, make_data)
