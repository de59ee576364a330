"""Train or evaluate a model from an experiment config.

  python -m lm_jax.main --config experiments/imdb.py --workdir runs/imdb [--config.optim.learning_rate=1e-4]

The config file is Python and is executed: load only files you trust. The config is locked: a misspelled key or a
value of the wrong type is an error before anything is built. Running the same command on an existing workdir
resumes it; a finished run is not retrained. SIGTERM or Ctrl-C saves a checkpoint and exits with code 75.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from lm_jax import process

config_flags.DEFINE_config_file('config', None, 'Experiment config: experiments/NAME.py[:variant].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: config, tokenizer, checkpoints, metrics, results.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'],
                  'train: train (or resume) then evaluate; evaluate: evaluate the latest checkpoint of the workdir.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0, the same on every host. '
                    'Unset with config.distributed=True: JAX reads it from SLURM, Open MPI or TPU environments.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: the number of processes (one per host).')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process\'s index, 0..num_processes-1.')
flags.DEFINE_integer('heartbeat_timeout', 60, 'Multi-host: seconds after which a silent process counts as dead and '
                     'the others stop with an error.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS

EXIT_PREEMPTED = 75   # EX_TEMPFAIL: stopped by a signal after saving; run the same command again
# User errors: bad config values, missing data or checkpoints, unwritable or full disks, a diverged run. Each message
# names the bad value and what to do, so it is printed as one line without a traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def initialize_distributed(config) -> None:
  """Joins the multi-host job before anything touches a device; a no-op for a single process."""
  if not (config.distributed or FLAGS.coordinator_address):
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')   # CPU hosts; GPUs and TPUs use their own
  jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                             heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)


def run(config, workdir: str, mode: str) -> int:
  """Validates, then trains or evaluates; returns the exit code. User errors exit with one line naming the cause."""
  # Imported here so that flag and config errors are reported before JAX and TFDS load.
  from lm_jax import configs  # pylint: disable=g-import-not-at-top
  try:
    configs.validate(config)
    from lm_jax import train  # pylint: disable=g-import-not-at-top
    try:
      if mode == 'train':
        train.train_and_evaluate(config, workdir)
      else:
        train.evaluate_workdir(config, workdir)
    except train.Preempted as e:
      print(f'lm_jax.main: {e}', file=sys.stderr)
      return EXIT_PREEMPTED
  except USER_ERRORS as e:
    print(f'lm_jax.main: {e}', file=sys.stderr)
    return 1
  return 0


def parse_flags(argv):
  """absl's flag parsing, plus one line (not a traceback) for a misspelled override or a config file that fails."""
  try:
    return app.parse_flags_with_usage(argv)
  except Exception as e:  # pylint: disable=broad-exception-caught  # anything raised by executing the config file
    sys.exit(f'lm_jax.main: {_explain_flag_error(argv, e)}')


def _explain_flag_error(argv, error: Exception) -> str:
  """The override that names a key the config lacks, with the closest valid key; else the config file's error."""
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if path is None and '--config' in argv[:-1]:
    path = argv[argv.index('--config') + 1]
  from lm_jax import configs  # pylint: disable=g-import-not-at-top
  try:
    config = configs.load(path)
  except Exception:  # pylint: disable=broad-exception-caught  # the file itself fails: say so below
    config = None
  for arg in argv:
    if config is not None and arg.startswith('--config.'):
      key = arg[len('--config.'):].partition('=')[0]
      if problem := configs.unknown_key(config, key):
        return f'{arg}: {problem}.'
  message = error.args[0] if isinstance(error, KeyError) and error.args else error
  return f'the config file {path!r} failed to load: {type(error).__name__}: {message}'


def main(argv):
  process.start(argv, process_index=FLAGS.process_id or 0)
  try:
    initialize_distributed(FLAGS.config)
  except OSError as e:   # the config file could not be loaded: config_flags defers the error to its first use
    print(f'lm_jax.main: {e}', file=sys.stderr)
    return 1
  except (ValueError, RuntimeError) as e:   # e.g. no coordinator reachable within the initialization timeout
    print(f'lm_jax.main: joining the multi-host job failed: {e}', file=sys.stderr)
    return 1
  return run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
