"""The mesh and the sharding rules (lm_jax/sharding.py), and the sharded train step against the data-parallel one.

In process the tests see 2 CPU devices (conftest.py): fsdp=2 and tensor=2 against data=2. The 8-device meshes the
issue asks for (fsdp=8, fsdp=4 × data=2, tensor=2 × data=4 against data=8; resume across mesh shapes) run in a
subprocess with 8 forced host devices (tests/sharded_runs.py), marked slow.
"""

import json
import os
import subprocess
import sys

import chex
import fixtures
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from lm_jax import models
from lm_jax import optim
from lm_jax import sharding
from lm_jax import steps
from lm_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ('transformer', 'rnn', 'lstm', 'gru', 'linear_attention', 'mamba', 'rg_lru', 'griffin')


def mesh(**sizes):
  return sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1, **sizes})


def tiny(name, task='lm', **overrides):
  extra = {} if name == 'transformer' else {'positions': 'none'}
  if name == 'griffin':
    extra['num_layers'] = 3   # two recurrent blocks and one attention block
    extra['attention_window'] = 8
  return fixtures.model(name, task, **{**extra, **overrides})


def abstract_params(model_config, vocab_size=64, max_len=16):
  model = models.get_model(model_config, vocab_size=vocab_size, max_len=max_len)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, max_len), jnp.int32)))['params']


class MeshTest(parameterized.TestCase):

  @parameterized.parameters(
      ({'data': -1, 'fsdp': 1, 'tensor': 1}, 8, {'data': 8, 'fsdp': 1, 'tensor': 1}),
      ({'data': 2, 'fsdp': -1, 'tensor': 1}, 8, {'data': 2, 'fsdp': 4, 'tensor': 1}),
      ({'data': -1, 'fsdp': 1, 'tensor': 2}, 8, {'data': 4, 'fsdp': 1, 'tensor': 2}),
      ({'data': 1, 'fsdp': 8, 'tensor': 1}, 8, {'data': 1, 'fsdp': 8, 'tensor': 1}))
  def test_axis_sizes_fill_the_minus_one(self, config, devices, expected):
    self.assertEqual(sharding.axis_sizes(config, devices), expected)

  @parameterized.parameters(
      ({'data': -1, 'fsdp': -1, 'tensor': 1}, 'at most one is -1'),
      ({'data': 3, 'fsdp': 1, 'tensor': 1}, 'spans 3 devices, but there are 8'),
      ({'data': -1, 'fsdp': 3, 'tensor': 1}, 'do not divide'),
      ({'data': 0, 'fsdp': 1, 'tensor': 1}, 'size >= 1'))
  def test_bad_mesh_is_an_error_naming_it(self, config, message):
    with self.assertRaisesRegex(ValueError, message):
      sharding.axis_sizes(config, 8)

  def test_the_rnn_cpu_schedule_is_refused_on_a_sharded_mesh(self):
    with self.assertRaisesRegex(ValueError, 'model.fast_rnn=False'):
      sharding.check_model(tiny('lstm'), mesh(fsdp=2))
    sharding.check_model(tiny('lstm'), mesh(data=2))
    sharding.check_model(tiny('lstm', fast_rnn=False), mesh(fsdp=2))

  def test_the_default_mesh_is_every_device_on_data(self):
    self.assertEqual(dict(train.make_mesh().shape), {'data': 2, 'fsdp': 1, 'tensor': 1})
    self.assertTrue(sharding.data_parallel_only(train.make_mesh()))


