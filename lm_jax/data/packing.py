"""Examples as rows of numpy arrays: fixed arrays (classification, mqar) or documents packed into rows (lm, mlm).

Packing concatenates the documents, each followed by eos, into one token stream and cuts it into rows of T tokens,
the last row padded with 0: every token is in exactly one row, and a document may continue in the next row.
Segment ids number the documents within a row from 1 (0 on padding); positions restart at 0 with each segment.
For lm, targets are the next token of the stream, and 0 with weight 0 where that token belongs to another document
or is past the end. T = 4, E = eos, three documents a, b, c:

  stream     a a a E b b E c c c c E
  inputs     [a a a E] [b b E c] [c c c E]
  segments   [1 1 1 1] [1 1 1 2] [1 1 1 1]
  positions  [0 1 2 3] [0 1 2 0] [0 1 2 3]
  targets    [a a E 0] [b E 0 c] [c c E 0]
  weights    [1 1 1 0] [1 1 0 1] [1 1 1 0]

For mlm, targets are the inputs themselves and `bert_mask` chooses the weighted (masked) positions.
"""

import math
from typing import Iterable, Protocol, Sequence

import numpy as np


class Rows(Protocol):
  """A split as rows: `take(idx)` returns a dict of arrays with leading axis len(idx), including 'weights'."""

  def __len__(self) -> int:
    ...

  def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    ...


class ArrayRows:
  """Rows stored as equally long arrays, e.g. {'inputs': [N, T], 'label': [N], 'weights': [N]}; `label_names`
  names the class ids of 'label' when the data names its classes (labels.py)."""

  def __init__(self, arrays: dict[str, np.ndarray], label_names: tuple[str, ...] | None = None):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or 'weights' not in arrays:
      raise ValueError(f'ArrayRows needs equally long arrays including weights, got sizes {sizes}.')
    self.arrays = arrays
    self.label_names = label_names

  def __len__(self) -> int:
    return len(self.arrays['weights'])

  def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in self.arrays.items()}


