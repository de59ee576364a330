"""Long sequences: train-step time and memory of the transformer (dense or chunked attention) and of the
linear-time mixers (mamba, linear_attention, ...), side by side.

  python -m lm_jax.tools.long_context --lengths 1024,2048,4096,8192          # dense vs chunked attention
  python -m lm_jax.tools.long_context --lengths 8192 --models transformer,mamba,linear_attention \\
      --attentions chunked --d_model 128 --steps 2

Every setting is the bench's `long` case (a 2-layer LM, 4 heads, vocabulary 512, batch 1, float32, AdamW; d_model
256 and MLP 1024 unless --d_model sets d_model and MLP = 4·d_model) with model.name = the setting's model; a model
with attention layers (transformer, griffin) runs once per --attentions entry. Each setting runs in its own
process under `/usr/bin/time -v`, which calls `measure` for it (`--setting MODEL:ATTENTION:T`), so that its peak RSS
is its own. Memory, two ways:
  peak RSS        the whole process's maximum resident memory: Python, JAX, XLA, the state and the step
  XLA temp, args  the compiled train step's `memory_analysis()`: its temporary buffers (the activations the
                  backward keeps, workspaces) and its arguments (params, AdamW's two moments, the batch)
Step = the median of --steps train steps after one warm-up (compile time apart). Prints one JSON line per setting,
then a Markdown table.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys

ATTENTION_MODELS = ('transformer', 'griffin')   # the families with attention layers (model.attention)
_TIME_REPORT = re.compile(r'(?m)^(?:Command exited with|Command terminated by|\tCommand being timed)')


def settings(models: list[str], attentions: list[str], lengths: list[int]) -> list[tuple[str, str, int]]:
  """(model, attention, T) to measure, by length then model: attention '' for a model without attention layers.

  settings(['transformer', 'mamba'], ['dense', 'chunked'], [64]) →
      [('transformer', 'dense', 64), ('transformer', 'chunked', 64), ('mamba', '', 64)]
  """
  return [(model, attention, length) for length in lengths for model in models
          for attention in (attentions if model in ATTENTION_MODELS else [''])]


def overrides(model: str, attention: str, d_model: int) -> dict:
  """The `long` case's config changes for one setting (d_model 0: the case's own width)."""
  out = {'model.name': model}
  if attention:
    out['model.attention'] = attention
  if d_model:
    out.update({'model.d_model': d_model, 'model.mlp_dim': 4 * d_model})
  return out


def measure(model: str, attention: str, length: int, *, steps: int, d_model: int = 0) -> dict:
  """One setting's train step in this process: its compiled memory, step times and parameters."""
  from lm_jax.tools import bench  # pylint: disable=g-import-not-at-top  (JAX loads only where a step runs)
  case = bench.Bench('long', seq=length, overrides=overrides(model, attention, d_model))
  times = case.run(steps, warmup=1)
  median = statistics.median(times)
  return {'model': model, 'attention': attention, 'seq': length, 'd_model': case.config.model.d_model,
          'params': case.num_params, 'compile_s': case.compile_s, 'compiled_temp_bytes': case.temp_bytes,
          'compiled_argument_bytes': case.argument_bytes, 'median_s': median, 'tokens_per_s': length / median}


def run(model: str, attention: str, length: int, *, steps: int, d_model: int = 0) -> dict:
  """One setting in its own process under `/usr/bin/time -v`: `measure`'s line and the process's peak RSS."""
  command = ['/usr/bin/time', '-v', sys.executable, '-m', 'lm_jax.tools.long_context',
             '--setting', f'{model}:{attention}:{length}', '--steps', str(steps), '--d_model', str(d_model)]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  rss = re.search(r'Maximum resident set size \(kbytes\): (\d+)', result.stderr)
  line = {'model': model, 'attention': attention, 'seq': length, 'returncode': result.returncode,
          'max_rss_mib': int(rss.group(1)) / 1024 if rss else None}
  if result.returncode == 0:
    line.update(json.loads(result.stdout.strip().splitlines()[-1]))
  else:
    program = _TIME_REPORT.split(result.stderr)[0]   # the program's own output: /usr/bin/time's report follows it
    line['error'] = (program.strip().splitlines() or ['no output'])[-1][:300]
  return line


def table(rows: list[dict]) -> str:
  """The Markdown table of `run`'s lines."""
  mib = lambda n: '' if n is None else f'{n / 2 ** 20:.0f}'
  lines = ['| T | model | attention | params | peak RSS (MiB) | XLA temp (MiB) | XLA args (MiB) | step (s) | '
           'tokens/s |', '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    rss = '' if r['max_rss_mib'] is None else f'{r["max_rss_mib"]:.0f}'
    head = f'| {r["seq"]} | {r["model"]} | {r["attention"]} |'
    if r['returncode']:
      lines.append(f'{head} | {rss} | failed: {r["error"]} | | | |')
      continue
    lines.append(f'{head} {r["params"]:,} | {rss} | {mib(r["compiled_temp_bytes"])} | '
                 f'{mib(r["compiled_argument_bytes"])} | {r["median_s"]:.2f} | {r["tokens_per_s"]:.0f} |')
  return '\n'.join(lines)


def _names(text: str) -> list[str]:
  return [name.strip() for name in text.split(',') if name.strip()]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--lengths', default='1024,2048,4096,8192')
  parser.add_argument('--models', default='transformer', help='model.name values (the registry), comma-separated.')
  parser.add_argument('--attentions', default='dense,chunked', help='model.attention of the attention models.')
  parser.add_argument('--d_model', type=int, default=0, help='Width (MLP 4x); 0: the long case\'s 256.')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--setting', default='', help='MODEL:ATTENTION:T: measure this one here (what `run` calls).')
  args = parser.parse_args()
  if args.setting:
    from lm_jax import process  # pylint: disable=g-import-not-at-top
    process.start([])   # before the first compile, as every command
    model, attention, length = args.setting.split(':')
    print(json.dumps(measure(model, attention, int(length), steps=args.steps, d_model=args.d_model)), flush=True)
    return
  rows = []
  for model, attention, length in settings(_names(args.models), _names(args.attentions),
                                           [int(n) for n in _names(args.lengths)]):
    rows.append(run(model, attention, length, steps=args.steps, d_model=args.d_model))
    print(json.dumps(rows[-1]), flush=True)
  print('\n' + table(rows))


if __name__ == '__main__':
  main()
