"""lm_jax.losses.fused_head_cross_entropy against optax on materialized logits: values and gradients, alone and as
the train step's loss of the lm and mlm heads."""

import functools
from unittest import mock

from absl.testing import parameterized
import chex
import fixtures
import jax
import jax.numpy as jnp
import model_helpers
import numpy as np
import optax

from lm_jax import losses
from lm_jax import models
from lm_jax import steps
from lm_jax import train

N, D, V = 11, 8, 37


def materialized(h, table, bias, targets, weights):
  logits = jnp.einsum('nd,vd->nv', h, table, preferred_element_type=jnp.float32) + bias[None, :]
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(nll * weights), jnp.sum((jnp.argmax(logits, -1) == targets) * weights)


def inputs(seed):
  keys = jax.random.split(jax.random.key(seed), 5)
  h = jax.random.normal(keys[0], (N, D))
  table = jax.random.normal(keys[1], (V, D))
  bias = jax.random.normal(keys[2], (V,))
  targets = jax.random.randint(keys[3], (N,), 0, V)
  # Every other target is the argmax, so the count of correct predictions is not trivially 0.
  targets = jnp.where(jnp.arange(N) % 2 == 0, jnp.argmax(h @ table.T + bias[None, :], axis=-1), targets)
  weights = (jax.random.uniform(keys[4], (N,)) < 0.7).astype(jnp.float32)
  return h, table, bias, targets, weights


# The reference, compiled once for every chunk size and variant below (eagerly, each of its ops compiles apart).
materialized_jit = jax.jit(materialized)
materialized_grads = jax.jit(jax.grad(lambda h, table, bias, targets, weights: 3.0 * materialized(
    h, table, bias, targets, weights)[0], argnums=(0, 1, 2)))


class FusedHeadCrossEntropyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(('blocks_of_4', 4), ('one_block', 64), ('single_tokens', 1))
  def test_loss_and_gradients_equal_materialized_logits(self, chunk):
    h, table, bias, targets, weights = inputs(0)
    fused = functools.partial(losses.fused_head_cross_entropy, chunk)
    got = self.variant(fused)(h, table, bias, targets, weights)
    chex.assert_trees_all_close(got, materialized_jit(h, table, bias, targets, weights), rtol=1e-5, atol=1e-5)
    self.assertGreater(float(got[1]), 0.0)

    expected = materialized_grads(h, table, bias, targets, weights)
    scalar = lambda h, table, bias: 3.0 * fused(h, table, bias, targets, weights)[0]
    grads = self.variant(jax.grad(scalar, argnums=(0, 1, 2)))(h, table, bias)
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-5)
    # Rows of weight 0 get no gradient; the others do.
    np.testing.assert_array_equal(np.asarray(grads[0])[np.asarray(weights) == 0], 0.0)
    self.assertTrue(np.all(np.abs(np.asarray(grads[0])[np.asarray(weights) == 1]).sum(-1) > 0))

  def test_bfloat16_inputs_close_to_float32(self):
    h, table, bias, targets, weights = inputs(1)
    fused = jax.jit(functools.partial(losses.fused_head_cross_entropy, 4))
    loss32, _ = fused(h, table, bias, targets, weights)
    loss16, _ = fused(h.astype(jnp.bfloat16), table, bias, targets, weights)
    self.assertEqual(loss16.dtype, jnp.float32)
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    dh = jax.jit(jax.grad(lambda h: fused(h, table, bias, targets, weights)[0]))(h.astype(jnp.bfloat16))
    self.assertEqual(dh.dtype, jnp.bfloat16)


def lm_batch(seed, *, batch=2, seq=8, vocab=V):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, (batch, seq)).astype(np.int32)
  weights = (rng.uniform(size=(batch, seq)) < 0.7).astype(np.float32)
  return {'inputs': jnp.asarray(ids), 'targets': jnp.asarray(np.roll(ids, -1, axis=1)),
          'weights': jnp.asarray(weights)}


class TrainLossTest(chex.TestCase):
  """The train step's loss of a vocabulary head (fused, from `HeadInputs`) equals the loss of the logits."""

  @parameterized.named_parameters(
      ('decoder_tied', 'transformer', 'lm', {}),
      ('decoder_untied', 'transformer', 'lm', {'tie_embeddings': False}),
      ('masked_lm', 'transformer', 'mlm', {}),
      ('lstm_lm', 'lstm', 'lm', {}))
  def test_fused_loss_and_gradients_equal_the_logits(self, name, task, overrides):
    module, params = model_helpers.make_model(fixtures.model(name, task, **overrides), vocab=V, max_len=8, scale=0.3)
    batch = lm_batch(0)
    dropout = {'dropout': jax.random.key(3)}
    self.assertIsInstance(jax.eval_shape(lambda: steps.apply_for_loss(module, params, batch, train=True, rngs=dropout)),
                          models.HeadInputs)

    def loss(params, outputs_of):
      sums = steps.loss_sums(outputs_of(params), batch)
      return sums['loss'] / 5.0, sums

    logits_of = lambda p: module.apply({'params': p}, batch['inputs'], train=True, rngs=dropout)
    head_inputs_of = lambda p: steps.apply_for_loss(module, p, batch, train=True, rngs=dropout)
    loss_and_grads = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (expected_loss, expected_sums), expected_grads = loss_and_grads(params, logits_of)
    (got_loss, got_sums), got_grads = loss_and_grads(params, head_inputs_of)
    chex.assert_trees_all_close((got_loss, got_sums), (expected_loss, expected_sums), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(got_grads, expected_grads, rtol=1e-5, atol=1e-5)
    self.assertGreater(float(jax.jit(optax.tree.norm)(got_grads)), 0.0)

  def test_classifier_gets_logits(self):
    module, params = model_helpers.make_model(fixtures.model('transformer', 'classification'), vocab=V, max_len=8,
                                              scale=0.3)
    batch = {'inputs': lm_batch(1)['inputs']}
    # Traced, not run: what comes back (and what is refused) is decided by the module's structure.
    self.assertEqual(jax.eval_shape(lambda: steps.apply_for_loss(module, params, batch)).shape, (2, 2))
    with self.assertRaisesRegex(ValueError, 'head_inputs=True is for the vocabulary heads'):
      jax.eval_shape(lambda: module.apply({'params': params}, batch['inputs'], head_inputs=True))

  def test_train_and_eval_steps_use_the_fused_loss(self):
    module, params = model_helpers.make_model(fixtures.model('transformer', 'lm'), vocab=V, max_len=8, scale=0.3)
    mesh = train.make_mesh()
    optimizer = optax.adamw(1e-3)
    state = steps.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params),
                             rng=jax.random.key(1))
    batch = lm_batch(2, batch=4)
    with mock.patch.object(losses, 'fused_head_cross_entropy', wraps=losses.fused_head_cross_entropy) as fused:
      jax.eval_shape(steps.make_train_step(module, optimizer, mesh, 1), state, batch, False)
      self.assertEqual(fused.call_count, 1)
      jax.eval_shape(steps.make_eval_step(module, mesh, None), params, batch)
      self.assertEqual(fused.call_count, 2)
