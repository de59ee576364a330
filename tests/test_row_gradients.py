"""Row gradients: a table only looked up gets its gradient as the rows the batch touched, and AdamW's update from
them equals the update from the dense gradient, for the optimizer alone (against float64 NumPy and optax) and for
whole train steps of four models, on two replicas, with and without gradient accumulation."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import fixtures
import jax
import jax.numpy as jnp
import model_helpers
import numpy as np
import pytest
from test_optim import _apply_updates as apply_updates
from test_optim import _expected as numpy_expected
from test_optim import _make as make_optimizer
from test_optim import _three_steps as three_steps

from experiments import base
from lm_jax import optim
from lm_jax import row_gradients
from lm_jax import steps
from lm_jax import train

# More rows than a batch's 32 lookups (else the step takes the dense path), ids drawn from the first 29: repeats.
VOCAB, LOOKED_UP_VOCAB, BATCH, LENGTH = 61, 29, 4, 8


class RowUpdateTest(chex.TestCase):
  """The embedding of `test_optim`'s tiny model, its gradient given as rows."""

  TABLE = "['Embed_0']['embedding']"
  IDS = [[3, 1, 3, 7, 3], [0, 3, 3, 3, 9], [10, 1, 5, 1, 1]]   # repeats; rows 2, 4, 6 and 8 never looked up

  def test_row_gradient_sums_repeated_ids(self):
    per_lookup = np.random.default_rng(1).standard_normal((2, 5, 6))
    ids = np.asarray(self.IDS[:2])
    rows = row_gradients.row_gradient(jnp.asarray(ids), jnp.asarray(per_lookup, jnp.float32), 11)
    dense = np.zeros((11, 6))
    np.add.at(dense, ids.reshape(-1), per_lookup.reshape(-1, 6))
    got = np.zeros((12, 6))   # slot 11: the out-of-range padding ids, whose rows must be zero
    got[np.asarray(rows.ids)] = np.asarray(rows.rows)
    np.testing.assert_allclose(got[:11], dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[11], 0.0)
    self.assertEqual(sorted(set(np.asarray(rows.ids)) - {11}), sorted(set(ids.reshape(-1))))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(('no_clip', 0.0), ('clip', 0.5))
  def test_rows_update_as_the_dense_gradient(self, clip_norm):
    c, params, grads_per_step = three_steps(clip_norm)
    rng = np.random.default_rng(3)
    row_grads_per_step = []
    for grads, ids in zip(grads_per_step, self.IDS):
      per_lookup = 3.0 * rng.standard_normal((len(ids), 6)).astype(np.float32)
      grads[self.TABLE] = np.zeros((11, 6), np.float32)
      np.add.at(grads[self.TABLE], ids, per_lookup)
      row_grads_per_step.append({**grads, self.TABLE: row_gradients.row_gradient(jnp.asarray(ids), per_lookup, 11)})
    tx = make_optimizer(c)
    update = functools.partial(row_gradients.adamw_update, tx, c, optim.learning_rate_schedule(c, total_steps=20))
    got, got_state = apply_updates(tx, row_grads_per_step, wrap=self.variant, update=update)
    expected = numpy_expected(c, params, grads_per_step)
    chex.assert_trees_all_close(got, expected, rtol=2e-5, atol=2e-7)
    # The moments too, against optax from the dense gradient; every row moved, looked up or not.
    _, dense_state = apply_updates(tx, grads_per_step)
    chex.assert_trees_all_close(got_state, dense_state, rtol=1e-6, atol=1e-9)
    self.assertTrue(np.all(np.asarray(got[self.TABLE]) != np.asarray(params[self.TABLE])))


def _model(**overrides):
  config = base.get_config().model
  config.update(dict(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, dropout=0.1, positions='none',
                     num_classes=2))
  config.update(overrides)
  return model_helpers.make_model(config, vocab=VOCAB, max_len=LENGTH, scale=0.3)


def _optim_config(**overrides):
  c = base.get_config().optim
  c.update(dict(learning_rate=1e-2, warmup_steps=1, clip_norm=0.5, **overrides))
  return c


