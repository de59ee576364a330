"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology"), a synthetic lm task.

It measures how well a sequence mixer recalls key-value pairs seen earlier in the sequence: the offline research
task for transformer-vs-RNN ablations. Each example is data.mqar.num_pairs key-value pairs, then
data.mqar.num_queries of those keys again, at random non-overlapping places in the rest of the sequence; everything
else is pad (0). Targets are the next token of the sequence in which each query is followed by its value, and only
the query positions are scored (weight 1): the model must answer a queried key with the value it was paired with.
As in Zoology, the inputs hide the answers (pad after each query): a model that saw them could score 35% on 8 pairs
without recalling anything, by answering with a value not yet asked for, and training stalls in that shortcut.

Vocabulary (V = data.vocab_size): ids 0..5 are the specials of tokenizers.py, keys k0..k{K-1} are ids 6..5+K and
values v0..v{K-1} follow, K = (V - 6) // 2. Worked example, V = 16 (K = 5), num_pairs = 2, num_queries = 2,
data.max_len = 10, pairs k1→v2 and k3→v0, queries at positions 6 and 8:

  sequence  k1 v2 k3 v0 -  -  k3 v0 k1 v2 -     (- = pad; length max_len + 1)
  inputs    k1 v2 k3 v0 -  -  k3 -  k1 -        ids 7 13 9 11 0 0 9 0 7 0
  targets   v2 k3 v0 -  -  k3 v0 k1 v2 -
  weights   0  0  0  0  0  0  1  0  1  0

