"""model.scan_layers and model.remat: the same function and gradients as the plain layer stack, a compiled program
that does not grow with depth, less memory kept for the backward pass, and checkpoints that load across layouts."""

import chex
import fixtures
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from lm_jax import checkpoint
from lm_jax import models


def tiny(name, **overrides):
  extra = {} if name == 'transformer' else {'positions': 'none'}
  if name == 'griffin':
    extra['attention_window'] = 8
  return fixtures.model(name, 'lm', **{'num_layers': 3, 'dropout': 0.0, **extra, **overrides})


def init(model_config, x):
  model = models.get_model(model_config, vocab_size=40, max_len=x.shape[1])
  return model, model.init(jax.random.PRNGKey(0), x)['params']


def loss_and_grads(model, params, x):
  return jax.value_and_grad(lambda p: jnp.mean(model.apply({'params': p}, x, train=True) ** 2))(params)


def stacked(params, group=1):
  """Unscanned params in the scanned layout (checkpoint.convert_layer_layout), nested again; `group` blocks per
  scanned layer (griffin: 3, recurrent, recurrent, attention)."""
  flat = {k: np.asarray(v) for k, v in checkpoint._flatten(params).items()}
  return checkpoint._nest(checkpoint.convert_layer_layout(flat, scanned=True, group=group))


class ScanAndRematTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.x = jnp.asarray(np.random.default_rng(0).integers(1, 40, (4, 16)), jnp.int32)

  def test_scanned_layers_compute_the_plain_stack_and_its_gradients(self):
    check_scanned(self, 'transformer')

  def test_remat_keeps_the_gradients(self):
    check_remat(self, 'transformer', 'full')

  def test_the_scanned_program_does_not_grow_with_depth(self):
    sizes = {}
    for depth in (4, 32):
      model = models.get_model(tiny('transformer', num_layers=depth, scan_layers=True), vocab_size=40, max_len=16)
      params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), self.x))['params']
      grad = jax.jit(jax.grad(lambda p, m=model: m.apply({'params': p}, self.x, train=True).sum()))
      sizes[depth] = len(grad.lower(params).as_text().splitlines())
    self.assertEqual(sizes[4], sizes[32])

  def test_init_from_loads_a_checkpoint_of_the_other_layout(self):
    _, params = init(tiny('griffin'), self.x)
    _, scanned_params = init(tiny('griffin', scan_layers=True), self.x)
    tmp = self.create_tempdir().full_path
    for source, target, expected in ((params, scanned_params, stacked(params, 3)), (stacked(params, 3), params, params)):
      ckpt = checkpoint.Checkpointer(f'{tmp}/{len(jax.tree.leaves(target))}_{id(target)}', max_to_keep=1,
                                     best_metric='loss', best_mode='min')
      ckpt.save(1, {'params': source}, loop_state={})
      ckpt.wait_until_finished()
      ckpt.close()
      loaded = checkpoint.load_params(str(ckpt.directory), jax.tree.map(jnp.zeros_like, target))
      chex.assert_trees_all_equal(loaded, expected)


class EveryMixerScanAndRematTest(parameterized.TestCase):
  pytestmark = pytest.mark.slow

  def setUp(self):
    super().setUp()
    self.x = jnp.asarray(np.random.default_rng(0).integers(1, 40, (4, 16)), jnp.int32)

  @parameterized.parameters('mamba', 'griffin', 'linear_attention')
  def test_scanned_layers_compute_the_plain_stack_and_its_gradients(self, name):
    check_scanned(self, name)

  @parameterized.parameters(('transformer', 'dots'), ('lstm', 'dots'), ('rg_lru', 'full'), ('mamba', 'dots'))
  def test_remat_keeps_the_gradients(self, name, remat):
    check_remat(self, name, remat)

  def test_full_remat_of_scanned_layers_keeps_less_for_the_backward_pass(self):
    temp = {}
    for remat in ('none', 'full'):
      config = tiny('transformer', num_layers=12, d_model=64, mlp_dim=256, num_heads=4, remat=remat, scan_layers=True)
      model = models.get_model(config, vocab_size=64, max_len=128)
      x = jnp.ones((8, 128), jnp.int32)
      params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), x))['params']
      grad = jax.jit(jax.grad(lambda p, m=model: m.apply({'params': p}, x, train=True).sum()))
      temp[remat] = grad.lower(params).compile().memory_analysis().temp_size_in_bytes
    self.assertLess(temp['full'], temp['none'] / 2, temp)


def check_scanned(test, name):
  """The scanned stack of `name` equals the plain one in loss and gradients."""
  group = 3 if name == 'griffin' else 1
  plain, params = init(tiny(name), test.x)
  scanned, scanned_params = init(tiny(name, scan_layers=True), test.x)
  chex.assert_trees_all_equal_shapes(stacked(params, group), scanned_params)
  loss, grads = loss_and_grads(plain, params, test.x)
  scanned_loss, scanned_grads = loss_and_grads(scanned, stacked(params, group), test.x)
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)
  chex.assert_trees_all_close(scanned_grads, stacked(grads, group), rtol=1e-4, atol=1e-6)


def check_remat(test, name, remat):
  """`remat` leaves the loss and the gradients of `name` as they are."""
  plain, params = init(tiny(name), test.x)
  rematted, _ = init(tiny(name, remat=remat), test.x)
  loss, grads = loss_and_grads(plain, params, test.x)
  remat_loss, remat_grads = loss_and_grads(rematted, params, test.x)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  chex.assert_trees_all_close(remat_grads, grads, rtol=1e-5, atol=1e-7)
