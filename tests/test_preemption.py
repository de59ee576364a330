"""Interrupted runs end where uninterrupted ones do: SIGKILL at random moments, SIGTERM, a disk that fills up.

`LM_JAX_KILLS=50 pytest -q tests/test_preemption.py` runs the kill test with more kills (default 10).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import chex
import fixtures
import jax
import numpy as np
import pytest

from lm_jax import checkpoint
from lm_jax import train
from lm_jax.main import EXIT_PREEMPTED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# fixtures.RECALL for 240 steps: ~200 steps after a few seconds of start-up and compilation.
OVERRIDES = {**fixtures.RECALL, 'train.num_steps': 240, 'train.eval_every_steps': 40, 'train.max_to_keep': 2}


def start(workdir, **popen_kwargs):
  return subprocess.Popen([sys.executable, '-m', 'lm_jax.main', '--config', 'experiments/recall.py', '--workdir',
                           workdir, *fixtures.flags(OVERRIDES)], cwd=REPO, stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True, **popen_kwargs)


def config():
  return fixtures.recall(OVERRIDES)


def final_state(workdir):
  run = train.prepare_run(config(), workdir)
  step, state, _ = run.ckpt.restore(run.state)
  run.ckpt.close()
  return step, jax.device_get(state)


def record(workdir):
  """results.json and metrics.jsonl without the timing fields, which measure the machine rather than the run."""
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  return results, [{k: v for k, v in line.items() if k not in train.TIMING_METRICS} for line in lines]


@pytest.mark.slow   # the main command killed and restarted a dozen times
class KillAndResumeTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.straight = os.path.join(cls.tmp.name, 'straight')   # the uninterrupted run both tests compare with
    straight = start(cls.straight)
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-3000:]

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_sigkill_at_random_moments_changes_nothing(self):
    workdir = self.create_tempdir().full_path
    rng = np.random.default_rng(int(os.environ.get('LM_JAX_KILL_SEED', '0')))
    kills = int(os.environ.get('LM_JAX_KILLS', '10'))
    for _ in range(kills):
      process = start(workdir)
      # Start-up takes a few seconds; the kills land in start-up, training, evaluation and checkpoint writes.
      time.sleep(rng.uniform(2.0, 9.0))
      process.kill()
      process.communicate(timeout=60)
    finish = start(workdir)
    _, err = finish.communicate(timeout=600)
    self.assertEqual(finish.returncode, 0, err[-3000:])

    step, state = final_state(workdir)
    straight_step, straight_state = final_state(self.straight)
    self.assertEqual(step, straight_step)
    chex.assert_trees_all_equal(state.params, straight_state.params)
    chex.assert_trees_all_equal(state.opt_state, straight_state.opt_state)
    results, lines = record(workdir)
    straight_results, straight_lines = record(self.straight)
    self.assertEqual(results, straight_results)
    self.assertEqual(lines, straight_lines)   # no duplicated steps, same values

  def test_sigterm_saves_the_current_step_and_exits_75(self):
    workdir = self.create_tempdir().full_path
    process = start(workdir)
    seen = []
    for line in process.stderr:   # wait until training is under way, between checkpoints
      seen.append(line)
      if 'step 15/240' in line:
        process.send_signal(signal.SIGTERM)
        break
    _, err = process.communicate(timeout=120)
    err = ''.join(seen) + err
    self.assertEqual(process.returncode, EXIT_PREEMPTED, err[-3000:])
    self.assertIn('SIGTERM: saved a checkpoint at step', err)
    self.assertNotIn('Traceback', err)
    saved = int(err.split('saved a checkpoint at step ')[1].split()[0])
    self.assertGreaterEqual(saved, 15)
    self.assertNotEqual(saved % OVERRIDES['train.checkpoint_every_steps'], 0, 'the save came from the signal')

    finish = start(workdir)
    _, err = finish.communicate(timeout=600)
    self.assertEqual(finish.returncode, 0, err[-3000:])
    self.assertIn(f'from step {saved} to 240', err)
    chex.assert_trees_all_equal(final_state(workdir)[1].params, final_state(self.straight)[1].params)
    self.assertEqual(record(workdir), record(self.straight))


class DiskFullTest(chex.TestCase):

  @pytest.mark.slow   # trains twice
  def test_failed_save_is_a_clear_error_and_keeps_earlier_checkpoints(self):
    workdir = self.create_tempdir().full_path
    cfg = fixtures.recall({**OVERRIDES, 'train.num_steps': 30})
    real_save = checkpoint.Checkpointer.save

    def save_until_full(ckpt, step, *args, **kwargs):
      if step > 10:
        raise OSError(28, 'No space left on device')
      return real_save(ckpt, step, *args, **kwargs)

    with mock.patch.object(checkpoint.Checkpointer, 'save', save_until_full):
      with self.assertRaisesRegex(OSError, 'No space left on device'):
        train.train_and_evaluate(cfg, workdir)
    step, _ = final_state(workdir)
    self.assertEqual(step, 10)   # the earlier checkpoint restores
    # The same command, with space again, resumes from it and finishes.
    state, _ = train.train_and_evaluate(cfg, workdir)
    self.assertEqual(int(state.step), 30)

  def test_orbax_write_failure_names_the_intact_steps(self):
    directory = self.create_tempdir().full_path
    ckpt = checkpoint.Checkpointer(directory, max_to_keep=3, best_metric='loss', best_mode='min')
    state = {'w': np.arange(4.0)}
    ckpt.save(1, state, loop_state={})
    ckpt.wait_until_finished()
    disk_full = OSError(28, 'No space left on device')
    with mock.patch.object(ckpt._manager, 'save', side_effect=disk_full):  # pylint: disable=protected-access
      with self.assertRaisesRegex(OSError, r'Could not write checkpoint step 2 .*No space left on device.*'
                                  r'Earlier checkpoints are untouched \(steps \[1\]\)'):
        ckpt.save(2, state, loop_state={})
    self.assertEqual(ckpt.restore(state)[0], 1)
    ckpt.close()
