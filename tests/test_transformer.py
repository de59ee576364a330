"""Transformer encoder/decoder: shapes, jit, causality and segment isolation by gradient, padding invariance,
closed-form parameter counts, cached decoding, bf16, config errors."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from experiments import base
from lm_jax import models
from lm_jax.models import transformer

VOCAB = 37
MAX_LEN = 16


def model_config(**overrides):
  config = base.get_config().model
  config.update(dict(name='transformer', num_layers=1, d_model=16, num_heads=2, mlp_dim=32, dropout=0.1))
  config.update(overrides)
  return config


def random_params(module, seed=0):
  """Float32 params of the module's shapes, drawn by NumPy (no init compile; no zero biases or unit scales)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), jnp.float32), shapes)


def build(**overrides):
  module = models.get_model(model_config(**overrides), vocab_size=VOCAB, max_len=MAX_LEN)
  return module, random_params(module)


def random_ids(key, shape, lengths=None):
  """Random non-pad ids; with `lengths`, row b is padded (id 0) after lengths[b] tokens."""
  ids = np.random.default_rng(key).integers(1, VOCAB, shape)
  if lengths is not None:
    ids[np.arange(shape[1])[None, :] >= np.asarray(lengths)[:, None]] = 0
  return jnp.asarray(ids, jnp.int32)


def dependencies(module, params, inputs, **kwargs):
  """bool [T, S]: whether any logit at position t has a nonzero gradient w.r.t. the embedding at position s."""
  _, state = jax.eval_shape(lambda: module.apply({'params': params}, inputs, mutable=['perturbations'], **kwargs))
  perturbations = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state['perturbations'])
  weights = jax.random.normal(jax.random.key(7), inputs.shape + (VOCAB,))

  def per_position(perturbations):
    logits = module.apply({'params': params, 'perturbations': perturbations}, inputs, **kwargs)
    return jnp.einsum('btv,btv->t', logits, weights)

  (jacobian_TxBxSxD,) = jax.tree.leaves(jax.jit(jax.jacrev(per_position))(perturbations))
  return np.asarray(jnp.abs(jacobian_TxBxSxD).sum(axis=(1, 3)) > 0)


def closed_form_count(task, *, d, f, layers, heads, tied, learned, relative, classes=2):
  per_layer = 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)  # 2 LayerNorms, q/k/v/out, MLP
  trunk = VOCAB * d + (MAX_LEN * d if learned else 0) + (32 * heads if relative else 0) + layers * per_layer + 2 * d
  output = VOCAB if tied else d * VOCAB + VOCAB
  head = {'classification': d * classes + classes, 'mlm': d * d + d + 2 * d + output, 'lm': output}[task]
  return trunk + head


