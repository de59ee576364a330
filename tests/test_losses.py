"""lm_jax.losses.fused_head_cross_entropy against optax on materialized logits: values and gradients."""

import functools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm_jax import losses

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


class FusedHeadCrossEntropyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(('blocks_of_4', 4), ('one_block', 64), ('single_tokens', 1))
  def test_loss_and_gradients_equal_materialized_logits(self, chunk):
    h, table, bias, targets, weights = inputs(0)
    fused = functools.partial(losses.fused_head_cross_entropy, chunk)
    got = self.variant(fused)(h, table, bias, targets, weights)
    chex.assert_trees_all_close(got, materialized(h, table, bias, targets, weights), rtol=1e-5, atol=1e-5)
    self.assertGreater(float(got[1]), 0.0)

    def scalar(fn):
      return lambda h, table, bias: 3.0 * fn(h, table, bias, targets, weights)[0]

    expected = jax.grad(scalar(materialized), argnums=(0, 1, 2))(h, table, bias)
    grads = self.variant(jax.grad(scalar(fused), argnums=(0, 1, 2)))(h, table, bias)
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-5)
    # Rows of weight 0 get no gradient; the others do.
    np.testing.assert_array_equal(np.asarray(grads[0])[np.asarray(weights) == 0], 0.0)
    self.assertTrue(np.all(np.abs(np.asarray(grads[0])[np.asarray(weights) == 1]).sum(-1) > 0))

  def test_bfloat16_inputs_close_to_float32(self):
    h, table, bias, targets, weights = inputs(1)
    loss32, _ = losses.fused_head_cross_entropy(4, h, table, bias, targets, weights)
    loss16, _ = losses.fused_head_cross_entropy(4, h.astype(jnp.bfloat16), table, bias, targets, weights)
    self.assertEqual(loss16.dtype, jnp.float32)
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    dh = jax.grad(lambda h: losses.fused_head_cross_entropy(4, h, table, bias, targets, weights)[0])(
        h.astype(jnp.bfloat16))
    self.assertEqual(dh.dtype, jnp.bfloat16)