@pytest.mark.slow
class RowGradientStepTest(chex.TestCase):
  """A table only looked up trains from its rows (`make_train_step(rows=...)`) as from its dense gradient."""

  @parameterized.named_parameters(
      ('lstm_classifier', dict(name='lstm', task='classification', bidirectional=True), 1),
      ('bert_classifier', dict(name='transformer', task='classification', pre_norm=False, positions='learned',
                               type_vocab_size=2), 2),
      ('untied_gru_lm', dict(name='gru', task='lm', tie_embeddings=False), 2),
      ('untied_transformer_lm', dict(name='transformer', task='lm', tie_embeddings=False, positions='learned'), 1))
  def test_rows_train_as_the_dense_gradient(self, overrides, grad_accum_steps):
    module, params = _model(**overrides)
    c = _optim_config()
    optimizer = optim.make_optimizer(c, total_steps=10)
    rows, why = row_gradients.for_training(module, params, c, 10, BATCH * LENGTH)
    self.assertIsNotNone(rows, why)
    ids = model_helpers.random_ids(2, (BATCH, LENGTH), vocab=LOOKED_UP_VOCAB)
    the_batch = ({'inputs': ids, 'label': jnp.asarray([0, 1, 1, 0]), 'weights': jnp.ones((BATCH,))}
                 if overrides['task'] == 'classification' else
                 {'inputs': ids, 'targets': jnp.roll(ids, -1, axis=1), 'weights': jnp.ones((BATCH, LENGTH))})
    mesh = train.make_mesh()
    self.assertEqual(mesh.size, 2)  # replicas all-gather their rows
    final = {}
    for name, path in (('rows', rows), ('dense', None)):
      step = steps.make_train_step(module, optimizer, mesh, grad_accum_steps, rows=path)
      state = steps.TrainState(step=jnp.array(0, jnp.int32), params=jax.tree.map(jnp.copy, params),
                               opt_state=optimizer.init(params), rng=jax.random.key(1))
      for _ in range(3):
        state, metrics = step(state, train.to_global(jax.device_get(the_batch), mesh), True)
      final[name] = jax.device_get((state.params, state.opt_state, metrics))
    # Params, optimizer state and metrics, each without the attention key bias (fixtures.without_key_bias: why).
    chex.assert_trees_all_close(fixtures.without_key_bias(final['rows']), fixtures.without_key_bias(final['dense']),
                                rtol=1e-4, atol=1e-6)
    trunk, embed, name = rows.table
    moved = np.abs(final['rows'][0][trunk][embed][name] - params[trunk][embed][name])
    self.assertGreater(float(moved.min()), 0.0)   # every row moved, looked up or not (weight decay, moments)


class ChoiceTest(parameterized.TestCase):
  """`for_training` takes the row path only where it is derived and pays, and says why not otherwise."""

  def test_a_classifier_with_adamw_takes_rows(self):
    module, params = _model(name='lstm', task='classification')
    rows, why = row_gradients.for_training(module, params, _optim_config(), 10, BATCH * LENGTH)
    self.assertEqual(rows.table, ('encoder', 'token_embed', 'embedding'))
    self.assertIn('row gradients for encoder/token_embed/embedding', why)

  @parameterized.named_parameters(
      ('switched_off', dict(name='lstm', task='classification'), dict(row_gradients=False), BATCH * LENGTH,
       'optim.row_gradients=False'),
      ('not_adamw', dict(name='lstm', task='classification'), dict(name='lion'), BATCH * LENGTH, 'adamw only'),
      ('tied_table', dict(name='transformer', task='lm', tie_embeddings=True), {}, BATCH * LENGTH,
       'also the output head'),
      ('more_lookups_than_rows', dict(name='lstm', task='classification'), {}, VOCAB, '61 lookups per step'))
  def test_dense_otherwise(self, model_overrides, optim_overrides, lookups, reason):
    module, params = _model(**model_overrides)
    rows, why = row_gradients.for_training(module, params, _optim_config(**optim_overrides), 10, lookups)
    self.assertIsNone(rows)
    self.assertIn(reason, why)


if __name__ == '__main__':
  absltest.main()
