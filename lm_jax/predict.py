"""Classify texts with a trained classifier, or continue prompts with a trained LM.

  python -m lm_jax.predict --workdir runs/imdb --text "A wonderful film." --text "Dull."
  python -m lm_jax.predict --workdir runs/imdb --file reviews.txt --json        # one text per line
  echo "k0 v3 k1 v5 k0" | python -m lm_jax.predict --workdir runs/recall --max_new_tokens 1 --temperature 0

Texts come from --text (repeatable), else --file, else stdin (one text per line; blank lines are skipped). A
classifier prints each text's label and its probability; an LM prints each prompt's continuation. --json prints
one JSON object per line instead. The checkpoint is --step, else the best by validation, else the latest.
"""

import json
import sys

from absl import app
from absl import flags

from lm_jax import process

flags.DEFINE_string('workdir', None, 'Run directory of lm_jax.main (or of lm_jax.tools.convert).')
flags.DEFINE_multi_string('text', [], 'A text to classify or a prompt to continue; repeatable.')
flags.DEFINE_string('file', None, 'A UTF-8 file with one text per line.')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best by validation, else the latest).')
flags.DEFINE_boolean('json', False, 'Print one JSON object per text.')
flags.DEFINE_integer('batch_size', 0, 'Texts per batch (0 = config.train.eval_batch_size).')
flags.DEFINE_integer('max_new_tokens', 32, 'LM: tokens to generate per prompt.')
flags.DEFINE_float('temperature', 1.0, 'LM: sampling temperature (0 = greedy).')
flags.DEFINE_integer('top_k', 0, 'LM: sample among the k most likely tokens (0 = all).')
flags.DEFINE_integer('seed', 0, 'LM: sampling seed.')
flags.mark_flag_as_required('workdir')
FLAGS = flags.FLAGS


def read_texts() -> list[str]:
  from lm_jax import inference  # pylint: disable=g-import-not-at-top  (heavy: JAX)
  if FLAGS.text:
    return list(FLAGS.text)
  if FLAGS.file:
    with open(FLAGS.file, encoding='utf-8', newline='') as f:
      content = f.read()
  elif sys.stdin.isatty():
    raise ValueError('no input: give --text, --file, or pipe texts (one per line) on stdin.')
  else:
    content = sys.stdin.read()
  return [line for line in inference.one_text_per_line(content) if line.strip()]


def classify(run, texts) -> list[dict]:
  result = run.classify(texts, batch_size=FLAGS.batch_size)
  names = run.label_names or [str(k) for k in range(result.probabilities.shape[-1])]
  return [{'text': text, 'label': names[label], 'label_id': int(label), 'probability': float(probs[label]),
           'probabilities': {name: round(float(p), 6) for name, p in zip(names, probs)}}
          for text, label, probs in zip(texts, result.labels, result.probabilities)]


def continue_prompts(run, texts) -> list[dict]:
  continuations = run.generate(texts, max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                               top_k=FLAGS.top_k, seed=FLAGS.seed, batch_size=FLAGS.batch_size)
  return [{'prompt': text, 'continuation': c} for text, c in zip(texts, continuations)]


# task → (what to do, the plain-text line of one result)
TASKS = {
    'classification': (classify, lambda r: f"{r['label']}\t{r['probability']:.4f}\t{r['text']}"),
    'lm': (continue_prompts, lambda r: f"{r['prompt']}\t{r['continuation']}"),
}


def main(argv):
  process.start(argv)
  import lm_jax  # pylint: disable=g-import-not-at-top
  try:
    texts = read_texts()
    run = lm_jax.load(FLAGS.workdir, step=FLAGS.step)
    if run.task not in TASKS:
      raise ValueError(f'{FLAGS.workdir} is a {run.task!r} run; predict serves {", ".join(TASKS)} runs (use '
                       'lm_jax.load(workdir).logits for the others).')
    predict, line = TASKS[run.task]
    for result in predict(run, texts):
      print(json.dumps(result) if FLAGS.json else line(result), flush=True)
  except (FileNotFoundError, ValueError) as e:  # the message says what is wrong and what to do
    raise SystemExit(f'lm_jax.predict: {e}') from None


if __name__ == '__main__':
  app.run(main)
