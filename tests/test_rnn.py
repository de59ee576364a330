"""RNN family (Elman, LSTM, GRU): the fast path (rnn_fast.py) equals the plain scan (rnn.py) in outputs and
gradients, a float64 reference and flax's cells, padding invariance, jit == eager, dropout, causality and document
resets by gradient, closed-form parameter counts, cached decoding, bf16, config errors."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import model_helpers
import numpy as np
import pytest

from experiments import base
from lm_jax import models
from lm_jax.models import rnn
from lm_jax.models import rnn_fast

VOCAB = 23
MAX_LEN = 16
HIDDEN = 16
EVERY_MODEL = [(f'{name}_{task}', name, task) for name in ('rnn', 'lstm', 'gru') for task in ('classification', 'lm')]


def model_config(**overrides):
  config = base.get_config().model
  config.update(dict(num_layers=1, d_model=HIDDEN, dropout=0.1, bidirectional=True, num_classes=2))
  config.update(overrides)
  return config


def build(**overrides):
  return model_helpers.make_model(model_config(**overrides), vocab=VOCAB, max_len=MAX_LEN, scale=0.4)


random_ids = functools.partial(model_helpers.random_ids, vocab=VOCAB)
dependencies = model_helpers.dependencies


def elman_classifier_reference(params, ids, num_layers):
  """float64 NumPy: embed the real tokens, run h_t = tanh(W·x_t + U·h_{t-1} + b) both ways per layer, then the
  head on [forward state after the last token, backward state after the first]."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  def run(cell, xs):
    h, hs = np.zeros(HIDDEN), []
    for x in xs:
      h = np.tanh(x @ cell['W'] + h @ cell['U'] + cell['b'])
      hs.append(h)
    return np.stack(hs)

  logits = []
  for row in np.asarray(ids):
    x = p['encoder']['token_embed']['embedding'][row[row != 0]]
    for layer in range(num_layers):
      forward = run(p['encoder'][f'forward_{layer}'], x)
      backward = run(p['encoder'][f'backward_{layer}'], x[::-1])[::-1]
      x = np.concatenate([forward, backward], axis=-1)
    pooled = np.concatenate([forward[-1], backward[0]])
    logits.append(pooled @ p['classifier_head']['output']['kernel'] + p['classifier_head']['output']['bias'])
  return np.stack(logits)


def flax_cell_params(name, p):
  """Our fused W [I, g·H], U [H, g·H], b (+ bn) as the per-gate kernels of flax's LSTMCell / GRUCell."""
  gates = {'lstm': 'ifgo', 'gru': 'rzn'}[name]
  w, u, b = (np.split(np.asarray(p[k]), len(gates), axis=-1) for k in ('W', 'U', 'b'))
  if name == 'lstm':  # flax: input kernels without bias, hidden kernels with it
    return {**{f'i{g}': {'kernel': w[j]} for j, g in enumerate(gates)},
            **{f'h{g}': {'kernel': u[j], 'bias': b[j]} for j, g in enumerate(gates)}}
  return {**{f'i{g}': {'kernel': w[j], 'bias': b[j]} for j, g in enumerate(gates)},  # gru
          **{f'h{g}': {'kernel': u[j]} for j, g in enumerate(gates)}, 'hn': {'kernel': u[2], 'bias': p['bn']}}


def assert_close_at_scale(got, expected, rtol=1e-5):
  """Each leaf of `got` within `rtol` of the largest magnitude in `expected`'s leaf: gradients that cancel to
  near zero then need no looser tolerance than the rest."""
  at_scale = lambda tree: jax.tree.map(lambda a, e: a / jnp.maximum(jnp.abs(e).max(), 1e-6), tree, expected)
  chex.assert_trees_all_close(at_scale(got), at_scale(expected), atol=rtol, rtol=rtol)


