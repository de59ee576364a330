"""How fast the input pipeline delivers training batches, without a model.

  python -m lm_jax.tools.data_throughput --config experiments/imdb.py --batches 200
  python -m lm_jax.tools.data_throughput --config experiments/recall.py --config.train.batch_size=256

Builds config.data for config.model.task (reading the training split from its token cache, tokenizing it into the
cache first when there is none; the time is printed), then times --batches training batches of
config.train.batch_size after one warm-up batch, and prints batches/s, positions/s (B·T slots) and tokens/s (non-pad
inputs). --tokenizer_dir reuses a run's tokenizer (e.g. runs/imdb/tokenizer); by default a temporary directory is
used, and a SentencePiece model comes from the cache or is trained anew (its time included). To time tokenizing,
point --config.data.cache_dir at an empty directory.
"""

import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from lm_jax import data as data_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_BATCHES = flags.DEFINE_integer('batches', 100, 'Training batches to time.')
_TOKENIZER_DIR = flags.DEFINE_string('tokenizer_dir', '', 'Tokenizer to load or save; default: a temporary dir.')


def measure(data: data_lib.Data, batch_size: int, num_batches: int) -> dict[str, float]:
  """Times `num_batches` training batches after a warm-up batch; rates per second and the totals counted."""
  batches = data.train_iterator(batch_size)
  next(batches)
  positions = tokens = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    inputs = next(batches)['inputs']
    positions += inputs.size
    tokens += int(np.count_nonzero(inputs))
  seconds = time.perf_counter() - start
  return {'batches_per_s': num_batches / seconds, 'positions_per_s': positions / seconds,
          'tokens_per_s': tokens / seconds, 'positions': positions, 'tokens': tokens, 'seconds': seconds}


def main(argv):
  del argv
  config = _CONFIG.value
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    data = data_lib.get_dataset(config.data, task=config.model.task, seed=config.seed,
                                tokenizer_dir=_TOKENIZER_DIR.value or tmp)
    examples = data.num_examples('train')
    built = time.perf_counter() - start
    result = measure(data, config.train.batch_size, _BATCHES.value)
  print(f'{config.data.name} ({config.model.task}): {examples} training examples of {config.data.max_len} tokens, '
        f'built or read from the token cache in {built:.1f}s')
  print(f'{_BATCHES.value} batches of {config.train.batch_size} in {result["seconds"]:.2f}s: '
        f'{result["batches_per_s"]:.1f} batches/s, {result["positions_per_s"]:,.0f} positions/s, '
        f'{result["tokens_per_s"]:,.0f} tokens/s (non-pad)')


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
