"""The masked LM's head on the masked positions only (data.max_predictions_per_seq): the data caps the masked
positions per row, and the loss gathers them: the same loss and gradients as the head over every position."""

import chex
import fixtures
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from lm_jax import models
from lm_jax import steps
from lm_jax.data import packing


class MaxPredictionsTest(parameterized.TestCase):

  @parameterized.parameters((128, 0.15, 20, 20), (64, 0.15, 0, 0), (64, 0.15, -1, 19), (128, 0.15, -1, 32),
                            (4, 0.9, -1, 4))
  def test_the_cap(self, max_len, probability, setting, expected):
    self.assertEqual(packing.max_predictions(max_len, probability, setting), expected)

  def test_a_negative_setting_other_than_minus_one_is_an_error(self):
    with self.assertRaisesRegex(ValueError, 'max_predictions_per_seq=-2'):
      packing.max_predictions(64, 0.15, -2)

  def test_bert_mask_keeps_at_most_the_cap_and_leaves_the_other_rows_alone(self):
    vocab = 50
    inputs = np.random.default_rng(0).integers(5, vocab, (64, 32)).astype(np.int32)
    kwargs = dict(probability=0.4, mask_id=1, maskable=np.arange(vocab) >= 5, random_ids=np.arange(5, vocab),
                  global_batch=64, rows=slice(0, 64))
    free = packing.bert_mask({'inputs': inputs}, np.random.default_rng(1), **kwargs)
    capped = packing.bert_mask({'inputs': inputs}, np.random.default_rng(1), max_predictions=12, **kwargs)
    counts = free['weights'].sum(1)
    self.assertTrue((counts > 12).any() and (counts <= 12).any())   # both kinds of rows occur
    np.testing.assert_array_equal(capped['weights'].sum(1), np.minimum(counts, 12))
    kept = counts <= 12
    np.testing.assert_array_equal(capped['weights'][kept], free['weights'][kept])
    np.testing.assert_array_equal(capped['inputs'][kept], free['inputs'][kept])
    self.assertTrue(np.all(capped['weights'] <= free['weights']))   # a capped row keeps a subset of its choices


class GatheredHeadTest(absltest.TestCase):

  def test_loss_and_gradients_equal_the_head_over_every_position(self):
    config = fixtures.model('transformer', 'mlm', d_model=32, mlp_dim=64)
    model = models.get_model(config, vocab_size=97, max_len=24)
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.integers(1, 97, (6, 24)), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), inputs)['params']
    weights = np.zeros((6, 24), np.float32)
    for row, count in enumerate((0, 1, 3, 5, 5, 2)):   # at most 5 per row, one row with none
      weights[row, rng.choice(24, count, replace=False)] = 1.0
    batch = {'inputs': inputs, 'targets': jnp.asarray(rng.integers(1, 97, (6, 24)), jnp.int32),
             'weights': jnp.asarray(weights)}

    def loss(p, predictions):
      sums = steps.loss_sums(steps.apply_for_loss(model, p, batch, train=False), batch, predictions=predictions)
      return sums['loss'] / sums['count'], sums

    (everywhere, sums), grads = jax.value_and_grad(loss, has_aux=True)(params, 0)
    (gathered, gathered_sums), gathered_grads = jax.value_and_grad(loss, has_aux=True)(params, 5)
    np.testing.assert_allclose(gathered, everywhere, rtol=1e-6)
    chex.assert_trees_all_close(gathered_sums, sums, rtol=1e-6)
    chex.assert_trees_all_close(gathered_grads, grads, rtol=1e-5, atol=1e-8)
    self.assertEqual(float(sums['count']), weights.sum())
