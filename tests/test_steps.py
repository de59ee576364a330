"""The norm metrics: the step's gradient norms, computed when asked or when the loss is not finite, and the loop's
param and update norms, equal to a float64 reference and never changing the update. The embedding's gradient as
rows: the same training as from the dense gradient."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import model_helpers
import numpy as np
import optax

from experiments import base
from lm_jax import models
from lm_jax import optim
from lm_jax import steps
from lm_jax import train

VOCAB, BATCH, LENGTH = 29, 4, 8


def classifier():
  config = base.get_config().model
  config.update(dict(name='transformer', task='classification', num_layers=1, d_model=16, num_heads=2, mlp_dim=32,
                     dropout=0.0))
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
    grads = jax.grad(mean_loss)(self.params)
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
    expected = float64_norm(jax.grad(mean_loss)(self.params))
    self.assertTrue(np.isfinite(expected))
    np.testing.assert_allclose(metrics['grad_norm'], expected, rtol=1e-5)


def _model(**overrides):
  config = base.get_config().model
  config.update(dict(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, dropout=0.1, positions='none'))
  config.update(overrides)
  return model_helpers.make_model(config, vocab=VOCAB, max_len=LENGTH, scale=0.3)


class RowGradientStepTest(chex.TestCase):
  """A table only looked up trains from its rows (`optim.RowGradient`) as from its dense gradient."""

  @parameterized.named_parameters(
      ('lstm_classifier', dict(name='lstm', task='classification', bidirectional=True), 1),
      ('bert_classifier', dict(name='transformer', task='classification', pre_norm=False, positions='learned',
                               type_vocab_size=2), 2),
      ('untied_gru_lm', dict(name='gru', task='lm', tie_embeddings=False), 2),
      ('untied_transformer_lm', dict(name='transformer', task='lm', tie_embeddings=False, positions='learned'), 1))
  def test_rows_train_as_the_dense_gradient(self, overrides, grad_accum_steps):
    module, params = _model(**overrides)
    self.assertIsNotNone(models.lookup_only_table(module))
    c = base.get_config().optim
    c.update(dict(learning_rate=1e-2, warmup_steps=1, clip_norm=0.5))
    optimizer = optim.make_optimizer(c, total_steps=10)
    dense_optimizer = optax.GradientTransformationExtraArgs(optimizer.init, optimizer.update)  # not an AdamW
    ids = model_helpers.random_ids(2, (BATCH, LENGTH), vocab=VOCAB)  # a 29-token vocabulary: repeated ids
    the_batch = ({'inputs': ids, 'label': jnp.asarray([0, 1, 1, 0]), 'weights': jnp.ones((BATCH,))}
                 if overrides['task'] == 'classification' else
                 {'inputs': ids, 'targets': jnp.roll(ids, -1, axis=1), 'weights': jnp.ones((BATCH, LENGTH))})
    mesh = train.make_mesh()
    self.assertEqual(mesh.size, 2)  # replicas all-gather their rows
    final = {}
    for name, tx in (('rows', optimizer), ('dense', dense_optimizer)):
      step = steps.make_train_step(module, tx, mesh, grad_accum_steps)
      state = steps.TrainState(step=jnp.array(0, jnp.int32), params=jax.tree.map(jnp.copy, params),
                               opt_state=tx.init(params), rng=jax.random.key(1))
      for _ in range(3):
        state, metrics = step(state, train.to_global(jax.device_get(the_batch), mesh), True)
      final[name] = jax.device_get((state.params, state.opt_state, metrics))
    # Attention's key bias has a zero gradient in exact arithmetic (softmax ignores a constant per query), so Adam
    # turns its rounding noise into full steps: compared without it.
    comparable = lambda tree: {jax.tree_util.keystr(path): leaf for path, leaf
                               in jax.tree_util.tree_flatten_with_path(tree)[0] if "['key']['bias']" not in
                               jax.tree_util.keystr(path)}
    chex.assert_trees_all_close(comparable(final['rows']), comparable(final['dense']), rtol=1e-4, atol=1e-6)
    trunk, embed, name = models.lookup_only_table(module)
    moved = np.abs(final['rows'][0][trunk][embed][name] - params[trunk][embed][name])
    self.assertGreater(float(moved.min()), 0.0)   # every row moved, looked up or not (weight decay, moments)

  def test_tied_tables_are_not_only_looked_up(self):
    module, _ = _model(name='transformer', task='lm', tie_embeddings=True)
    self.assertIsNone(models.lookup_only_table(module))
