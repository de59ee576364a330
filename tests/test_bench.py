"""lm_jax.tools.bench and lm_jax/tools/gpu_check.sh: the documented JSON fields, the torch/lm_jax alternation and ratio (against
a stand-in reference script), the batches the cases train on, and the GPU script's CPU dry run."""

import json
import os
import subprocess
import sys
import textwrap

import chex
import numpy as np
import pytest

from lm_jax.tools import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses see one CPU device (not the tests' two) and never a GPU.
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
FAKE_TORCH_SECONDS = 0.25


def json_lines(stdout):
  return [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]


class BenchTest(chex.TestCase):

  def test_random_batch_matches_the_references_losses(self):
    lm = bench.random_batch('lm', 50, 2, 6)
    self.assertTrue(np.all(lm['inputs'] > 0))  # no pad id: every position is a real token
    np.testing.assert_array_equal(lm['targets'][:, :-1], lm['inputs'][:, 1:])  # next-token targets, as HF shifts
    np.testing.assert_array_equal(lm['weights'].sum(axis=1), [5, 5])  # the last position predicts nothing
    classification = bench.random_batch('classification', 50, 3, 4)
    self.assertEqual(classification['label'].shape, (3,))
    self.assertTrue(set(np.unique(classification['label'])) <= {0, 1})

  def test_mlm_batch_is_bert_masked_within_the_cap(self):
    batch = bench.random_batch('mlm', 50, 8, 64, mlm_predictions=10)
    masked = batch['weights'] > 0
    self.assertTrue(np.all(masked.sum(axis=1) <= 10))
    self.assertGreater(masked.sum(), 8 * 3)  # 15% of 64 is ~10 per row: most rows reach the cap
    changed = batch['inputs'] != batch['targets']
    self.assertTrue(np.all(masked[changed]))   # only chosen positions differ from the original ids
    self.assertTrue(np.any(batch['inputs'][masked] == 1))  # most chosen positions became [MASK] (id 1)

  def test_mlm_case_counts_the_same_useful_flops_with_and_without_the_gather(self):
    gathered = bench.Bench('mlm', batch=2, seq=16)
    every_position = bench.Bench('mlm', batch=2, seq=16, mlm_predictions=0)
    self.assertEqual(gathered.mlm_predictions, bench.packing.max_predictions(16, 0.15, -1))  # as training sets it
    self.assertLess(gathered.mlm_predictions, 16)
    self.assertEqual(every_position.mlm_predictions, 0)
    self.assertEqual(gathered.flops_per_step, every_position.flops_per_step)
    for b in (gathered, every_position):
      self.assertTrue(np.isfinite(b._one_step()))  # pylint: disable=protected-access

  def test_cases_state_only_config_keys(self):
    for name, case in bench.CASES.items():
      config = bench.case_config(case)  # an unknown key or a wrong type raises here
      self.assertEqual(config.optim.clip_norm, 0.0, name)
      self.assertEqual(config.optim.learning_rate, 2e-5, name)

  @pytest.mark.slow   # the benchmark's command in a subprocess
  def test_reference_mode_prints_fields_alternation_and_ratio(self):
    reference_dir = self.create_tempdir().full_path
    with open(os.path.join(reference_dir, 'torch_lstm_bench.py'), 'w') as f:  # stands in for the torch script
      f.write(textwrap.dedent(f'''
          import json, sys
          args = sys.argv[1:]
          assert args[args.index('--batch') + 1] == '2' and args[args.index('--seq') + 1] == '8', args
          print(json.dumps({{'framework': 'torch', 'train': {{'median_s': {FAKE_TORCH_SECONDS}}}}}))
          '''))
    result = subprocess.run(
        [sys.executable, '-m', 'lm_jax.tools.bench', '--case', 'lstm', '--batch', '2', '--seq', '8', '--steps', '3',
         '--warmup', '1', '--reference', '--rounds', '2', f'--reference_dir={reference_dir}'],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    lines = json_lines(result.stdout)
    # lm_jax first in round 0, torch first in round 1, then the ratio.
    self.assertEqual([line.get('framework') for line in lines], ['lm_jax', 'torch', 'torch', 'lm_jax', None])
    ours = lines[0]
    for key in ('median_s', 'min_s', 'max_s', 'compile_s'):
      self.assertGreater(ours[key], 0.0, key)
    self.assertLessEqual(ours['min_s'], ours['median_s'])
    self.assertLessEqual(ours['median_s'], ours['max_s'])
    self.assertEqual(ours['peak'], 'measured')
    self.assertGreater(ours['mfu'], 0.0)
    self.assertLess(ours['mfu'], 1.0)
    np.testing.assert_allclose(ours['tokens_per_s'], 2 * 8 / ours['median_s'], rtol=1e-6)
    np.testing.assert_allclose(ours['achieved_flops_per_s'], ours['flops_per_step'] / ours['median_s'], rtol=1e-6)
    # 1 layer, h = e = 256, 4 gates, forward only, 2 classes: 6·4·h·(e+h) per token + 6·h·C per sequence.
    np.testing.assert_allclose(ours['flops_per_step'], 16 * 6 * 4 * 256 * 512 + 2 * 6 * 256 * 2, rtol=1e-9)
    ratio = lines[-1]
    self.assertEqual(ratio['torch_median_s'], [FAKE_TORCH_SECONDS] * 2)
    expected = FAKE_TORCH_SECONDS / np.median(ratio['lm_jax_median_s'])
    np.testing.assert_allclose(ratio['ratio'], expected, rtol=1e-9)

  @pytest.mark.slow   # the GPU check script's whole dry run
  def test_gpu_check_dry_run(self):
    logs = self.create_tempdir().full_path
    result = subprocess.run(['bash', 'lm_jax/tools/gpu_check.sh', '--dry_run'], cwd=ROOT, env={**ENV, 'OUT': logs},
                            capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-2000:])
    self.assertIn('python -m lm_jax.tools.bench --case gpt2-small', result.stdout)
    equivalence = {line['implementation']: line for line in json_lines(result.stdout) if 'implementation' in line}
    self.assertIn('skipped', equivalence['cudnn'])
    self.assertTrue(equivalence['chunked']['ok'])
    self.assertLess(equivalence['chunked']['relative_max_error']['dq'], 0.05)
    self.assertIn('DRY RUN finished, status 0', result.stdout)