class RulesTest(parameterized.TestCase):

  @parameterized.product(name=FAMILIES, task=('lm', 'classification'))
  def test_every_parameter_of_every_model_has_logical_axes_of_its_rank(self, name, task):
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(tiny(name, task)))[0]:
      path = sharding.path_str(path)
      self.assertLen(sharding.logical_axes(path, leaf.ndim), leaf.ndim, path)

  def test_fsdp_splits_the_width_and_tensor_the_heads_mlp_and_vocabulary(self):
    params = abstract_params(tiny('transformer', mlp='swiglu', tie_embeddings=False))
    for sizes, expected in (
        ({'fsdp': 2}, {'decoder/token_embed/embedding': P(None, 'fsdp'),
                       'decoder/layers_0/attention/query/kernel': P('fsdp', None, None),
                       'decoder/layers_0/mlp_out/kernel': P(None, 'fsdp'),
                       'decoder/layers_0/attention_norm/scale': P(None)}),
        ({'tensor': 2}, {'decoder/token_embed/embedding': P('tensor', None),
                         'decoder/layers_0/attention/query/kernel': P(None, 'tensor', None),
                         'decoder/layers_0/attention/out/kernel': P('tensor', None, None),
                         'decoder/layers_0/mlp_gate/kernel': P(None, 'tensor'),
                         'lm_head/output/kernel': P(None, 'tensor')})):
      specs = {sharding.path_str(p): s.spec for p, s in
               jax.tree_util.tree_flatten_with_path(sharding.state_shardings(params, mesh(**sizes)))[0]}
      for path, spec in expected.items():
        self.assertEqual(specs[path], spec, f'{sizes} {path}')

  def test_a_dimension_that_does_not_divide_is_an_error_naming_parameter_and_axis(self):
    params = abstract_params(tiny('transformer', num_heads=1, d_model=16))   # one head cannot split over 2
    with self.assertRaisesRegex(ValueError, r"attention/key/bias.*dimension 0 \('heads', size 1\).*'tensor'"):
      sharding.state_shardings(params, mesh(tensor=2))

  def test_optimizer_statistics_follow_their_parameters_and_factored_ones_are_replicated(self):
    params = abstract_params(tiny('transformer', d_model=256, mlp_dim=256, num_heads=2))
    for name, factored in (('adamw', False), ('adafactor', True)):
      optimizer = optim.make_optimizer(fixtures.config({'optim.name': name}).optim, 10)
      state = jax.eval_shape(optimizer.init, params)
      shardings = sharding.state_shardings(state, mesh(fsdp=2))
      specs = {sharding.path_str(p): (leaf.shape, s.spec) for (p, s), leaf in
               zip(jax.tree_util.tree_flatten_with_path(shardings)[0], jax.tree.leaves(state))}
      kernel = [v for p, v in specs.items() if p.endswith('layers_0/mlp_in/kernel')]
      self.assertNotEmpty(kernel, name)
      for shape, spec in kernel:
        if len(shape) == 2:
          self.assertEqual(spec, P('fsdp', None), name)   # mu, nu: as the kernel
        else:
          self.assertTrue(factored, f'{name}: {shape}')
          self.assertEqual(spec, P(), name)               # Adafactor's row / column statistics


P = jax.sharding.PartitionSpec


def run_steps(config, mesh_, batches):
  """Losses and final params of len(batches) train steps of `config`'s model on `mesh_` (no data pipeline)."""
  model = models.get_model(config.model, vocab_size=32, max_len=config.data.max_len)
  optimizer = optim.make_optimizer(config.optim, 100)
  state, shardings = train.init_train_state(config, model, optimizer, mesh_)
  step = steps.make_train_step(model, optimizer, mesh_, 1, state_shardings=shardings)
  losses = []
  for batch in batches:
    state, metrics = step(state, train.to_global(batch, mesh_), False)
    losses.append(float(metrics['loss']))
  return np.array(losses), state


