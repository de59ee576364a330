"""lm_jax.tools.plan: the compiled train step's memory per device, without running a step."""

import json
import os
import subprocess
import sys

import fixtures
import pytest
from absl.testing import absltest

from lm_jax.tools import plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {'model.task': 'lm', 'model.num_layers': 2, 'model.d_model': 64, 'model.num_heads': 4, 'model.mlp_dim': 128,
        'data.max_len': 32, 'train.batch_size': 8, 'train.num_steps': 10}


def mesh(**sizes):
  return {f'mesh.{axis}': sizes.get(axis, 1) for axis in ('data', 'fsdp', 'tensor')}


class PlanTest(absltest.TestCase):

  def test_fsdp_holds_a_share_of_parameters_and_optimizer_state(self):
    replicated = plan.plan(fixtures.config({**TINY, **mesh(data=2)}), vocab_size=64)
    sharded = plan.plan(fixtures.config({**TINY, **mesh(fsdp=2)}), vocab_size=64)
    self.assertEqual(replicated['params'], sharded['params'])
    # AdamW: parameters + two moments, 4 bytes each, whole on every device of the data-only mesh.
    self.assertEqual(replicated['param_bytes'], 4 * replicated['params'])
    self.assertGreater(replicated['opt_state_bytes'], 2 * replicated['param_bytes'])
    held = lambda r: r['param_bytes'] + r['opt_state_bytes']
    self.assertLessEqual(held(sharded), held(replicated) / 2 * 1.1)
    self.assertGreater(sharded['temp_bytes'], 0)
    self.assertEqual(sharded['total_bytes'], held(sharded) + sharded['batch_bytes'] + sharded['temp_bytes'])

  def test_a_mesh_that_does_not_divide_the_model_is_an_error_naming_it(self):
    with self.assertRaisesRegex(ValueError, r"attention/\w+/\w+' .*\('heads', size 1\).*'tensor'"):
      plan.plan(fixtures.config({**TINY, 'model.num_heads': 1, **mesh(tensor=2)}), vocab_size=64)


@pytest.mark.slow
def test_eight_forced_devices_from_the_command_line_and_the_exit_code(tmp_path):
  del tmp_path
  # Wide enough that the matrices outweigh the replicated norms and biases, as in any real model.
  wide = {**TINY, 'data.vocab_size': 512, 'model.d_model': 256, 'model.mlp_dim': 1024}
  flags = [f'--config.{k}={v}' for k, v in wide.items()]
  base = [sys.executable, '-m', 'lm_jax.tools.plan', '--config', 'experiments/base.py', '--devices', '8', '--json']
  results = {}
  for name, sizes in (('data', mesh(data=8)), ('fsdp', mesh(fsdp=8))):
    out = subprocess.run(base + flags + [f'--config.{k}={v}' for k, v in sizes.items()], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results[name] = json.loads(out.stdout.strip().splitlines()[-1])
  assert results['fsdp']['devices'] == 8
  held = lambda r: r['param_bytes'] + r['opt_state_bytes']
  assert held(results['fsdp']) <= held(results['data']) / 8 * 1.1
  too_small = subprocess.run(base + flags + ['--memory_gb', '0.0001'], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
  assert too_small.returncode == 1, too_small.stderr[-3000:]
