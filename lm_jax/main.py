"""Train or evaluate a model from an experiment config.

  python -m lm_jax.main --config experiments/imdb.py --workdir runs/imdb [--config.optim.learning_rate=1e-4]

The config is locked: a misspelled key or a value of the wrong type is an error before anything is built. Running the
same command on an existing workdir resumes it; a finished run is not retrained.
"""

import logging

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Experiment config: experiments/NAME.py[:variant].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: config, tokenizer, checkpoints, metrics, results.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'],
                  'train: train (or resume) then evaluate; evaluate: evaluate the latest checkpoint of the workdir.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Our progress at INFO; the libraries (Orbax logs every file it writes) only from WARNING up.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('lm_jax').setLevel(logging.INFO)
  # Imported here so that flag and config errors are reported before JAX and TFDS load.
  from lm_jax import configs  # pylint: disable=g-import-not-at-top
  try:
    configs.validate(FLAGS.config)
  except ValueError as e:
    raise SystemExit(f'lm_jax.main: {e}') from None
  from lm_jax import train  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.evaluate_workdir(FLAGS.config, FLAGS.workdir)
  except FileNotFoundError as e:  # missing data or checkpoints: the message says what to do
    raise SystemExit(f'lm_jax.main: {e}') from None


if __name__ == '__main__':
  app.run(main)
