"""RNN family (Elman, LSTM, GRU): a float64 reference, padding invariance, jit == eager, dropout, causality and
document resets by gradient, closed-form parameter counts, cached decoding, bf16, config errors."""

import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import model_helpers
import numpy as np

from experiments import base
from lm_jax import models
from lm_jax.models import rnn

VOCAB = 23
MAX_LEN = 16
HIDDEN = 16
EVERY_MODEL = [(f'{name}_{task}', name, task) for name in ('rnn', 'lstm', 'gru') for task in ('classification', 'lm')]


def model_config(**overrides):
  config = base.get_config().model
  config.update(dict(num_layers=1, d_model=HIDDEN, dropout=0.1, bidirectional=True))
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

  def test_elman_classifier_matches_float64_reference(self):
    module, params = build(name='rnn', task='classification', num_layers=2, pooling='cls')
    inputs = random_ids(2, (3, 9), lengths=[9, 4, 1])
    logits = jax.jit(lambda x: module.apply({'params': params}, x))(inputs)
    np.testing.assert_allclose(logits, elman_classifier_reference(params, inputs, num_layers=2), atol=1e-5)

  @parameterized.product(name=('rnn', 'lstm', 'gru'), reverse=(False, True))
  def test_hand_split_backward_equals_autodiff(self, name, reverse):
    cell, (t, b, i, h) = rnn.CELLS[name], (6, 3, 5, 4)
    keys = jax.random.split(jax.random.key(10), 6)
    w = jax.random.normal(keys[4], (i, cell.gates * h)) * 0.5
    bias = jax.random.normal(keys[5], (cell.gates * h,))
    u = jax.random.normal(keys[0], (h, cell.gates * h)) * 0.5
    bn = jax.random.normal(keys[1], (h,))
    carry = jax.tree.map(lambda c: c + jax.random.normal(keys[2], c.shape), cell.zero_carry(b, h))
    x = jax.random.normal(keys[3], (t, b, i))
    real = jnp.asarray(np.random.default_rng(11).random((t, b)) < 0.8)
    start = jnp.zeros((t, b), bool).at[3, 0].set(True)
    weights = jax.random.normal(jax.random.key(12), (t, b, h))

    def loss(run, *args):
      final, y = run(cell, jnp.float32, reverse, *args, real, start)
      return jnp.sum(y * weights) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(final))

    scan_forward = rnn._scan_forward  # pylint: disable=protected-access

    def autodiff(cell, dtype, reverse, w, bias, u, bn, carry, x, real, start):
      return scan_forward(cell, dtype, reverse, u, bn, carry, rnn.project(dtype, w, bias, x), real, start)[:2]

    args, argnums = (w, bias, u, bn, carry, x), (0, 1, 2, 3, 4, 5)
    expected = jax.grad(functools.partial(loss, autodiff), argnums=argnums)(*args)
    got = jax.jit(jax.grad(functools.partial(loss, rnn.recur), argnums=argnums))(*args)
    chex.assert_trees_all_close(got, expected, atol=1e-5, rtol=1e-5)
    for grad in got[:3]:  # dW, db, dU
      self.assertGreater(float(jnp.abs(grad).max()), 1e-3)

  @parameterized.product(name=('rnn', 'lstm', 'gru'), reverse=(False, True))
  def test_time_chunks_and_batch_parts_change_neither_outputs_nor_gradients(self, name, reverse):
    """The recurrence in 4 chunks of time (2, 2, 2, 3 steps) and 2 parts of the batch (1 and 2 rows) in its forward
    scan, as one: outputs and the gradients of W, U, b and x."""
    x_BxTxI = jax.random.normal(jax.random.key(13), (3, 9, 5))
    real_BxT = jnp.asarray(np.random.default_rng(14).random((3, 9)) < 0.8)
    starts_BxT = jnp.zeros((3, 9), bool).at[1, 5].set(True)
    weights = jax.random.normal(jax.random.key(15), (3, 9, HIDDEN))
    recurrence = rnn.Recurrence(name, HIDDEN, reverse=reverse, dtype=jnp.float32)
    params = recurrence.init(jax.random.key(16), x_BxTxI, real_BxT, starts_BxT, False)['params']

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def outputs_and_grads(chunks, parts):
      apply = lambda p, x: recurrence.apply({'params': p}, x, real_BxT, starts_BxT, False)
      # Read while tracing; the static arguments key the jit cache.
      with mock.patch.object(rnn, 'TIME_CHUNKS', chunks), mock.patch.object(rnn, 'BATCH_PARTS', parts):
        return apply(params, x_BxTxI), jax.grad(lambda p, x: jnp.sum(apply(p, x) * weights), argnums=(0, 1))(
            params, x_BxTxI)

    whole, chunked = outputs_and_grads(1, 1), outputs_and_grads(4, 2)
    self.assertEqual(rnn._time_chunks(9, reverse),  # pylint: disable=protected-access
                     [(6, 9), (4, 6), (2, 4), (0, 2)] if reverse else [(0, 2), (2, 4), (4, 6), (6, 9)])
    chex.assert_trees_all_close(chunked, whole, atol=1e-5, rtol=1e-5)
    self.assertGreater(float(jnp.abs(whole[1][0]['U']).max()), 1e-3)

  @parameterized.named_parameters(('lstm', 'lstm', nn.LSTMCell), ('gru', 'gru', nn.GRUCell))
  def test_fused_cells_match_flax_cells(self, name, flax_cell):
    x_BxTxI = jax.random.normal(jax.random.key(8), (3, 7, 5))
    real_BxT, starts_BxT = jnp.ones((3, 7), bool), jnp.zeros((3, 7), bool)
    recurrence = rnn.Recurrence(name, HIDDEN, reverse=False, dtype=jnp.float32)
    init = lambda x: recurrence.init(jax.random.key(0), x, real_BxT, starts_BxT, False)
    shapes = jax.eval_shape(init, x_BxTxI)['params']
    rng = np.random.default_rng(9)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.4, s.shape), jnp.float32), shapes)
    ours = recurrence.apply({'params': params}, x_BxTxI, real_BxT, starts_BxT, False)
    theirs = nn.RNN(flax_cell(HIDDEN)).apply({'params': {'cell': flax_cell_params(name, params)}}, x_BxTxI)
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

  @parameterized.named_parameters(('rnn', 'rnn'), ('lstm', 'lstm'), ('gru', 'gru'))
  def test_lm_is_causal_and_resets_at_document_starts(self, name):
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

  def test_cached_greedy_generation_matches_uncached(self):
    module, params = build(name='lstm', task='lm', num_layers=2)
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
