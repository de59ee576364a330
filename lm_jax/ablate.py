"""Run an ablation sweep: every variant of a sweep file as an ordinary training run, then a table and plots.

  python -m lm_jax.ablate --sweep experiments/ablations/recall_mixers.py --workdir runs/ablations/recall_mixers
  python -m lm_jax.ablate --sweep ... --workdir ... --dry_run          # variants, parameters, state size; no training
  python -m lm_jax.ablate --sweep ... --workdir ... --only 'lstm|gru'  # the runs whose name matches (re.search)
  python -m lm_jax.ablate --sweep ... --workdir ... --override data.tfds_data_dir=/data/tfds   # for every variant

Running the same command again skips finished runs and resumes an interrupted one. A run that fails leaves its
traceback in DIR/<run>/error.txt, the sweep goes on, and the command then exits non-zero naming the failed runs.
What is written where: lm_jax/sweeps/runner.py.
"""

import os

from absl import app
from absl import flags

from lm_jax import process

flags.DEFINE_string('sweep', None, 'Sweep file: experiments/ablations/NAME.py[:variant] (get_sweep() lists the runs).')
flags.DEFINE_string('workdir', None, 'Sweep directory: one run directory per variant, results.csv/.md, plots/.')
flags.DEFINE_string('only', '', 'Run only the variants whose run name matches this regex (re.search).')
flags.DEFINE_bool('dry_run', False, 'List the variants with parameters and state size; train nothing.')
flags.DEFINE_multi_string('override', [], 'key=value applied to every variant last, e.g. data.tfds_data_dir=/data.')
flags.mark_flags_as_required(['sweep', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  process.start(argv)
  # Imported here so that flag errors are reported before JAX loads.
  from lm_jax.sweeps import runner as sweep_runner  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.dry_run:
      sweep_runner.dry_run(FLAGS.sweep, FLAGS.workdir, FLAGS.only, FLAGS.override)
      return
    failures = sweep_runner.run_sweep(FLAGS.sweep, FLAGS.workdir, FLAGS.only, FLAGS.override)
  except (FileNotFoundError, ValueError) as e:   # a bad sweep file or flag: the message says what is wrong
    raise SystemExit(f'lm_jax.ablate: {e}') from None
  with open(os.path.join(FLAGS.workdir, 'results.md'), encoding='utf-8') as f:
    print(f.read())
  if failures:
    raise SystemExit(f'lm_jax.ablate: {len(failures)} run(s) failed: '
                     + '; '.join(f'{run}: {error}' for run, error in failures.items()))


if __name__ == '__main__':
  app.run(main)
