"""save → restore is identical (with shardings); retention keeps latest + best; damaged steps fall back; init_from."""

import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm_jax import checkpoint


def _replicated():
  mesh = jax.make_mesh((2,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _random_params(seed, head_classes=3):
  rng = np.random.default_rng(seed)
  return {
      'encoder': {'embed': rng.standard_normal((13, 8)).astype(np.float32),
                  'dense': {'kernel': rng.standard_normal((8, 8)).astype(np.float32),
                            'bias': rng.standard_normal(8).astype(np.float32)}},
      'head': {'kernel': rng.standard_normal((8, head_classes)).astype(np.float32),
               'bias': rng.standard_normal(head_classes).astype(np.float32)},
  }


def _random_state(seed):
  """params, an Adam state after one update (non-zero moments), a step counter and a typed PRNG key, replicated."""
  params = jax.tree.map(jnp.asarray, _random_params(seed))
  tx = optax.adam(1e-3)
  grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)
  _, opt_state = jax.jit(tx.update)(grads, tx.init(params), params)   # one compile, not one per op
  state = {'params': params, 'opt_state': opt_state, 'step': jnp.asarray(seed, jnp.int32), 'rng': jax.random.key(seed)}
  return jax.device_put(state, _replicated())


def _checkpointer(directory, max_to_keep=2, best_mode='max'):
  return checkpoint.Checkpointer(directory, max_to_keep=max_to_keep, best_metric='accuracy', best_mode=best_mode)


def _kept_steps(directory):
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _key_data(tree):
  """Typed PRNG keys as their uint32 data: chex cannot compare key arrays directly."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree)


def _assert_states_equal(got, expected):
  chex.assert_trees_all_equal(_key_data(got), _key_data(expected))
  chex.assert_trees_all_equal_structs(got, expected)


class SaveRestoreTest(parameterized.TestCase):

  @parameterized.named_parameters(('concrete_target', False), ('abstract_target', True))
  def test_roundtrip_is_identical_and_replicated(self, abstract):
    directory = self.create_tempdir().full_path
    state = _random_state(5)
    ckpt = _checkpointer(directory)
    self.assertIsNone(ckpt.restore(state))
    self.assertTrue(ckpt.save(5, state, loop_state={'epoch': 1, 'position': 123}))
    ckpt.close()

    target = state
    if abstract:
      target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            jax.eval_shape(lambda: state))
    resumed = _checkpointer(directory)
    self.assertEqual(resumed.latest_step(), 5)
    step, restored, loop_state = resumed.restore(target)
    self.assertEqual((step, loop_state), (5, {'epoch': 1, 'position': 123}))
    _assert_states_equal(restored, state)
    for leaf in jax.tree.leaves(restored):
      self.assertTrue(leaf.sharding.is_equivalent_to(_replicated(), leaf.ndim), leaf.sharding)
    # Mixing restored arrays with other replicated arrays under jit needs them on the same devices.
    total = jax.jit(lambda s, x: s['step'] + jnp.sum(s['params']['head']['bias']) + x)(
        restored, jax.device_put(jnp.float32(1), _replicated()))
    np.testing.assert_allclose(total, 6 + np.sum(np.asarray(state['params']['head']['bias'])), rtol=1e-6)
    resumed.close()


class RetentionTest(parameterized.TestCase):

  @parameterized.parameters(('max', [0.5, 0.9, 0.6, 0.7, None]), ('min', [0.5, 0.1, 0.6, 0.2, None]))
  def test_keeps_latest_and_best(self, best_mode, accuracies):
    directory = self.create_tempdir().full_path
    state = _random_state(1)
    ckpt = _checkpointer(directory, max_to_keep=2, best_mode=best_mode)
    for step, accuracy in enumerate(accuracies, start=1):
      metrics = None if accuracy is None else {'accuracy': accuracy, 'loss': 1.0}
      ckpt.save(step, state, loop_state={'position': step}, metrics=metrics)
      ckpt.wait_until_finished()
    # Step 2 is the best; it rotated out of the latest two (4, 5) long ago and is still there.
    self.assertEqual(_kept_steps(directory), [2, 4, 5])
    self.assertEqual((ckpt.latest_step(), ckpt.best_step()), (5, 2))
    ckpt.close()

    resumed = _checkpointer(directory, max_to_keep=2, best_mode=best_mode)  # metrics are read back from disk
    resumed.save(6, state, loop_state={'position': 6})
    resumed.wait_until_finished()
    self.assertEqual(_kept_steps(directory), [2, 5, 6])
    self.assertEqual(resumed.restore(state)[0], 6)
    self.assertFalse(resumed.save(6, state, loop_state={'position': 6}))
    with self.assertRaisesRegex(ValueError, 'lack best_metric'):
      resumed.save(7, state, loop_state={}, metrics={'loss': 0.3})
    resumed.close()


# Orbax leaves the failed read's asyncio futures behind; they complain when collected.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
class DamagedStepTest(parameterized.TestCase):

  def _damage(self, step_dir, how):
    state_dir = os.path.join(step_dir, 'state')
    if how == 'missing_data':
      data_files = [os.path.join(root, name) for root, _, names in os.walk(state_dir)
                    for name in names if os.path.basename(root) == 'd']
      self.assertNotEmpty(data_files)
      for path in data_files:
        os.remove(path)
    elif how == 'corrupt_manifest':
      with open(os.path.join(state_dir, 'manifest.ocdbt'), 'r+b') as f:
        f.write(b'\x00garbage\xff' * 4)
    elif how == 'missing_loop_state':
      os.remove(os.path.join(step_dir, 'loop_state', 'metadata'))

  @parameterized.parameters('missing_data', 'corrupt_manifest', 'missing_loop_state')
  def test_falls_back_to_previous_step(self, how):
    directory = self.create_tempdir().full_path
    ckpt = _checkpointer(directory, max_to_keep=3)
    states = {step: _random_state(step) for step in (1, 2, 3)}
    for step, state in states.items():
      ckpt.save(step, state, loop_state={'position': step})
    ckpt.close()
    self._damage(os.path.join(directory, '3'), how)

    resumed = _checkpointer(directory, max_to_keep=3)
    with self.assertLogs('lm_jax.checkpoint', 'WARNING') as logs:
      step, restored, loop_state = resumed.restore(states[3])
    self.assertEqual((step, loop_state), (2, {'position': 2}))
    _assert_states_equal(restored, states[2])
    self.assertTrue(any('step 3' in line and 'damaged' in line for line in logs.output), logs.output)
    self.assertEqual(resumed.latest_step(), 2)
    # Training resumes from step 2 and reaches step 3 again: the damaged step makes way for the new one.
    self.assertTrue(resumed.save(3, states[3], loop_state={'position': 3}))
    step, restored, _ = resumed.restore(states[3])
    self.assertEqual(step, 3)
    _assert_states_equal(restored, states[3])
    resumed.close()

  def test_nothing_readable_raises(self):
    directory = self.create_tempdir().full_path
    ckpt = _checkpointer(directory)
    ckpt.save(1, _random_state(1), loop_state={})
    ckpt.close()
    self._damage(os.path.join(directory, '1'), 'missing_data')
    resumed = _checkpointer(directory)
    with self.assertRaisesRegex(ValueError, 'No checkpoint .* could be restored:\nstep 1'):
      resumed.restore(_random_state(1))
    # Unreadable everywhere may mean a changed state structure rather than damage: later saves delete nothing.
    resumed.save(2, _random_state(2), loop_state={})
    resumed.close()
    self.assertEqual(_kept_steps(directory), [1, 2])


class LoadParamsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.workdir)
    cls.saved = _random_state(11)
    saved_head = dict(cls.saved)  # a pretraining run: its head is called mlm_head and is not in the classifier
    saved_head['params'] = {'encoder': cls.saved['params']['encoder'], 'mlm_head': cls.saved['params']['head']}
    ckpt = _checkpointer(os.path.join(cls.workdir, 'checkpoints'))
    ckpt.save(4, cls.saved, loop_state={})
    ckpt.save(8, saved_head, loop_state={})
    ckpt.close()

  def _target(self, head_classes=3):
    return jax.device_put(jax.tree.map(jnp.asarray, _random_params(99, head_classes)), _replicated())

  def test_matching_tree_from_step_dir(self):
    loaded = checkpoint.load_params(os.path.join(self.workdir, 'checkpoints', '4'), self._target())
    chex.assert_trees_all_equal(loaded, self.saved['params'])
    for leaf in jax.tree.leaves(loaded):
      self.assertTrue(leaf.sharding.is_equivalent_to(_replicated(), leaf.ndim))

  def test_head_reinit_from_workdir_takes_latest(self):
    target = self._target(head_classes=5)
    with self.assertLogs('lm_jax.checkpoint', 'INFO') as logs:
      loaded = checkpoint.load_params(self.workdir, target, reinit='^head/')
    chex.assert_trees_all_equal(loaded['encoder'], self.saved['params']['encoder'])
    chex.assert_trees_all_equal(loaded['head'], target['head'])
    self.assertTrue(any('mlm_head/kernel' in line for line in logs.output), logs.output)  # extra params: logged
    self.assertTrue(any('latest step 8' in line for line in logs.output), logs.output)

  def test_mismatches_listed_without_reinit(self):
    target = self._target(head_classes=5)
    target['encoder']['dense']['bias'] = target['encoder']['dense']['bias'].astype(jnp.bfloat16)
    with self.assertRaises(ValueError) as error:
      checkpoint.load_params(self.workdir, target)
    message = str(error.exception)
    for expected in ('3 parameter(s)', 'init_from_reinit', 'head/kernel: missing', 'head/bias: missing',
                     'encoder/dense/bias: checkpoint float32[8], target bfloat16[8]'):
      self.assertIn(expected, message)
    self.assertNotIn('encoder/embed', message)
    with self.assertRaisesRegex(ValueError, "'decoder' matches no parameter path"):
      checkpoint.load_params(self.workdir, target, reinit='decoder')
    with self.assertRaisesRegex(ValueError, 'neither a checkpoint step directory'):
      checkpoint.load_params(self.create_tempdir().full_path, target)


if __name__ == '__main__':
  absltest.main()
