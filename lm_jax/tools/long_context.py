"""Dense vs chunked attention on long sequences: peak memory and step time of the `long` bench case.

  python -m lm_jax.tools.long_context --lengths 1024,2048,4096,8192

Each (attention, T) runs `python -m lm_jax.tools.bench --case long` in its own process under `/usr/bin/time -v`, so the
peak resident memory (max RSS) is that setting's alone. Prints one JSON line per run, then a Markdown table.
"""

import argparse
import json
import re
import subprocess
import sys


def run(attention: str, length: int, steps: int) -> dict:
  command = ['/usr/bin/time', '-v', sys.executable, '-m', 'lm_jax.tools.bench', '--case', 'long', '--seq', str(length),
             '--attention', attention, '--steps', str(steps), '--warmup', '1']
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  rss = re.search(r'Maximum resident set size \(kbytes\): (\d+)', result.stderr)
  line = {'attention': attention, 'seq': length, 'returncode': result.returncode,
          'max_rss_mib': int(rss.group(1)) / 1024 if rss else None}
  if result.returncode == 0:
    bench = json.loads(result.stdout.strip().splitlines()[-1])
    line.update({key: bench[key] for key in ('median_s', 'compile_s', 'compiled_temp_bytes', 'tokens_per_s')})
  else:
    line['error'] = result.stderr.strip().splitlines()[-1][:300]
  return line


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--lengths', default='1024,2048,4096,8192')
  parser.add_argument('--attentions', default='dense,chunked')
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args()
  rows = []
  for length in map(int, args.lengths.split(',')):
    for attention in args.attentions.split(','):
      rows.append(run(attention, length, args.steps))
      print(json.dumps(rows[-1]), flush=True)
  print('\n| T | attention | peak RSS (MiB) | XLA temp (MiB) | step (s) | tokens/s |\n|---|---|---|---|---|---|')
  for r in rows:
    if r['returncode']:
      print(f'| {r["seq"]} | {r["attention"]} | {r["max_rss_mib"]:.0f} | failed: {r["error"]} | | |')
      continue
    temp = '' if r['compiled_temp_bytes'] is None else f'{r["compiled_temp_bytes"] / 2 ** 20:.0f}'
    print(f'| {r["seq"]} | {r["attention"]} | {r["max_rss_mib"]:.0f} | {temp} | {r["median_s"]:.2f} | '
          f'{r["tokens_per_s"]:.0f} |')


if __name__ == '__main__':
  main()
