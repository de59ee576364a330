"""lm_jax.tools.long_context: which settings it measures, and its command end to end on tiny lengths (one process
per setting): the fields of each line, their consistency, and the table."""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from lm_jax.tools import long_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The settings' processes see one CPU device (batch 1 cannot split over the tests' two).
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}


class LongContextTest(absltest.TestCase):

  def test_attention_models_run_once_per_attention(self):
    self.assertEqual(long_context.settings(['transformer', 'mamba', 'griffin'], ['dense', 'chunked'], [64, 128]),
                     [('transformer', 'dense', 64), ('transformer', 'chunked', 64), ('mamba', '', 64),
                      ('griffin', 'dense', 64), ('griffin', 'chunked', 64),
                      ('transformer', 'dense', 128), ('transformer', 'chunked', 128), ('mamba', '', 128),
                      ('griffin', 'dense', 128), ('griffin', 'chunked', 128)])
    self.assertEqual(long_context.overrides('mamba', '', 0), {'model.name': 'mamba'})
    self.assertEqual(long_context.overrides('transformer', 'chunked', 32),
                     {'model.name': 'transformer', 'model.attention': 'chunked', 'model.d_model': 32,
                      'model.mlp_dim': 128})

  def test_command_measures_each_setting(self):
    result = subprocess.run(
        [sys.executable, '-m', 'lm_jax.tools.long_context', '--lengths', '16,32', '--models', 'mamba',
         '--attentions', 'dense,chunked', '--d_model', '16', '--steps', '1'],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
    self.assertEqual([(r['model'], r['attention'], r['seq']) for r in lines], [('mamba', '', 16), ('mamba', '', 32)])
    for r in lines:
      self.assertEqual(r['returncode'], 0, r)
      self.assertEqual(r['d_model'], 16)
      self.assertGreater(r['max_rss_mib'], 100)          # a whole process with JAX in it
      self.assertGreater(r['compiled_temp_bytes'], 0)
      # The step's arguments hold at least the params and AdamW's two moments, float32 each.
      self.assertGreaterEqual(r['compiled_argument_bytes'], 3 * 4 * r['params'])
      np.testing.assert_allclose(r['tokens_per_s'], r['seq'] / r['median_s'], rtol=1e-9)
    short, long = lines
    # One model at both lengths: the same state; the batch (inputs, targets int32, weights float32) grows by 16 tokens.
    self.assertEqual(short['params'], long['params'])
    self.assertEqual(long['compiled_argument_bytes'] - short['compiled_argument_bytes'], 16 * 3 * 4)
    self.assertGreater(long['compiled_temp_bytes'], short['compiled_temp_bytes'])
    table = result.stdout[result.stdout.index('| T |'):].splitlines()
    self.assertLen(table, 2 + len(lines))
    self.assertTrue(table[3].startswith(f'| 32 | mamba |  | {long["params"]:,} |'), table[3])


if __name__ == '__main__':
  absltest.main()
