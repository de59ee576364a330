"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology"), a synthetic lm task.

It measures how well a sequence mixer recalls key-value pairs seen earlier in the sequence: the offline research
task for transformer-vs-RNN ablations. Each example is data.mqar.num_pairs key-value pairs, then
data.mqar.num_queries of those keys again, at random non-overlapping places in the rest of the sequence, each
followed by its value; everything else is pad (0). Inputs are the sequence, targets the next token, and only the
query positions are scored (weight 1): the model must answer a queried key with the value it was paired with.

Vocabulary (V = data.vocab_size): ids 0..5 are the specials of tokenizers.py, keys k0..k{K-1} are ids 6..5+K and
values v0..v{K-1} follow, K = (V - 6) // 2. Worked example, V = 16 (K = 5), num_pairs = 2, num_queries = 2,
data.max_len = 10, pairs k1→v2 and k3→v0, queries at positions 6 and 8:

  sequence  k1 v2 k3 v0 -  -  k3 v0 k1 v2 -     (- = pad; length max_len + 1)
  inputs    k1 v2 k3 v0 -  -  k3 v0 k1 v2       ids 7 13 9 11 0 0 9 11 7 13
  targets   v2 k3 v0 -  -  k3 v0 k1 v2 -
  weights   0  0  0  0  0  0  1  0  1  0

Keys within an example are distinct and in random order, values are drawn with replacement, and the queried keys
are distinct. 'train' (data.mqar.num_train examples) and 'validation' (num_eval) come from separate random streams
seeded by [config.seed, 0, split] (tag 0 of pipeline.py's streams), so the same seed gives the same examples on
every machine.
"""

import numpy as np

from lm_jax.data import packing
from lm_jax.data import pipeline
from lm_jax.data import tokenizers

_FIRST = tokenizers.SymbolTokenizer.num_specials
_CHUNK = 1024   # examples generated at once: bounds the [chunk, K] random draw used to pick distinct keys


def symbols(vocab_size: int) -> list[str]:
  """The vocabulary: specials, keys k0.., values v0.. (and '<unused>' when vocab_size - 6 is odd)."""
  num_keys = (vocab_size - _FIRST) // 2
  spare = ['<unused>'] * ((vocab_size - _FIRST) % 2)
  return (list(tokenizers.SPECIAL_PIECES) + [f'k{i}' for i in range(num_keys)] + [f'v{i}' for i in range(num_keys)]
          + spare)


def generate(num_examples: int, *, vocab_size: int, length: int, num_pairs: int, num_queries: int,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
  """{'inputs', 'targets': int32 [N, length], 'weights': float32 [N, length]}; see the module docstring."""
  num_keys = (vocab_size - _FIRST) // 2
  if not 1 <= num_queries <= num_pairs <= num_keys:
    raise ValueError(f'Need 1 <= data.mqar.num_queries ({num_queries}) <= num_pairs ({num_pairs}) <= the '
                     f'{num_keys} keys that data.vocab_size={vocab_size} allows.')
  num_slots = (length + 1 - 2 * num_pairs) // 2
  if num_slots < num_queries:
    raise ValueError(f'data.max_len={length} has room for {max(num_slots, 0)} queries after {num_pairs} pairs, '
                     f'not data.mqar.num_queries={num_queries}.')
  seq = np.zeros((num_examples, length + 1), np.int32)
  weights = np.zeros((num_examples, length), np.float32)
  for start in range(0, num_examples, _CHUNK):
    n = min(_CHUNK, num_examples - start)
    rows = np.arange(start, start + n)[:, None]
    draw = rng.random((n, num_keys))
    keys = np.argpartition(draw, num_pairs - 1, axis=1)[:, :num_pairs]   # a uniform random set of distinct keys
    keys = np.take_along_axis(keys, np.argsort(np.take_along_axis(draw, keys, 1), 1), 1)   # in random order
    values = rng.integers(0, num_keys, (n, num_pairs))
    queried = np.argsort(rng.random((n, num_pairs)), 1)[:, :num_queries]
    slots = np.sort(np.argsort(rng.random((n, num_slots)), 1)[:, :num_queries], 1)
    seq[rows, np.arange(0, 2 * num_pairs, 2)] = _FIRST + keys
    seq[rows, np.arange(1, 2 * num_pairs, 2)] = _FIRST + num_keys + values
    at = 2 * num_pairs + 2 * slots
    seq[rows, at] = _FIRST + np.take_along_axis(keys, queried, 1)
    seq[rows, at + 1] = _FIRST + num_keys + np.take_along_axis(values, queried, 1)
    weights[rows, at] = 1
  return {'inputs': seq[:, :-1], 'targets': seq[:, 1:], 'weights': weights}


def build(data_config, *, task: str, seed: int, tokenizer_dir: str) -> pipeline.Data:
  """MQAR Data for task 'lm' with splits 'train' and 'validation'."""
  del task   # the registry admits only 'lm'
  vocab = symbols(data_config.vocab_size)
  tok = tokenizers.load_or_make(tokenizer_dir, tokenizers.SymbolTokenizer.kind,
                                lambda: tokenizers.SymbolTokenizer(vocab))
  if tok.vocab_size != len(vocab):
    raise ValueError(f'{tokenizer_dir} holds an mqar vocabulary of {tok.vocab_size} symbols, but data.vocab_size='
                     f'{data_config.vocab_size}: use the run\'s configuration or a new workdir.')
  cfg = data_config.mqar

  def split(num_examples: int, stream: int):
    return lambda: packing.ArrayRows(generate(
        num_examples, vocab_size=data_config.vocab_size, length=data_config.max_len, num_pairs=cfg.num_pairs,
        num_queries=cfg.num_queries, rng=np.random.default_rng([seed, 0, stream])))

  return pipeline.Data(tok, {'train': split(cfg.num_train, 0), 'validation': split(cfg.num_eval, 1)},
                       task='lm', seed=seed)


SOURCE = pipeline.Source(('lm',), build)
