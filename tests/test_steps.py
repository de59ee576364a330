"""The norm metrics: the step's gradient norms, computed when asked or when the loss is not finite, and the loop's
param and update norms, equal to a float64 reference and never changing the update. (The row-gradient path of the
step: tests/test_row_gradients.py.)"""

import chex
import jax
import jax.numpy as jnp
import model_helpers
import numpy as np
import pytest
import optax

from experiments import base
from lm_jax import steps
from lm_jax import train

VOCAB, BATCH, LENGTH = 29, 4, 8


def classifier():
  config = base.get_config().model
  config.update(dict(name='transformer', task='classification', num_classes=2, num_layers=1, d_model=16,
                     num_heads=2, mlp_dim=32, dropout=0.0))
  return model_helpers.make_model(config, vocab=VOCAB, max_len=LENGTH, scale=0.3)


def batch(weights=1.0):
  ids = model_helpers.random_ids(1, (BATCH, LENGTH), vocab=VOCAB)
  return {'inputs': ids, 'label': jnp.asarray([0, 1, 1, 0]), 'weights': jnp.full((BATCH,), weights, jnp.float32)}


def float64_norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(leaf, np.float64))) for leaf in jax.tree.leaves(tree))))


class NormMetricsTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.module, self.params = classifier()
    self.optimizer = optax.adamw(1e-2, weight_decay=0.1)
    self.step = steps.make_train_step(self.module, self.optimizer, train.make_mesh(), 1)

  def run_step(self, with_norms, the_batch):
    state = steps.TrainState(step=jnp.array(0, jnp.int32), params=jax.tree.map(jnp.copy, self.params),
                             opt_state=self.optimizer.init(self.params), rng=jax.random.key(1))
    new_state, metrics = self.step(state, the_batch, with_norms)   # the state is donated: a fresh copy each call
    return jax.device_get(new_state.params), jax.device_get(metrics)

  def test_norms_when_asked_equal_float64_and_leave_the_update_alone(self):
    new_params, metrics = self.run_step(True, batch())
    mean_loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        self.module.apply({'params': p}, batch()['inputs']), batch()['label']))
    grads = jax.jit(jax.grad(mean_loss))(self.params)
    update = jax.tree.map(lambda new, old: np.asarray(new, np.float64) - np.asarray(old, np.float64), new_params,
                          jax.device_get(self.params))
    expected = {'grad_norm': float64_norm(grads),
                'grad_norms': {f'{top}/{name}': float64_norm(sub) for top, group in grads.items()
                               for name, sub in group.items()}}
    chex.assert_trees_all_close({k: metrics[k] for k in expected}, expected, rtol=1e-5)
    chex.assert_trees_all_close(steps.param_norms(self.params, new_params),
                                {'param_norm': float64_norm(self.params), 'update_norm': float64_norm(update)},
                                rtol=1e-5)
    self.assertGreater(float64_norm(update), 1e-3)

    unasked_params, unasked = self.run_step(False, batch())
    chex.assert_trees_all_equal(unasked_params, new_params)
    self.assertEqual(unasked['loss'], metrics['loss'])
    chex.assert_trees_all_equal(jax.tree.map(np.isnan, {k: unasked[k] for k in expected}),
                                jax.tree.map(lambda _: True, expected))

  @pytest.mark.slow
  def test_a_nonfinite_loss_computes_the_gradient_norms_unasked(self):
    # A label whose logit is -inf: the loss is inf, its gradient (softmax - one-hot) stays finite.
    self.params = jax.tree.map(jnp.copy, self.params)
    self.params['classifier_head']['output']['bias'] = self.params['classifier_head']['output']['bias'].at[0].set(
        -jnp.inf)
    the_batch = {**batch(), 'label': jnp.zeros((BATCH,), jnp.int32)}
    _, metrics = self.run_step(False, the_batch)
    self.assertEqual(metrics['loss'], np.inf)
    mean_loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        self.module.apply({'params': p}, the_batch['inputs']), the_batch['label']))
    expected = float64_norm(jax.jit(jax.grad(mean_loss))(self.params))
    self.assertTrue(np.isfinite(expected))
    np.testing.assert_allclose(metrics['grad_norm'], expected, rtol=1e-5)