class PackedRows:
  """Documents packed into rows of `length` tokens (see the module docstring).

  tokens: the stream, every document followed by eos (uint16 when the vocabulary allows, else uint32);
  doc_ends: int64, exclusive end offset of each document in the stream (increasing, last == len(tokens)).
  Both may be memory-mapped (the token cache): `take` reads only the rows it returns and copies neither array.
  """

  def __init__(self, tokens: np.ndarray, doc_ends: np.ndarray, length: int, *, next_token_targets: bool):
    if len(doc_ends) and doc_ends[-1] != len(tokens):
      raise ValueError(f'doc_ends ends at {doc_ends[-1]}, the stream has {len(tokens)} tokens.')
    self.tokens, self.doc_ends, self.length = tokens, np.asarray(doc_ends, np.int64), length
    self.next_token_targets = next_token_targets

  def __len__(self) -> int:
    return -(-len(self.tokens) // self.length)

  def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    size = len(self.tokens)
    row_start_B = np.asarray(idx, np.int64) * self.length
    offset_BxT = row_start_B[:, None] + np.arange(self.length)
    real_BxT = offset_BxT < size
    doc_BxT = np.searchsorted(self.doc_ends, offset_BxT, side='right')   # past the end: len(doc_ends)
    doc_BxT = np.minimum(doc_BxT, len(self.doc_ends) - 1)
    inputs = np.where(real_BxT, self.tokens[np.minimum(offset_BxT, size - 1)], 0).astype(np.int32)
    segment_ids = np.where(real_BxT, doc_BxT - doc_BxT[:, :1] + 1, 0).astype(np.int32)
    doc_start_BxT = np.where(doc_BxT > 0, self.doc_ends[np.maximum(doc_BxT - 1, 0)], 0)
    seg_start_BxT = np.maximum(doc_start_BxT, row_start_B[:, None])
    positions = np.where(real_BxT, offset_BxT - seg_start_BxT, 0).astype(np.int32)
    batch = {'inputs': inputs, 'segment_ids': segment_ids, 'positions': positions}
    if self.next_token_targets:
      has_next_BxT = real_BxT & (offset_BxT + 1 < self.doc_ends[doc_BxT])
      batch['targets'] = np.where(has_next_BxT, self.tokens[np.minimum(offset_BxT + 1, size - 1)], 0
                                  ).astype(np.int32)
      batch['weights'] = has_next_BxT.astype(np.float32)
    else:
      batch['targets'] = inputs.copy()
      batch['weights'] = np.zeros(inputs.shape, np.float32)
    return batch


def token_dtype(vocab_size: int) -> type:
  """The smallest unsigned type that holds every id of the vocabulary."""
  return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def pack(chunks: Iterable[Sequence[Sequence[int]]], eos_id: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(stream, doc_ends) of the non-empty documents in `chunks` (sequences of token id lists or arrays), each
  followed by eos; empty when there are none."""
  dtype = token_dtype(vocab_size)
  docs = [ids for chunk in chunks for ids in chunk if len(ids)]
  if not docs:
    return np.zeros(0, dtype), np.zeros(0, np.int64)
  eos = np.array([eos_id], dtype)
  # 'unsafe': int32 or Python ids into uint16/uint32, which hold every id of the vocabulary.
  stream = np.concatenate([part for ids in docs for part in (ids, eos)], dtype=dtype, casting='unsafe')
  return stream, np.cumsum(np.fromiter(map(len, docs), np.int64, len(docs)) + 1)


def max_predictions(max_len: int, probability: float, setting: int) -> int:
  """Masked positions per row at most (BERT's max_predictions_per_seq): `setting` when > 0, none (0) when 0, and
  for -1 the mean plus three standard deviations of the Binomial(max_len, probability) count, so that the cap
  changes about one row in a thousand."""
  if setting < -1:
    raise ValueError(f'data.max_predictions_per_seq={setting}: give a count > 0, 0 (no cap) or -1 (automatic).')
  if setting != -1:
    return setting
  mean = max_len * probability
  return min(max_len, math.ceil(mean + 3 * math.sqrt(mean * (1 - probability))))


def bert_mask(batch: dict[str, np.ndarray], rng: np.random.Generator, *, probability: float, mask_id: int,
              maskable: np.ndarray, random_ids: np.ndarray, global_batch: int, rows: slice, max_predictions: int = 0
              ) -> dict[str, np.ndarray]:
  """BERT masking of `batch['inputs']` (targets stay the original ids): each maskable token is chosen with
  `probability`; a chosen token becomes mask_id (80%), a random regular id (10%) or stays (10%); weights = chosen.
  With `max_predictions` > 0 a row keeps at most that many chosen tokens (those drawn with the smallest numbers: a
  uniform choice among them), so the loss can gather them (`steps.loss_sums`).

  maskable: bool [vocab], True for tokens that may be chosen (text tokens, not specials or padding);
  random_ids: the ids a random replacement draws from. The random numbers are drawn for the whole global batch
  (`global_batch` rows) and `rows` picks this process's share, so the masks do not depend on the process count.
  """
  global_shape = (global_batch, batch['inputs'].shape[1])
  choose, kind = rng.random(global_shape)[rows], rng.random(global_shape)[rows]
  replacement = random_ids[rng.integers(len(random_ids), size=global_shape)[rows]]
  inputs = batch['inputs']
  chosen = maskable[inputs] & (choose < probability)
  if 0 < max_predictions < chosen.shape[1]:
    drawn = np.where(chosen, choose, np.inf)
    chosen &= drawn <= np.sort(drawn, axis=1)[:, max_predictions - 1:max_predictions]
  masked = np.where(chosen & (kind < 0.8), mask_id, inputs)
  masked = np.where(chosen & (kind >= 0.8) & (kind < 0.9), replacement, masked)
  return {**batch, 'inputs': masked.astype(np.int32), 'weights': chosen.astype(np.float32)}
