"""Evaluate a trained run: on its own validation and test splits, or on any file in the run's format.

  python -m lm_jax.evaluate --workdir runs/mine                        # the run's splits, as results.json has them
  python -m lm_jax.evaluate --workdir runs/mine --file data/new.csv    # a labelled csv / jsonl, like the training data
  python -m lm_jax.evaluate --workdir runs/lm --file notes.txt         # an LM: loss, perplexity, bits per byte

A classifier's report: accuracy, macro-F1, per-class precision, recall and support, the confusion matrix, and the
TF-IDF + logistic regression baseline trained on the run's train split (when that data can be read here and
scikit-learn is installed). Printed, and written to WORKDIR/evaluations/<name>/ (results.json, <split>.txt,
<split>_confusion.png; <name> is the file's name, or `splits`). The checkpoint is the best by validation, else the
latest (--step chooses).
"""

import json
import os

from absl import app
from absl import flags

from lm_jax import process

flags.DEFINE_string('workdir', None, 'Run directory of lm_jax.main.')
flags.DEFINE_string('file', None, 'A file to evaluate on: csv/jsonl with the run\'s text and label columns '
                    '(classification), or UTF-8 text (an LM). Default: the run\'s own evaluation splits.')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best by validation, else the latest).')
flags.mark_flag_as_required('workdir')
FLAGS = flags.FLAGS

_FORMATS = {'.csv': 'csv', '.jsonl': 'jsonl', '.txt': 'text_files'}


def read_file_as_test(config, path: str) -> None:
  """Points `config.data` at `path` as the only evaluation split ('test'), in the run's columns and labels."""
  fmt = _FORMATS.get(os.path.splitext(path)[1].lower())
  if config.model.task == 'classification' and fmt not in ('csv', 'jsonl'):
    raise ValueError(f'--file={path!r}: a classifier reads .csv or .jsonl files (the extension says which).')
  if config.model.task != 'classification' and fmt is None:
    raise ValueError(f'--file={path!r}: an LM reads .txt (documents separated by blank lines), .csv or .jsonl.')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--file={path!r} does not exist.')
  data = config.data
  data.name, data.paths, data.test_paths, data.validation_paths = fmt, path, path, ''
  data.validation_fraction, data.max_documents = 0.0, -1


def evaluate_run(workdir: str, path: str | None = None, step: int | None = None) -> dict:
  """{'step', split: metrics, ..., 'baseline'} of the run's evaluation splits, or of `path` as 'test'; also
  written to WORKDIR/evaluations/<name>/."""
  # Imported here so that flag errors are reported before JAX loads.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import lm_jax  # pylint: disable=g-import-not-at-top
  from lm_jax import baseline, configs, metrics, report, steps, train  # pylint: disable=g-import-not-at-top
  from lm_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  run = lm_jax.load(workdir, step=step)
  config = configs.from_saved(run.config.to_dict())
  dataset = lambda c: data_lib.get_dataset(c.data, task=c.model.task, seed=c.seed,
                                           tokenizer_dir=os.path.join(workdir, 'tokenizer'))
  if path:
    file_config = configs.from_saved(config.to_dict())
    read_file_as_test(file_config, path)
    if run.label_names:
      file_config.data.label_names = run.label_names   # the file's class names map to the run's class ids
    data = dataset(file_config)
  else:
    data = dataset(config)
  mesh = train.make_mesh()
  token_bytes = jnp.asarray(data.tokenizer.token_bytes()) if config.model.task == 'lm' else None
  eval_step = steps.make_eval_step(run.model, mesh, token_bytes)
  splits = ('test',) if path else data.eval_splits
  results = {'step': run.step}
  for split in splits:
    results[split] = train.evaluate_split(eval_step, run.params, data, split, mesh, config)
    print(metrics.format_eval_line(split, run.step, results[split]), flush=True)
  if config.model.task == 'classification':
    try:
      training = dataset(config) if path else data   # the baseline trains on the run's own train split
      results['baseline'] = baseline.for_run(training, splits, num_classes=config.model.num_classes,
                                             seed=config.seed, evaluate_on=data)
    except (OSError, ValueError) as e:   # the run's training data cannot be read here (TFDS offline, moved files)
      results['baseline'] = {'skipped': f"the run's training data could not be read: {e}"}
    for split in splits:
      print(report.format_report(split, results[split]), flush=True)
      if split in results['baseline']:
        print(metrics.format_eval_line(f'baseline {split}', run.step, results['baseline'][split]), flush=True)
    if 'skipped' in results['baseline']:
      print(f'baseline skipped: {results["baseline"]["skipped"]}', flush=True)
  out = os.path.join(workdir, 'evaluations', os.path.basename(path) if path else 'splits')
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2)
  report.write_reports(out, results)
  print(f'written to {out}', flush=True)
  return results


def main(argv):
  process.start(argv)
  try:
    evaluate_run(FLAGS.workdir, FLAGS.file, FLAGS.step)
  except (FileNotFoundError, ValueError) as e:   # the message says what is wrong and what to do
    raise SystemExit(f'lm_jax.evaluate: {e}') from None


if __name__ == '__main__':
  app.run(main)