Keys within an example are distinct and in random order, values are drawn with replacement, and the queried keys
are distinct. Examples are generated on use, as in Zoology: example i of a split is a function of its own uniform
draws, from numpy's stream [config.seed, 0, split, i] (tag 0 of pipeline.py's streams; split 0 = 'train',
1 = 'validation'), so it is the same on every machine and for any process count, and resuming replays it exactly.
'train' has data.mqar.num_train examples: a run that sees at most that many (num_steps × batch_size) never sees one
twice, so it cannot memorize a fixed set. 'validation' is a fixed held-out set of num_eval examples.
"""

import numpy as np

from lm_jax.data import packing
from lm_jax.data import pipeline
from lm_jax.data import tokenizers

_FIRST = tokenizers.SymbolTokenizer.num_specials
SPLITS = ('train', 'validation')   # index = the split's number in the random stream key


def symbols(vocab_size: int) -> list[str]:
  """The vocabulary: specials, keys k0.., values v0.. (and '<unused>' when vocab_size - 6 is odd)."""
  num_keys = (vocab_size - _FIRST) // 2
  spare = ['<unused>'] * ((vocab_size - _FIRST) % 2)
  return (list(tokenizers.SPECIAL_PIECES) + [f'k{i}' for i in range(num_keys)] + [f'v{i}' for i in range(num_keys)]
          + spare)


class Spec:
  """The shape of an example (vocabulary, length, pairs, queries), checked once; see the module docstring."""

  def __init__(self, *, vocab_size: int, length: int, num_pairs: int, num_queries: int):
    self.num_keys = (vocab_size - _FIRST) // 2
    if not 1 <= num_queries <= num_pairs <= self.num_keys:
      raise ValueError(f'Need 1 <= data.mqar.num_queries ({num_queries}) <= num_pairs ({num_pairs}) <= the '
                       f'{self.num_keys} keys that data.vocab_size={vocab_size} allows.')
    self.num_slots = (length + 1 - 2 * num_pairs) // 2   # places a query (key, value) can start after the pairs
    if self.num_slots < num_queries:
      raise ValueError(f'data.max_len={length} has room for {max(self.num_slots, 0)} queries after {num_pairs} '
                       f'pairs, not data.mqar.num_queries={num_queries}.')
    self.length, self.num_pairs, self.num_queries = length, num_pairs, num_queries
    # Uniform draws per example: a sort key per key (which keys, in which order), then per pair its value and
    # whether it is queried, then a sort key per slot (where the queries go).
    self.num_draws = self.num_keys + 2 * num_pairs + self.num_slots

  def examples(self, uniform_NxD: np.ndarray) -> dict[str, np.ndarray]:
    """{'inputs', 'targets': int32 [N, length], 'weights': float32 [N, length]}: row n made from uniform_NxD[n]."""
    n, k, p, q = len(uniform_NxD), self.num_keys, self.num_pairs, self.num_queries
    key_draw, value_draw, query_draw, slot_draw = np.split(uniform_NxD, [k, k + p, k + 2 * p], axis=1)
    keys = np.argpartition(key_draw, p - 1, axis=1)[:, :p]   # a uniform random set of distinct keys
    keys = np.take_along_axis(keys, np.argsort(np.take_along_axis(key_draw, keys, 1), 1), 1)   # in random order
    values = np.minimum((value_draw * k).astype(np.int64), k - 1)   # with replacement
    queried = np.argsort(query_draw, 1)[:, :q]
    slots = np.sort(np.argsort(slot_draw, 1)[:, :q], 1)
    rows = np.arange(n)[:, None]
    seq = np.zeros((n, self.length + 1), np.int32)
    seq[rows, np.arange(0, 2 * p, 2)] = _FIRST + keys
    seq[rows, np.arange(1, 2 * p, 2)] = _FIRST + k + values
    at = 2 * p + 2 * slots
    seq[rows, at] = _FIRST + np.take_along_axis(keys, queried, 1)
    seq[rows, at + 1] = _FIRST + k + np.take_along_axis(values, queried, 1)
    weights = np.zeros((n, self.length), np.float32)
    weights[rows, at] = 1
    inputs = seq[:, :-1].copy()
    shown = at + 1 < self.length   # answers in the inputs (the last position's is past them)
    inputs[np.broadcast_to(rows, at.shape)[shown], at[shown] + 1] = 0   # hidden, as in Zoology
    return {'inputs': inputs, 'targets': seq[:, 1:], 'weights': weights}


def generate(num_examples: int, *, vocab_size: int, length: int, num_pairs: int, num_queries: int,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
  """`num_examples` examples from one generator; see the module docstring."""
  spec = Spec(vocab_size=vocab_size, length=length, num_pairs=num_pairs, num_queries=num_queries)
  return spec.examples(rng.random((num_examples, spec.num_draws)))


class StreamRows:
  """packing.Rows of `num_examples` examples generated on use: row i from numpy's stream [seed, 0, split, i]."""

  def __init__(self, spec: Spec, num_examples: int, *, seed: int, split: int):
    self.spec, self._num_examples, self._key = spec, num_examples, [seed, 0, split]

  def __len__(self) -> int:
    return self._num_examples

  def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    idx = np.asarray(idx, np.int64)
    if idx.size and not (0 <= idx.min() and idx.max() < self._num_examples):
      raise IndexError(f'Rows {idx.min()}..{idx.max()} asked of a split with {self._num_examples} examples.')
    uniform_NxD = np.empty((len(idx), self.spec.num_draws))
    for n, i in enumerate(idx.tolist()):
      uniform_NxD[n] = np.random.default_rng(self._key + [i]).random(self.spec.num_draws)
    return self.spec.examples(uniform_NxD)


def make_data(data_config, *, task: str, seed: int, tokenizer_dir: str) -> pipeline.Data:
  """MQAR Data for task 'lm' with splits 'train' (generated on use) and 'validation' (generated once)."""
  del task   # the registry admits only 'lm'
  vocab = symbols(data_config.vocab_size)
  tok = tokenizers.load_or_make(tokenizer_dir, tokenizers.SymbolTokenizer.kind,
                                lambda: tokenizers.SymbolTokenizer(vocab))
  if tok.vocab_size != len(vocab):
    raise ValueError(f'{tokenizer_dir} holds an mqar vocabulary of {tok.vocab_size} symbols, but data.vocab_size='
                     f'{data_config.vocab_size}: use the run\'s configuration or a new workdir.')
  cfg = data_config.mqar
  spec = Spec(vocab_size=data_config.vocab_size, length=data_config.max_len, num_pairs=cfg.num_pairs,
              num_queries=cfg.num_queries)
  train = StreamRows(spec, cfg.num_train, seed=seed, split=SPLITS.index('train'))
  validation = StreamRows(spec, cfg.num_eval, seed=seed, split=SPLITS.index('validation'))
  # Validation is read every evaluation: generate it once and keep it.
  return pipeline.Data(tok, {'train': lambda: train,
                             'validation': lambda: packing.ArrayRows(validation.take(np.arange(cfg.num_eval)))},
                       task='lm', seed=seed)


SOURCE = pipeline.Source(('lm',), make_data)