def check_sharded_steps(test, name):
  """fsdp=2 and tensor=2 give data=2's losses over 3 steps, and each device holds half of every split leaf."""
  overrides = {**fixtures.RECALL, 'model.name': name}
  if name != 'transformer':
    overrides.update({'model.positions': 'none', 'model.smeared_keys': False, 'model.attention_bias': 'none'})
  if name == 'lstm':
    overrides['model.fast_rnn'] = False   # sharding.check_model
  config = fixtures.recall(overrides)
  rng = np.random.default_rng(0)
  batches = [{'inputs': rng.integers(1, 32, (8, 32)).astype(np.int32),
              'targets': rng.integers(1, 32, (8, 32)).astype(np.int32),
              'weights': (rng.random((8, 32)) < 0.5).astype(np.float32)} for _ in range(3)]
  reference, _ = run_steps(config, mesh(data=2), batches)
  for sizes in ({'fsdp': 2}, {'tensor': 2}):
    losses, state = run_steps(config, mesh(**sizes), batches)
    np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=str(sizes))
    axis = next(iter(sizes))
    split = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
      spec = leaf.sharding.spec
      if axis in jax.tree.leaves(tuple(spec)):
        split += 1
        dim = [i for i, s in enumerate(spec) if s == axis][0]
        for shard in leaf.addressable_shards:   # each device holds 1/2 of the leaf
          test.assertEqual(shard.data.shape[dim] * 2, leaf.shape[dim], sharding.path_str(path))
    test.assertGreater(split, 0, f'{sizes}: nothing was sharded')


class ShardedStepTest(parameterized.TestCase):

  def test_a_sharded_transformer_trains_as_a_data_parallel_one(self):
    check_sharded_steps(self, 'transformer')


class ShardedRecurrentStepTest(parameterized.TestCase):
  pytestmark = pytest.mark.slow

  @parameterized.parameters('lstm', 'mamba')
  def test_a_sharded_recurrent_model_trains_as_a_data_parallel_one(self, name):
    check_sharded_steps(self, name)


@pytest.mark.slow
def test_eight_devices_meshes_agree_and_resume_across_shapes(tmp_path):
  """tests/sharded_runs.py on 8 forced host devices: see its docstring for what it measures."""
  out = tmp_path / 'result.json'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  result = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'sharded_runs.py'), str(tmp_path), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(out.read_text())
  for model, by_mesh in report['losses'].items():
    reference = np.array(by_mesh['data=8'])
    assert len(reference) == 20
    for name, losses in by_mesh.items():
      np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=f'{model} {name}')
  for name, fraction in report['held_fraction'].items():
    assert fraction == pytest.approx(1 / 8), name   # fsdp=8: each device holds 1/8 of each sharded leaf
  assert report['resume']['bit_exact'], report['resume']
  chex.assert_trees_all_close(report['resume']['one_device_loss'], report['resume']['loss'], rtol=1e-6)


@pytest.mark.slow
def test_two_processes_with_parameters_sharded_over_both_train_and_resume(tmp_path):
  """The multi-host job of tests/test_multihost.py (one CPU device per process) on mesh fsdp=2: each process holds
  half of every sharded parameter; 20 steps, then a resume to 40, give the losses of a one-process data=2 run."""
  import test_multihost as multihost   # pylint: disable=import-outside-toplevel

  def launch(workdir, num_steps):
    port = multihost.free_port()
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
    return [subprocess.Popen(multihost.command(workdir, num_steps) + [
        '--config.mesh.data=1', '--config.mesh.fsdp=2', f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2', f'--process_id={i}', '--heartbeat_timeout=20'], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]

  sharded, straight = str(tmp_path / 'fsdp'), str(tmp_path / 'straight')
  outputs = multihost.finish(launch(sharded, 20))
  assert "Mesh {'data': 1, 'fsdp': 2, 'tensor': 1}" in outputs[0][1]
  multihost.finish(launch(sharded, 40))
  multihost.single(straight, 40)
  (lines, results), (ref_lines, ref_results) = multihost.read(sharded), multihost.read(straight)
  assert [(l['step'], l['split']) for l in lines] == [(l['step'], l['split']) for l in ref_lines]
  for line, ref in zip(lines, ref_lines):
    np.testing.assert_allclose(line['loss'], ref['loss'], rtol=1e-5, err_msg=str(line))
  np.testing.assert_allclose(results['validation']['loss'], ref_results['validation']['loss'], rtol=1e-5)
