"""Builds the token caches of an experiment ahead of time, for example on a CPU machine before a GPU job.

  python -m lm_jax.tools.prepare_data --config experiments/wikipedia_lm.py
  python -m lm_jax.tools.prepare_data --config experiments/wikipedia_lm.py --config.data.cache_dir=/data/lm_jax_cache \
      --tokenizer_dir runs/wikipedia_lm/tokenizer

Loads (or prepares) config.data, trains its tokenizer when needed, then tokenizes every split for config.model.task
into the token cache (see cache.py; data.cache_dir, or beside the dataset). A trained SentencePiece model lands in
the cache too, where every run over the same data finds it; --tokenizer_dir also saves the tokenizer there (a run's
WORKDIR/tokenizer). A run started afterwards builds nothing: it reads the caches and starts at once.
"""

import tempfile

from absl import app
from absl import flags
from ml_collections import config_flags

from lm_jax import process

config_flags.DEFINE_config_file('config', None, 'Experiment config: experiments/NAME.py[:variant].', lock_config=True)
_TOKENIZER_DIR = flags.DEFINE_string('tokenizer_dir', '', 'Also save the tokenizer here (e.g. WORKDIR/tokenizer); '
                                     'default: only the cache keeps a trained one.')


def main(argv):
  process.start(argv)
  from lm_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  with tempfile.TemporaryDirectory() as tmp:
    data = data_lib.get_dataset(config.data, task=config.model.task, seed=config.seed,
                                tokenizer_dir=_TOKENIZER_DIR.value or tmp)
    for split in ('train',) + data.eval_splits:
      print(f'{config.data.name} {split}: {data.num_examples(split)} {config.model.task} rows of '
            f'{config.data.max_len} tokens')


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
