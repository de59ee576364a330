"""Token cache at scale: build time, resume to the first training step, and memory, on generated text.

  python -m lm_jax.tools.token_cache --megabytes 2048 --resumes 3       # from the repository root

1. Writes `--megabytes` of English-like text files (a word-level order-2 Markov chain over Python's docstrings and
   /usr/share/common-licenses; at most 64 MB is unique, larger corpora repeat those paragraphs in a new order per
   file) under --dir, unless they are there already.
2. Builds the token cache with `python -m lm_jax.tools.prepare_data` (SentencePiece training included): seconds, max RSS.
3. Trains a small decoder for a few steps, then stops it with SIGTERM (it saves a checkpoint), and resumes it
   `--resumes` times (each for 10 steps): seconds from process start to the first training step, the peak resident
   memory (RssAnon = private memory; RssFile = mapped files, such as the cache; the peak comes with the first
   step's compilation) and the private memory while training (RssAnon when the run is stopped).
Each measurement is one JSON line. The corpus is easier to tokenize than real English (about 2× the MB/s), so
compare tokenization rates between code versions on the same corpus, not with other corpora.
"""

import argparse
import ast
import collections
import glob
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time

_UNIQUE_MB = 64
_OVERRIDES = ('data.name=text_files', 'data.vocab_size=8000', 'data.validation_fraction=0.001', 'model.task=lm',
              'model.num_layers=2', 'model.d_model=128', 'model.num_heads=4', 'model.mlp_dim=512',
              'model.dropout=0.0', 'train.batch_size=16', 'train.num_steps=100000', 'train.log_every_steps=1',
              'train.checkpoint_every_steps=5', 'train.eval_every_steps=100000', 'train.best_metric=loss',
              'train.best_mode=min')


def source_words() -> list[str]:
  texts = [open(p, errors='ignore').read() for p in glob.glob('/usr/share/common-licenses/*') if os.path.isfile(p)]
  for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), '*.py')))[:400]:
    try:
      tree = ast.parse(open(path, encoding='utf-8', errors='ignore').read())
    except SyntaxError:
      continue
    texts += [doc for node in ast.walk(tree)
              if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
              and (doc := ast.get_docstring(node)) and len(doc) > 80]
  return '\n'.join(texts).split()


def write_corpus(out: str, megabytes: float) -> None:
  words = source_words()
  chain = collections.defaultdict(list)
  for w1, w2, w3 in zip(words, words[1:], words[2:]):
    chain[w1, w2].append(w3)
  states, rng = list(chain), random.Random(0)
  paragraphs, size = [], 0
  while size < min(megabytes, _UNIQUE_MB) * 1e6:
    state = rng.choice(states)
    out_words = list(state)
    for _ in range(int(rng.lognormvariate(4.3, 0.8)) + 5):   # words per paragraph
      state = state if chain.get(state) else rng.choice(states)
      out_words.append(rng.choice(chain[state]))
      state = (state[1], out_words[-1])
    paragraphs.append(' '.join(out_words))
    size += len(paragraphs[-1]) + 2
  os.makedirs(out, exist_ok=True)
  written, number = 0, 0
  while written < megabytes * 1e6:
    order = list(range(len(paragraphs)))
    random.Random(number).shuffle(order)
    text = ('\n\n'.join(paragraphs[i] for i in order) + '\n')[:int(megabytes * 1e6 - written) + 1]
    with open(os.path.join(out, f'part{number:03d}.txt'), 'w') as f:
      f.write(text)
    written, number = written + len(text.encode()), number + 1


def lm_jax_command(module: str, corpus: str, cache: str, *extra: str) -> list[str]:
  flags = [f'--config.{o}' for o in _OVERRIDES + (f'data.paths={corpus}/*.txt', f'data.cache_dir={cache}')]
  return [sys.executable, '-m', module, '--config', 'experiments/base.py', *flags, *extra]


def until_steps(command: list[str], steps: int) -> dict:
  """Runs `command` until it logs `steps` training steps, then SIGTERMs it: seconds to the first step, peak memory."""
  start = time.time()
  proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  peak_kb = collections.Counter()

  def sample():
    while proc.poll() is None:
      try:
        status = open(f'/proc/{proc.pid}/status').read()
      except OSError:
        return
      for key in ('VmRSS', 'RssAnon', 'RssFile'):
        if m := re.search(rf'{key}:\s+(\d+) kB', status):
          peak_kb[key] = max(peak_kb[key], int(m.group(1)))
      time.sleep(0.2)

  threading.Thread(target=sample, daemon=True).start()
  first, seen, training_kb = None, 0, None
  for line in proc.stderr:
    if re.search(r'\] step \d+/\d+ \|', line):
      first, seen = first or time.time() - start, seen + 1
      if seen >= steps:
        training_kb = int(re.search(r'RssAnon:\s+(\d+) kB', open(f'/proc/{proc.pid}/status').read()).group(1))
        proc.send_signal(signal.SIGTERM)
        break
  proc.wait(timeout=120)
  return {'first_step_s': None if first is None else round(first, 2), 'exit_code': proc.returncode,
          **{f'peak_{key}_mb': round(kb / 1024) for key, kb in peak_kb.items()},
          'training_RssAnon_mb': None if training_kb is None else round(training_kb / 1024)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--megabytes', type=float, default=2048)
  parser.add_argument('--resumes', type=int, default=3)
  parser.add_argument('--dir', default='/tmp/lm_jax_token_cache_bench')
  args = parser.parse_args()
  corpus, cache, workdir = (os.path.join(args.dir, name) for name in ('corpus', 'cache', 'run'))
  if not glob.glob(os.path.join(corpus, '*.txt')):
    start = time.time()
    write_corpus(corpus, args.megabytes)
    print(json.dumps({'corpus_mb': args.megabytes, 'written_s': round(time.time() - start, 1)}), flush=True)
  start = time.time()
  subprocess.run(lm_jax_command('lm_jax.tools.prepare_data', corpus, cache), check=True, capture_output=True)
  print(json.dumps({'cache_build_s': round(time.time() - start, 1),
                    'cache_build_max_rss_mb': round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}),
        flush=True)
  train = lm_jax_command('lm_jax.main', corpus, cache, '--workdir', workdir)
  print(json.dumps({'run': 'first', **until_steps(train, steps=7)}), flush=True)
  for resume in range(args.resumes):
    print(json.dumps({'run': f'resume {resume + 1}', **until_steps(train, steps=10)}), flush=True)


if __name__ == '__main__':
  main()
