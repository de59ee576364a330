"""Multi-host training for real: two processes on 127.0.0.1 (one CPU device each, gloo collectives) form one job.

Each is `python -m lm_jax.main ... --coordinator_address 127.0.0.1:PORT --num_processes 2 --process_id I`, the
README's launch command. They must train, evaluate, checkpoint and resume as one process with two devices does.
"""

import json
import os
import socket
import subprocess
import sys
import time

import chex
import fixtures
import jax
import numpy as np
import pytest

from lm_jax import train

pytestmark = pytest.mark.slow   # two-process jobs of the main command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# RECALL's schedule is constant after warmup, so a 20-step run is a 40-step run's start.
OVERRIDES = {**fixtures.RECALL, 'train.num_steps': 40, 'train.eval_every_steps': 20}
TIMEOUT_S = 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def command(workdir, num_steps):
  args = fixtures.flags({**OVERRIDES, 'train.num_steps': num_steps})
  return [sys.executable, '-m', 'lm_jax.main', '--config', 'experiments/recall.py', '--workdir', workdir, *args]


def launch(workdir, num_steps, processes=2):
  """`processes` processes of one job, each with one CPU device."""
  port = free_port()
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  return [subprocess.Popen(command(workdir, num_steps) + [f'--coordinator_address=127.0.0.1:{port}',
                                                            f'--num_processes={processes}', f'--process_id={i}',
                                                            '--heartbeat_timeout=20'],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(processes)]


def finish(processes):
  outputs = [p.communicate(timeout=TIMEOUT_S) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs


def single(workdir, num_steps):
  """One process with two devices (tests/conftest.py): the same global batch over the same device count."""
  result = subprocess.run(command(workdir, num_steps), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]


def read(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  with open(os.path.join(workdir, 'results.json')) as f:
    return lines, json.load(f)


def params(workdir, num_steps):
  config = fixtures.recall({**OVERRIDES, 'train.num_steps': num_steps})
  run = train.prepare_run(config, workdir)
  _, state, _ = run.ckpt.restore(run.state)
  run.ckpt.close()
  return jax.device_get(state.params)


class MultiHostTest(chex.TestCase):

  def assert_same_run(self, workdir, reference):
    (lines, results), (ref_lines, ref_results) = read(workdir), read(reference)
    key = lambda ls: [(l['step'], l['split']) for l in ls]
    self.assertEqual(key(lines), key(ref_lines))   # no duplicated or missing log points
    for line, ref in zip(lines, ref_lines):
      np.testing.assert_allclose(line['loss'], ref['loss'], rtol=1e-5, err_msg=str(line))
    for split in ref_results:
      if split != 'step':
        for name, value in ref_results[split].items():
          np.testing.assert_allclose(results[split][name], value, rtol=1e-5, err_msg=f'{split} {name}')

  def test_two_processes_train_as_one_and_checkpoints_cross_over(self):
    tmp = self.create_tempdir().full_path
    multi, one = os.path.join(tmp, 'multi'), os.path.join(tmp, 'single')
    outputs = finish(launch(multi, 20))
    self.assertIn('on 2 device(s)', outputs[0][1])
    self.assertNotIn('step 5/20', outputs[1][1], 'only process 0 logs')
    single(one, 20)
    self.assert_same_run(multi, one)   # loss curve and eval metrics over the whole split exactly once
    # Not the key bias: its gradient is zero but for rounding, which differs with the collectives (gloo vs in-process).
    chex.assert_trees_all_close(fixtures.without_key_bias(params(multi, 20)),
                                fixtures.without_key_bias(params(one, 20)), rtol=1e-5, atol=1e-6)

    # A multi-process checkpoint resumes in one process, and a single-process one in two.
    single(multi, 40)
    finish(launch(one, 40))
    straight = os.path.join(tmp, 'straight')
    single(straight, 40)
    self.assert_same_run(multi, straight)
    self.assert_same_run(one, straight)
    chex.assert_trees_all_close(fixtures.without_key_bias(params(multi, 40)),
                                fixtures.without_key_bias(params(straight, 40)), rtol=1e-5, atol=1e-6)

  def test_resume_after_killing_every_process_and_a_dead_peer_stops_the_other(self):
    tmp = self.create_tempdir().full_path
    workdir, straight = os.path.join(tmp, 'killed'), os.path.join(tmp, 'straight')
    processes = launch(workdir, 40)
    deadline = time.time() + TIMEOUT_S
    while not os.path.exists(os.path.join(workdir, 'checkpoints', '10', 'commit_success.txt')):
      self.assertLess(time.time(), deadline, 'no checkpoint written')
      time.sleep(0.2)
    for p in processes:
      p.kill()
      p.communicate()
    finish(launch(workdir, 40))
    single(straight, 40)
    self.assert_same_run(workdir, straight)

    # Kill one process of a running job: the other must stop with an error within the bound, not hang.
    survivor, victim = launch(os.path.join(tmp, 'orphaned'), 100000)
    for line in survivor.stderr:
      if 'step 5/100000' in line:
        break
    victim.kill()
    killed_at = time.time()
    try:
      survivor.communicate(timeout=120)
    except subprocess.TimeoutExpired:
      survivor.kill()
      self.fail('the surviving process did not stop within 120 s of its peer dying')
    self.assertNotEqual(survivor.returncode, 0)
    self.assertLess(time.time() - killed_at, 120)