def cell_count(cell, inputs, hidden):
  return {'rnn': inputs * hidden + hidden * hidden + hidden,                           # W, U, b
          'lstm': 4 * (inputs * hidden + hidden * hidden + hidden),                    # i, f, g, o gates
          'gru': 3 * (inputs * hidden + hidden) + 3 * hidden * hidden + hidden}[cell]  # r, z, n gates


class RNNTest(chex.TestCase):

  def test_jit_matches_eager_and_dropout_acts_only_in_training(self):
    module, params = build(name='lstm', task='classification', num_layers=2)
    inputs = random_ids(1, (2, 10), lengths=[10, 6])
    eager = module.apply({'params': params}, inputs)
    jitted = jax.jit(lambda x: module.apply({'params': params}, x))(inputs)
    chex.assert_trees_all_close(eager, jitted, atol=1e-5, rtol=1e-5)
    train = jax.jit(lambda x, key: module.apply({'params': params}, x, train=True, rngs={'dropout': key}))
    dropped, dropped_again, other_key = (train(inputs, jax.random.key(k)) for k in (3, 3, 4))
    self.assertGreater(float(jnp.abs(dropped - jitted).max()), 1e-3)
    self.assertGreater(float(jnp.abs(dropped - other_key).max()), 1e-3)
    np.testing.assert_array_equal(dropped, dropped_again)

  @parameterized.named_parameters(('fast', True), ('reference', False))
  def test_elman_classifier_matches_float64_reference(self, fast_rnn):
    module, params = build(name='rnn', task='classification', num_layers=2, pooling='cls', fast_rnn=fast_rnn)
    inputs = random_ids(2, (3, 9), lengths=[9, 4, 1])
    logits = jax.jit(lambda x: module.apply({'params': params}, x))(inputs)
    np.testing.assert_allclose(logits, elman_classifier_reference(params, inputs, num_layers=2), atol=1e-5)

  @chex.variants(with_jit=True)
  @parameterized.product(name=('rnn', 'lstm', 'gru'), reverse=(False, True))
  def test_fast_recurrence_matches_reference(self, name, reverse):
    """`rnn_fast.recurrence` (hand-split backward, 4 time chunks of 2, 2, 2, 3 steps, batch slices of 1 and 2
    rows) against the plain scan `rnn.recurrence`, from a random state: outputs, final state, and the gradients of
    every weight, the initial state and the inputs."""
    self.check_fast_recurrence(name, reverse)

  @chex.variants(without_jit=True)   # the same, eagerly: each cell, one direction (the other: jitted, above)
  @parameterized.named_parameters(('rnn', 'rnn'), ('lstm', 'lstm'), ('gru', 'gru'))
  def test_fast_recurrence_matches_reference_eagerly(self, name):
    self.check_fast_recurrence(name, reverse=False)

  def check_fast_recurrence(self, name, reverse):
    cell, (t, b, i, h) = rnn.CELLS[name], (9, 3, 5, 4)
    keys = jax.random.split(jax.random.key(10), 7)
    weights = rnn.Weights(W=jax.random.normal(keys[0], (i, cell.gates * h)) * 0.5,
                          U=jax.random.normal(keys[1], (h, cell.gates * h)) * 0.5,
                          b=jax.random.normal(keys[2], (cell.gates * h,)),
                          bn=jax.random.normal(keys[3], (h,)) if cell.gru_bias else None)
    carry = jax.tree.map(lambda c: c + jax.random.normal(keys[4], c.shape), cell.zero_carry(b, h))
    x = jax.random.normal(keys[5], (t, b, i))
    real = jnp.asarray(np.random.default_rng(11).random((t, b)) < 0.8)
    start = jnp.zeros((t, b), bool).at[3, 0].set(True).at[6, 2].set(True)
    output_weights = jax.random.normal(keys[6], (t, b, h))

    def loss(run, weights, carry, x):
      final, y = run(name, jnp.float32, reverse, weights, carry, x, real, start)
      return jnp.sum(y * output_weights) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(final)), (final, y)

    def results(run):
      return self.variant(jax.grad(functools.partial(loss, run), argnums=(0, 1, 2), has_aux=True))(weights, carry, x)

    (fast_grads, fast_outputs), (grads, outputs) = results(rnn_fast.recurrence), results(rnn.recurrence)
    assert_close_at_scale((fast_outputs, fast_grads), (outputs, grads))
    chex.assert_shape(fast_outputs[1], (t, b, h))
    for grad in jax.tree.leaves(grads):  # no gradient is vacuously zero
      self.assertGreater(float(jnp.abs(grad).max()), 1e-3)

  # eager == jit: test_fast_recurrence_matches_reference_eagerly, at a fraction of the time. Each cell and each task
  # once here; the other three pairings (the same model code around another cell) are slow.
  @chex.variants(with_jit=True)
  @parameterized.named_parameters(('rnn_classification', 'rnn', 'classification'), ('lstm_lm', 'lstm', 'lm'),
                                  ('gru_lm', 'gru', 'lm'))
  def test_fast_rnn_matches_reference_model(self, name, task):
    """model.fast_rnn True vs False, same params: logits and the gradients w.r.t. every parameter and the embedded
    inputs (a packed LM row with padding: resets and held states; a 2-layer bidirectional classifier)."""
    self.check_fast_rnn_model(name, task)

  @chex.variants(with_jit=True)
  @parameterized.named_parameters(('lstm_classification', 'lstm', 'classification'),
                                  ('gru_classification', 'gru', 'classification'), ('rnn_lm', 'rnn', 'lm'))
  @pytest.mark.slow
  def test_fast_rnn_matches_reference_model_other_pairings(self, name, task):
    self.check_fast_rnn_model(name, task)

  def check_fast_rnn_model(self, name, task):
    module, params = build(name=name, task=task, num_layers=2)
    reference = models.get_model(model_config(name=name, task=task, num_layers=2, fast_rnn=False),
                                 vocab_size=VOCAB, max_len=MAX_LEN)
    if task == 'lm':
      kwargs = dict(segment_ids=jnp.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 2, 2, 2, 3, 3, 3, 0]], jnp.int32),
                    positions=jnp.array([[0, 1, 2, 0, 1, 2, 3, 0, 0], [0, 1, 0, 1, 2, 0, 1, 2, 0]], jnp.int32))
      inputs = random_ids(8, (2, 9), lengths=[7, 8])
    else:
      kwargs, inputs = {}, random_ids(8, (3, 9), lengths=[9, 5, 2])
    _, state = jax.eval_shape(lambda: module.apply({'params': params}, inputs, mutable=['perturbations'], **kwargs))
    rng = np.random.default_rng(9)
    embedded = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.1, s.shape), jnp.float32),
                            state['perturbations'])
    output_weights = jax.random.normal(jax.random.key(18), (2, 9, VOCAB) if task == 'lm' else (3, 2))

    def logits_and_grads(module):
      def loss(params, embedded):
        logits = module.apply({'params': params, 'perturbations': embedded}, inputs, **kwargs)
        return jnp.sum(logits * output_weights), logits
      grads, logits = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, embedded)
      return logits, grads

    fast, expected = self.variant(functools.partial(logits_and_grads, module))(), self.variant(
        functools.partial(logits_and_grads, reference))()
    assert_close_at_scale(fast, expected)
    chex.assert_shape(fast[0], output_weights.shape)
    for grad in jax.tree.leaves(expected[1]):  # all real: the embedding's, the head's and each direction's
      self.assertGreater(float(jnp.abs(grad).max()), 1e-4)

  @parameterized.product(cell=(('lstm', nn.LSTMCell), ('gru', nn.GRUCell)), fast=(True, False))
  def test_cells_match_flax_cells(self, cell, fast):
    name, flax_cell = cell
    x_BxTxI = jax.random.normal(jax.random.key(8), (3, 7, 5))
    real_BxT, starts_BxT = jnp.ones((3, 7), bool), jnp.zeros((3, 7), bool)
    recurrence = rnn.Recurrence(name, HIDDEN, reverse=False, dtype=jnp.float32, fast=fast)
    init = lambda x: recurrence.init(jax.random.key(0), x, real_BxT, starts_BxT, False)
    shapes = jax.eval_shape(init, x_BxTxI)['params']
    rng = np.random.default_rng(9)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.4, s.shape), jnp.float32), shapes)
    ours = jax.jit(lambda p, x: recurrence.apply({'params': p}, x, real_BxT, starts_BxT, False))(params, x_BxTxI)
    theirs = jax.jit(nn.RNN(flax_cell(HIDDEN)).apply)({'params': {'cell': flax_cell_params(name, params)}}, x_BxTxI)
    chex.assert_trees_all_close(ours, theirs, atol=1e-5, rtol=1e-5)

  @parameterized.named_parameters(
      ('lstm_bidirectional_cls', dict(name='lstm', pooling='cls')),
      ('gru_bidirectional_mean', dict(name='gru', pooling='mean')),
      ('rnn_forward_cls', dict(name='rnn', pooling='cls', bidirectional=False)),
  )
  def test_appended_padding_changes_nothing(self, overrides):
    module, params = build(task='classification', num_layers=2, **overrides)
    inputs = random_ids(3, (3, 8), lengths=[8, 5, 2])
    apply = jax.jit(lambda x: module.apply({'params': params}, x))
    logits = apply(inputs)
    chex.assert_shape(logits, (3, 2))
    self.assertEqual(logits.dtype, jnp.float32)
    chex.assert_trees_all_close(apply(jnp.pad(inputs, ((0, 0), (0, 6)))), logits, atol=1e-5)
    # Changing a real token does change the logits, so the comparison above is not vacuous.
    self.assertGreater(float(jnp.abs(apply(inputs.at[:, 0].set(inputs[:, 0] % (VOCAB - 1) + 1)) - logits).max()),
                       1e-4)

  def test_lm_is_causal_and_resets_at_document_starts(self):
    self.check_causal_and_resets('lstm')

  # The same wiring around the two other cells; fast: test_all_models.py's causality and packed documents for each.
  @parameterized.named_parameters(('rnn', 'rnn'), ('gru', 'gru'))
  @pytest.mark.slow
  def test_lm_is_causal_and_resets_at_document_starts_other_cells(self, name):
    self.check_causal_and_resets(name)

  def check_causal_and_resets(self, name):
    module, params = build(name=name, task='lm', num_layers=2)
    segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]] * 2, jnp.int32)
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]] * 2, jnp.int32)
    inputs = random_ids(4, (2, 8), lengths=[7, 7])
    deps = dependencies(module, params, inputs, segment_ids=segment_ids, positions=positions)
    seg = np.asarray(segment_ids[0])
    allowed = (seg[:, None] == seg[None, :]) & np.tril(np.ones((8, 8), bool))
    real = seg > 0
    np.testing.assert_array_equal(deps[real][:, real], allowed[real][:, real])
    # The second document, packed after the first, gives the logits it gives alone at the start of a row.
    apply = jax.jit(lambda x, s, p: module.apply({'params': params}, x, segment_ids=s, positions=p))
    packed = apply(inputs, segment_ids, positions)
    chex.assert_shape(packed, (2, 8, VOCAB))
    self.assertEqual(packed.dtype, jnp.float32)
    chex.assert_tree_all_finite(packed)
    alone_ids = jnp.pad(inputs[:, 3:7], ((0, 0), (0, 4)))
    alone = apply(alone_ids, (alone_ids > 0).astype(jnp.int32), jnp.array([[0, 1, 2, 3, 0, 0, 0, 0]] * 2))
    chex.assert_trees_all_close(packed[:, 3:7], alone[:, :4], atol=1e-5)

  @parameterized.named_parameters(*EVERY_MODEL)
  def test_param_count_matches_closed_form(self, name, task):
    config = model_config(name=name, task=task, num_layers=2, num_classes=3, tie_embeddings=False)
    module = models.get_model(config, vocab_size=VOCAB, max_len=MAX_LEN)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
    h = HIDDEN
    directions = 2 if task == 'classification' else 1
    expected = VOCAB * h + directions * (cell_count(name, h, h) + cell_count(name, directions * h, h))
    expected += directions * h * 3 + 3 if task == 'classification' else h * VOCAB + VOCAB
    self.assertEqual(models.count_params(shapes), expected)

  @parameterized.named_parameters(('fast', True), ('reference', False))
  def test_cached_greedy_generation_matches_uncached(self, fast_rnn):
    module, params = build(name='lstm', task='lm', num_layers=2, fast_rnn=fast_rnn)
    prompt, new = random_ids(5, (2, 3)), 6
    generated = models.generate(module, params, prompt, max_new_tokens=new, temperature=0.0)
    chex.assert_shape(generated, (2, 3 + new))
    apply = jax.jit(lambda x: module.apply({'params': params}, x))
    # Reference: rerun the whole sequence for every token; padding after position t never reaches logits at t.
    sequence = jnp.pad(prompt, ((0, 0), (0, new)))
    for t in range(3, 3 + new):
      sequence = sequence.at[:, t].set(jnp.argmax(apply(sequence)[:, t - 1], axis=-1))
    np.testing.assert_array_equal(generated, sequence)

  def test_bfloat16_compute_close_to_float32(self):
    module, params = build(name='gru', task='lm')
    bf16_module = models.get_model(model_config(name='gru', task='lm', dtype='bfloat16'), vocab_size=VOCAB,
                                   max_len=MAX_LEN)
    inputs = random_ids(6, (2, 10))
    reference = jax.jit(lambda x: module.apply({'params': params}, x))(inputs)
    logits = jax.jit(lambda x: bf16_module.apply({'params': params}, x))(inputs)
    self.assertEqual(logits.dtype, jnp.float32)
    chex.assert_trees_all_close(logits, reference, atol=0.03 * float(jnp.abs(reference).max()))
    self.assertGreater(float(jnp.abs(logits - reference).max()), 0.0)  # bf16 really was used

  @parameterized.parameters('rnn', 'lstm', 'gru')
  @pytest.mark.slow
  def test_bfloat16_gradients_close_to_float32(self, name):
    """The hand-split backward under bfloat16 compute: every parameter's gradient within 5% of float32's scale."""
    module, params = build(name=name, task='classification')
    bf16_module = models.get_model(model_config(name=name, task='classification', dtype='bfloat16'),
                                   vocab_size=VOCAB, max_len=MAX_LEN)
    inputs = random_ids(7, (3, 10), lengths=[10, 7, 4])
    weights = jax.random.normal(jax.random.key(17), (3, 2))
    grad = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply({'params': p}, inputs) * weights)))(params)
    reference, got = grad(module), grad(bf16_module)
    chex.assert_trees_all_equal_dtypes(got, reference)
    for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(reference)):
      np.testing.assert_allclose(g, r, atol=0.05 * float(jnp.abs(r).max()) + 1e-6, err_msg=jax.tree_util.keystr(path))
    self.assertGreater(max(float(jnp.abs(g - r).max()) for g, r in zip(jax.tree.leaves(got),
                                                                      jax.tree.leaves(reference))), 0.0)

  @parameterized.named_parameters(
      ('mlm', dict(name='lstm', task='mlm'), "model.task.*'classification', 'lm'"),
      ('pooling', dict(name='gru', pooling='max'), 'model.pooling'),
  )
  def test_bad_config_raises_value_error(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      models.get_model(model_config(**overrides), vocab_size=VOCAB, max_len=MAX_LEN)

  def test_classifier_rejects_packed_inputs(self):
    module, params = build(name='rnn', task='classification')
    inputs = random_ids(7, (1, 4))
    with self.assertRaisesRegex(ValueError, 'segment_ids'):
      module.apply({'params': params}, inputs, segment_ids=jnp.ones_like(inputs))


if __name__ == '__main__':
  absltest.main()