class TransformerTest(chex.TestCase):

  @parameterized.named_parameters(
      ('classification', dict(task='classification', attention_bias='relative', pre_norm=False, pooling='mean')),
      ('mlm', dict(task='mlm', attention_bias='alibi', positions='sinusoidal')),
      ('lm', dict(task='lm', attention_bias='relative', positions='none', tie_embeddings=False)),
  )
  def test_shapes_finite_and_jit_matches_eager(self, overrides):
    module = models.get_model(model_config(**overrides), vocab_size=VOCAB, max_len=MAX_LEN)
    params = jax.jit(module.init)(jax.random.key(0), jnp.ones((1, MAX_LEN), jnp.int32))['params']
    inputs = random_ids(1, (2, 12), lengths=[12, 7])
    apply = lambda p, x: module.apply({'params': p}, x)
    eager, jitted = apply(params, inputs), jax.jit(apply)(params, inputs)
    expected = (2, 2) if overrides['task'] == 'classification' else (2, 12, VOCAB)
    chex.assert_shape([eager, jitted], expected)
    chex.assert_tree_all_finite(jitted)
    self.assertEqual(jitted.dtype, jnp.float32)
    self.assertTrue(all(p.dtype == jnp.float32 for p in jax.tree.leaves(params)))
    chex.assert_trees_all_close(eager, jitted, atol=1e-5, rtol=1e-5)
    dropped = jax.jit(lambda p, x: module.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.key(3)}))(
        params, inputs)
    self.assertGreater(float(jnp.abs(dropped - jitted).max()), 1e-3)

  @parameterized.named_parameters(
      ('cls_relative_post_ln', dict(task='classification', pooling='cls', attention_bias='relative',
                                    pre_norm=False)),
      ('mean_alibi_sinusoidal', dict(task='classification', pooling='mean', attention_bias='alibi',
                                     positions='sinusoidal')),
      ('mlm_learned', dict(task='mlm')),
  )
  def test_appended_padding_changes_nothing(self, overrides):
    module, params = build(**overrides)
    inputs = random_ids(2, (3, 8), lengths=[8, 5, 2])
    padded = jnp.pad(inputs, ((0, 0), (0, 6)))
    apply = jax.jit(lambda x: module.apply({'params': params}, x))
    logits, padded_logits = apply(inputs), apply(padded)
    if overrides['task'] == 'mlm':
      real = np.asarray(inputs != 0)
      logits, padded_logits = np.asarray(logits)[real], np.asarray(padded_logits)[:, :8][real]
    chex.assert_trees_all_close(padded_logits, logits, atol=1e-5)

  def test_decoder_is_causal_by_gradient(self):
    module, params = build(task='lm', attention_bias='relative', num_layers=2)
    deps = dependencies(module, params, random_ids(3, (2, 8)))
    np.testing.assert_array_equal(deps, np.tril(np.ones((8, 8), bool)))

  @parameterized.named_parameters(('lm', 'lm'), ('mlm', 'mlm'))
  def test_packed_documents_do_not_see_each_other(self, task):
    module, params = build(task=task, attention_bias='relative')
    segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]] * 2, jnp.int32)
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]] * 2, jnp.int32)
    inputs = random_ids(4, (2, 8), lengths=[7, 7])
    deps = dependencies(module, params, inputs, segment_ids=segment_ids, positions=positions)
    seg = np.asarray(segment_ids[0])
    allowed = (seg[:, None] == seg[None, :]) & (seg[None, :] > 0)
    if task == 'lm':
      allowed &= np.tril(np.ones((8, 8), bool))
    real = seg > 0  # a padding query has no allowed key, so only real rows are checked
    np.testing.assert_array_equal(deps[real], allowed[real])
    # The second document, packed after the first, gives the logits it gives alone at the start of a row.
    apply = jax.jit(lambda x, s, p: module.apply({'params': params}, x, segment_ids=s, positions=p))
    packed = apply(inputs, segment_ids, positions)
    alone_ids = jnp.pad(inputs[:, 3:7], ((0, 0), (0, 4)))
    alone = apply(alone_ids, (alone_ids > 0).astype(jnp.int32), jnp.array([[0, 1, 2, 3, 0, 0, 0, 0]] * 2))
    chex.assert_trees_all_close(packed[:, 3:7], alone[:, :4], atol=1e-5)

  @parameterized.named_parameters(
      ('classification', dict(task='classification', pre_norm=False, attention_bias='relative', num_classes=3)),
      ('mlm', dict(task='mlm', positions='sinusoidal', tie_embeddings=True)),
      ('lm', dict(task='lm', attention_bias='alibi', tie_embeddings=False, num_layers=3)),
  )
  def test_param_count_matches_closed_form(self, overrides):
    config = model_config(**overrides)
    module = models.get_model(config, vocab_size=VOCAB, max_len=MAX_LEN)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
    expected = closed_form_count(
        config.task, d=config.d_model, f=config.mlp_dim, layers=config.num_layers, heads=config.num_heads,
        tied=config.tie_embeddings, learned=config.positions == 'learned',
        relative=config.attention_bias == 'relative', classes=config.num_classes)
    self.assertEqual(models.count_params(shapes), expected)

  def test_cached_greedy_generation_matches_uncached(self):
    module, params = build(task='lm', attention_bias='relative')
    prompt, new = random_ids(5, (2, 4)), 7
    generated = models.generate(module, params, prompt, max_new_tokens=new, temperature=0.0)
    chex.assert_shape(generated, (2, 4 + new))
    self.assertEqual(generated.dtype, jnp.int32)
    # Reference: rerun the whole (zero-filled) sequence for every new token; causality makes the zeros harmless.
    apply = jax.jit(lambda x: module.apply({'params': params}, x))
    sequence = jnp.pad(prompt, ((0, 0), (0, new)))
    for t in range(4, 4 + new):
      sequence = sequence.at[:, t].set(jnp.argmax(apply(sequence)[:, t - 1], axis=-1))
    np.testing.assert_array_equal(generated, sequence)
    # top_k=1 sampling at any temperature is greedy.
    sampled = models.generate(module, params, prompt, max_new_tokens=new, temperature=0.7, top_k=1,
                              rng=jax.random.key(9))
    np.testing.assert_array_equal(sampled, sequence)
    with self.assertRaisesRegex(ValueError, 'max_len'):
      models.generate(module, params, prompt, max_new_tokens=MAX_LEN, temperature=0.0)

  def test_bfloat16_compute_close_to_float32(self):
    module, params = build(task='mlm', attention_bias='relative')
    bf16_module = models.get_model(model_config(task='mlm', attention_bias='relative', dtype='bfloat16'),
                                   vocab_size=VOCAB, max_len=MAX_LEN)
    inputs = random_ids(6, (2, 12), lengths=[12, 9])
    reference = jax.jit(lambda x: module.apply({'params': params}, x))(inputs)
    logits = jax.jit(lambda x: bf16_module.apply({'params': params}, x))(inputs)
    self.assertEqual(logits.dtype, jnp.float32)
    scale = float(jnp.abs(reference).max())
    chex.assert_trees_all_close(logits, reference, atol=0.03 * scale)
    self.assertGreater(float(jnp.abs(logits - reference).max()), 0.0)  # bf16 really was used

  def test_relative_position_buckets_match_t5(self):
    # Values of T5's (and Hugging Face's) _relative_position_bucket for key - query positions.
    relative = jnp.array([0, -1, 1, -7, -8, -127, -1000, 1000, 20])
    bidirectional = transformer.relative_position_bucket(relative, bidirectional=True)
    np.testing.assert_array_equal(bidirectional, [0, 1, 17, 7, 8, 15, 15, 31, 26])
    causal = transformer.relative_position_bucket(relative, bidirectional=False)
    np.testing.assert_array_equal(causal, [0, 1, 0, 7, 8, 31, 31, 0, 0])

  def test_alibi_slopes_closed_form(self):
    np.testing.assert_allclose(transformer.alibi_slopes(8), [2.0 ** -(h + 1) for h in range(8)])
    # 6 heads: the 4-head slopes, then every other slope of 8 heads.
    np.testing.assert_allclose(transformer.alibi_slopes(6), [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8,
                                                            2.0 ** -1, 2.0 ** -3])

  def test_sinusoidal_positions_match_float64_formula(self):
    positions = np.array([[0, 1, 5, 63]])
    d = 8
    i = np.arange(d // 2)
    angles = positions[..., None] / 10000.0 ** (2 * i / d)
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    np.testing.assert_allclose(transformer.sinusoidal_positions(jnp.asarray(positions), d), expected, atol=1e-5)

  @parameterized.named_parameters(
      ('name', dict(name='mamba'), 'model.name'),
      ('task', dict(task='seq2seq'), 'model.task'),
      ('bias', dict(attention_bias='rotary'), 'model.attention_bias'),
      ('positions', dict(positions='rope'), 'model.positions'),
      ('pooling', dict(pooling='max'), 'model.pooling'),
      ('dtype', dict(dtype='float16'), 'model.dtype'),
      ('heads', dict(num_heads=3), 'num_heads'),
      ('cudnn_on_cpu', dict(attention='cudnn', dtype='bfloat16'), "attention='cudnn'"),
  )
  def test_bad_config_raises_value_error(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      models.get_model(model_config(**overrides), vocab_size=VOCAB, max_len=MAX_LEN)


if __name__ == '__main__':
  absltest.main()
