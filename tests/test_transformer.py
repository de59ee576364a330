"""Transformer encoder/decoder and the shared layers: a float64 NumPy reference (pre-LN and post-LN, every bias,
position and head kind), padding invariance, jit == eager, dropout, causality and segment isolation by gradient,
closed-form parameter counts, cached decoding, bf16 (float32 logits), Threefry known answers, config errors."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import fixtures
import jax
import jax.numpy as jnp
import model_helpers
import numpy as np

from lm_jax import models
from lm_jax.models import layers
from lm_jax.models import random_bits
from lm_jax.models import transformer

VOCAB = 37
MAX_LEN = 16


def build(**overrides):
  return model_helpers.make_model(fixtures.model(**overrides), vocab=VOCAB, max_len=MAX_LEN, scale=0.3)


random_ids = functools.partial(model_helpers.random_ids, vocab=VOCAB)
dependencies = model_helpers.dependencies


def layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * p['scale'] + p['bias']


def gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def gelu_new(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def t5_bucket(relative, bidirectional, num_buckets=32, max_distance=128):
  """T5's _relative_position_bucket of key - query positions, in NumPy."""
  n, bucket = -relative, np.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    bucket, n = (n < 0) * num_buckets, np.abs(n)
  else:
    n = np.maximum(n, 0)
  exact = num_buckets // 2
  large = exact + (np.log(np.maximum(n, 1) / exact) / np.log(max_distance / exact) * (num_buckets - exact)).astype(int)
  return bucket + np.where(n < exact, n, np.minimum(large, num_buckets - 1))


def reference_logits(params, ids, config, token_types=None):
  """float64 NumPy forward of unpacked rows (pad 0): embeddings (+ positions, + token types `[B, T]`, default 0;
  post-LN: LayerNorm), blocks with LayerNorm before each branch (pre-LN, plus a final one) or after each residual add
  (post-LN, BERT), then the head (a classifier reads the pooler's tanh(W·h[CLS] + b) when model.pooler)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  causal = config.task == 'lm'
  trunk = p['decoder' if causal else 'encoder']
  heads = config.num_heads
  act = {'gelu': gelu, 'gelu_new': gelu_new}[config.hidden_act]
  layer_norm_eps = functools.partial(layer_norm, eps=config.layer_norm_eps)
  out = []
  token_types = np.zeros(np.shape(ids), int) if token_types is None else np.asarray(token_types)
  for row, types in zip(np.asarray(ids), token_types):
    length, real = len(row), row != 0
    pos = np.arange(length)
    x = trunk['token_embed']['embedding'][row]
    if config.type_vocab_size:
      x = x + trunk['type_embed']['embedding'][types]
    if config.positions == 'learned':
      x = x + trunk['position_embed']['embedding'][pos]
    elif config.positions == 'sinusoidal':
      angles = pos[:, None] / 10000.0 ** (2 * np.arange(x.shape[-1] // 2) / x.shape[-1])
      x = x + np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    if not config.pre_norm:
      x = layer_norm_eps(x, trunk['norm'])
    relative = pos[None, :] - pos[:, None]
    bias = np.zeros((heads, length, length))
    if config.attention_bias == 'relative':
      bias = trunk['relative_bias'][t5_bucket(relative, bidirectional=not causal)].transpose(2, 0, 1)
    elif config.attention_bias == 'alibi':
      slopes = 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)
      bias = -slopes[:, None, None] * np.abs(relative)
    allowed = np.tril(np.ones((length, length), bool)) if causal else real[:, None] & real[None, :]
    for i in range(config.num_layers):
      layer = trunk[f'layers_{i}']

      def attend(y, a=layer['attention']):
        q, k, v = (np.einsum('td,dhk->thk', y, a[n]['kernel']) + a[n]['bias'] for n in ('query', 'key', 'value'))
        if config.smeared_keys:   # k'_s = α k_s + (1 - α) k_{s-1}, α = sigmoid(smear); the first key is kept
          alpha = 1 / (1 + np.exp(-a['smear']))[None, :, None]
          k = np.concatenate([k[:1], alpha * k[1:] + (1 - alpha) * k[:-1]])
        scores = np.einsum('thk,shk->hts', q, k) / math.sqrt(q.shape[-1]) + bias
        weights = np.where(allowed, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
        weights /= np.maximum(weights.sum(-1, keepdims=True), 1e-300)  # a padding query attends to nothing: zeros
        return np.einsum('hts,shk,hkd->td', weights, v, a['out']['kernel']) + a['out']['bias']

      def mlp(y, m=layer):
        return act(y @ m['mlp_in']['kernel'] + m['mlp_in']['bias']) @ m['mlp_out']['kernel'] + m['mlp_out']['bias']

      if config.pre_norm:
        x = x + attend(layer_norm_eps(x, layer['attention_norm']))
        x = x + mlp(layer_norm_eps(x, layer['mlp_norm']))
      else:
        x = layer_norm_eps(x + attend(x), layer['attention_norm'])
        x = layer_norm_eps(x + mlp(x), layer['mlp_norm'])
    if config.pre_norm:
      x = layer_norm_eps(x, trunk['norm'])
    if config.task == 'classification':
      pooled = x[0] if config.pooling == 'cls' else x[real].mean(axis=0)
      if config.pooler:
        pooled = np.tanh(pooled @ p['pooler']['kernel'] + p['pooler']['bias'])
      out.append(pooled @ p['classifier_head']['output']['kernel'] + p['classifier_head']['output']['bias'])
      continue
    head = p[f'{config.task}_head']
    if config.task == 'mlm':
      x = layer_norm_eps(act(x @ head['transform']['kernel'] + head['transform']['bias']), head['transform_norm'])
    if config.tie_embeddings:
      out.append(x @ trunk['token_embed']['embedding'].T + head['bias'])
    else:
      out.append(x @ head['output']['kernel'] + head['output']['bias'])
  return np.stack(out)


def closed_form_count(task, *, d, f, num_layers, heads, tied, learned, relative, classes=2, types=0, table=0,
                      pooler=False, smeared=False):
  per_layer = 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)  # 2 LayerNorms, q/k/v/out, MLP
  per_layer += heads if smeared else 0
  trunk = (VOCAB * d + types * d + ((table or MAX_LEN) * d if learned else 0) + (32 * heads if relative else 0)
           + num_layers * per_layer + 2 * d)
  output = VOCAB if tied else d * VOCAB + VOCAB
  head = {'classification': d * classes + classes, 'mlm': d * d + d + 2 * d + output, 'lm': output}[task]
  return trunk + head + (d * d + d if pooler else 0)


class TransformerTest(chex.TestCase):

  @parameterized.named_parameters(
      ('cls_post_ln_relative', dict(task='classification', pooling='cls', pre_norm=False, attention_bias='relative')),
      ('mean_alibi_sinusoidal', dict(task='classification', pooling='mean', attention_bias='alibi',
                                     positions='sinusoidal')),
      ('mlm_relative_tied', dict(task='mlm', attention_bias='relative')),
      ('lm_post_ln_alibi_untied', dict(task='lm', pre_norm=False, attention_bias='alibi', positions='none',
                                       tie_embeddings=False)),
      ('lm_smeared_keys_relative', dict(task='lm', attention_bias='relative', smeared_keys=True)),
      ('mlm_smeared_keys', dict(task='mlm', smeared_keys=True)),
      ('bert_classifier', dict(task='classification', pre_norm=False, pooler=True, type_vocab_size=2,
                               layer_norm_eps=1e-12, hidden_act='gelu_new', max_position_embeddings=24)),
      ('bert_mlm', dict(task='mlm', pre_norm=False, pooler=True, type_vocab_size=3, layer_norm_eps=1e-12,
                        max_position_embeddings=20)),
  )
  def test_matches_float64_reference_and_appended_padding_changes_nothing(self, overrides):
    config = fixtures.model(num_layers=2, **overrides)
    module, params = build(num_layers=2, **overrides)
    inputs = random_ids(2, (3, 8), lengths=[8, 5, 2])
    apply = jax.jit(lambda x: module.apply({'params': params}, x))
    logits = apply(inputs)
    chex.assert_shape(logits, (3, 2) if config.task == 'classification' else (3, 8, VOCAB))
    self.assertEqual(logits.dtype, jnp.float32)
    np.testing.assert_allclose(logits, reference_logits(params, inputs, config), rtol=1e-5, atol=1e-5)
    padded_logits = apply(jnp.pad(inputs, ((0, 0), (0, 6))))
    if config.task != 'classification':
      real = np.asarray(inputs != 0)
      logits, padded_logits = np.asarray(logits)[real], np.asarray(padded_logits)[:, :8][real]
    chex.assert_trees_all_close(padded_logits, logits, atol=1e-5)
    if config.type_vocab_size:
      types = np.random.default_rng(3).integers(0, config.type_vocab_size, inputs.shape)
      typed_logits = jax.jit(lambda x, t: module.apply({'params': params}, x, token_type_ids=t))(inputs, types)
      np.testing.assert_allclose(typed_logits, reference_logits(params, inputs, config, types), rtol=1e-5, atol=1e-5)
      self.assertGreater(float(jnp.abs(typed_logits - apply(inputs)).max()), 1e-3)

  def test_jit_matches_eager_and_dropout_acts_only_in_training(self):
    module, params = build(task='mlm', pre_norm=False, attention_bias='relative', num_layers=2)
    inputs = random_ids(1, (2, 12), lengths=[12, 7])
    eager = module.apply({'params': params}, inputs)
    jitted = jax.jit(lambda x: module.apply({'params': params}, x))(inputs)
    chex.assert_trees_all_close(eager, jitted, atol=1e-5, rtol=1e-5)
    train = jax.jit(lambda x, key: module.apply({'params': params}, x, train=True, rngs={'dropout': key}))
    dropped, dropped_again, other_key = (train(inputs, jax.random.key(k)) for k in (3, 3, 4))
    self.assertGreater(float(jnp.abs(dropped - jitted).max()), 1e-3)
    self.assertGreater(float(jnp.abs(dropped - other_key).max()), 1e-3)
    np.testing.assert_array_equal(dropped, dropped_again)

  def test_decoder_is_causal_by_gradient(self):
    module, params = build(task='lm', attention_bias='relative', num_layers=2)
    deps = dependencies(module, params, random_ids(3, (2, 8)))
    np.testing.assert_array_equal(deps, np.tril(np.ones((8, 8), bool)))

  @parameterized.named_parameters(('lm', 'lm', False), ('mlm', 'mlm', False), ('lm_smeared_keys', 'lm', True))
  def test_packed_documents_do_not_see_each_other(self, task, smeared_keys):
    module, params = build(task=task, attention_bias='relative', smeared_keys=smeared_keys)
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
      ('lm_smeared_keys', dict(task='lm', smeared_keys=True, num_layers=2)),
      ('bert_classifier', dict(task='classification', pre_norm=False, pooler=True, type_vocab_size=2,
                               max_position_embeddings=40)),
      ('bert_mlm_keeps_pooler', dict(task='mlm', pre_norm=False, pooler=True, type_vocab_size=2)),
  )
  def test_param_count_matches_closed_form(self, overrides):
    config = fixtures.model(**overrides)
    module = models.get_model(config, vocab_size=VOCAB, max_len=MAX_LEN)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
    expected = closed_form_count(
        config.task, d=config.d_model, f=config.mlp_dim, num_layers=config.num_layers, heads=config.num_heads,
        tied=config.tie_embeddings, learned=config.positions == 'learned',
        relative=config.attention_bias == 'relative', classes=config.num_classes, types=config.type_vocab_size,
        table=config.max_position_embeddings, pooler=config.pooler, smeared=config.smeared_keys)
    self.assertEqual(models.count_params(shapes), expected)

  @parameterized.named_parameters(('plain', False), ('smeared_keys', True))
  def test_cached_greedy_generation_matches_uncached(self, smeared_keys):
    module, params = build(task='lm', attention_bias='relative', smeared_keys=smeared_keys)
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

  def test_bfloat16_compute_close_to_float32_with_float32_params_and_logits(self):
    module, params = build(task='mlm', attention_bias='relative')
    bf16_module = models.get_model(fixtures.model(task='mlm', attention_bias='relative', dtype='bfloat16'),
                                   vocab_size=VOCAB, max_len=MAX_LEN)
    bf16_shapes = jax.eval_shape(bf16_module.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
    self.assertTrue(all(s.dtype == jnp.float32 for s in jax.tree.leaves(bf16_shapes)))
    inputs = random_ids(6, (2, 12), lengths=[12, 9])
    reference = jax.jit(lambda x: module.apply({'params': params}, x))(inputs)
    logits, state = jax.jit(lambda x: bf16_module.apply(
        {'params': params}, x, capture_intermediates=lambda m, _: m.name == 'transform_norm',
        mutable=['intermediates']))(inputs)
    self.assertEqual(logits.dtype, jnp.float32)
    scale = float(jnp.abs(reference).max())
    chex.assert_trees_all_close(logits, reference, atol=0.03 * scale)
    self.assertGreater(float(jnp.abs(logits - reference).max()), 0.0)  # bf16 really was used
    # The tied output layer multiplies the bf16 hidden states and the bf16 embedding in float32: the logits are
    # their float32 products, not bf16-rounded (which is off by ~2^-9 relative).
    (hidden_BxTxD,) = state['intermediates']['mlm_head']['transform_norm']['__call__']
    self.assertEqual(hidden_BxTxD.dtype, jnp.bfloat16)
    embedding = np.asarray(params['encoder']['token_embed']['embedding'].astype(jnp.bfloat16), np.float64)
    expected = np.asarray(hidden_BxTxD, np.float64) @ embedding.T + np.asarray(params['mlm_head']['bias'])
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * scale)

  def test_relative_position_buckets_match_t5(self):
    # Values of T5's (and Hugging Face's) _relative_position_bucket for key - query positions.
    relative = jnp.array([0, -1, 1, -7, -8, -127, -1000, 1000, 20])
    bidirectional = transformer.relative_position_bucket(relative, bidirectional=True)
    np.testing.assert_array_equal(bidirectional, [0, 1, 17, 7, 8, 15, 15, 31, 26])
    causal = transformer.relative_position_bucket(relative, bidirectional=False)
    np.testing.assert_array_equal(causal, [0, 1, 0, 7, 8, 31, 31, 0, 0])
    sweep = np.arange(-300, 300)
    for bidirectional in (True, False):
      np.testing.assert_array_equal(transformer.relative_position_bucket(sweep, bidirectional=bidirectional),
                                    t5_bucket(sweep, bidirectional))

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
      ('name', dict(name='hyena'), 'model.name'),
      ('task', dict(task='seq2seq'), 'model.task'),
      ('bias', dict(attention_bias='rotary'), 'model.attention_bias'),
      ('positions', dict(positions='xpos'), 'model.positions'),
      ('pooling', dict(pooling='max'), 'model.pooling'),
      ('dtype', dict(dtype='float16'), 'model.dtype'),
      ('heads', dict(num_heads=3), 'num_heads'),
      ('dropout', dict(dropout=1.0), r'model.dropout=1.0 must be in \[0, 1\)'),
      ('cudnn_on_cpu', dict(attention='cudnn', dtype='bfloat16'), "attention='cudnn'"),
      ('activation', dict(hidden_act='swish'), "model.hidden_act='swish'"),
      ('position_table', dict(max_position_embeddings=8), 'max_position_embeddings=8 is less than data.max_len=16'),
      ('pooler_mean', dict(pooler=True, pooling='mean'), "needs model.pooling='cls'"),
      ('pooler_lm', dict(pooler=True, task='lm'), 'for encoders'),
      ('epsilon', dict(layer_norm_eps=0.0), 'layer_norm_eps=0.0 must be > 0'),
      ('types', dict(type_vocab_size=-1), 'type_vocab_size=-1'),
  )
  def test_bad_config_raises_value_error(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      models.get_model(fixtures.model(**overrides), vocab_size=VOCAB, max_len=MAX_LEN)


class LayersTest(chex.TestCase):

  def test_threefry_matches_random123_known_answers(self):
    # Threefry-2x32, 20 rounds: the known-answer vectors of Random123 (kat_vectors), as (key, counter, result).
    for key, counter, expected in [((0, 0), (0, 0), (0x6b200159, 0x99ba4efe)),
                                   ((0xffffffff,) * 2, (0xffffffff,) * 2, (0x1cb996fc, 0xbb002be7)),
                                   ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0))]:
      words = random_bits.threefry2x32(*(jnp.uint32(w) for w in key + counter))
      self.assertEqual(tuple(int(w) for w in words), expected)

  def test_dropout_zeroes_rate_and_scales_the_rest(self):
    x = jnp.asarray(np.random.default_rng(0).normal(3.0, 1.0, (64, 1024)), jnp.float32)  # no zeros
    dropout = layers.Dropout(0.25)
    apply = jax.jit(lambda x, key: dropout.apply({}, x, train=True, rngs={'dropout': key}))
    dropped, dropped_again, other_key = (np.asarray(apply(x, jax.random.key(k))) for k in (0, 0, 1))
    kept, kept_other = dropped != 0, other_key != 0
    self.assertAlmostEqual(1.0 - kept.mean(), 0.25, delta=0.01)  # 5 standard deviations: 0.0085
    np.testing.assert_allclose(dropped[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(dropped, dropped_again)
    # Another key draws an independent mask: the two agree on about 0.75² + 0.25² of the elements.
    self.assertAlmostEqual(float((kept == kept_other).mean()), 0.625, delta=0.01)
    np.testing.assert_array_equal(dropout.apply({}, x, train=False), x)

  def test_logits_are_float32_products_of_bfloat16_inputs(self):
    rng = np.random.default_rng(1)
    x, kernel, bias = rng.normal(size=(4, 64)), rng.normal(size=(64, 5)), rng.normal(size=5)
    params = {'kernel': jnp.asarray(kernel, jnp.float32), 'bias': jnp.asarray(bias, jnp.float32)}
    logits = layers.Logits(5, jnp.bfloat16).apply({'params': params}, jnp.asarray(x, jnp.float32))
    self.assertEqual(logits.dtype, jnp.float32)
    as_bf16 = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)
    np.testing.assert_allclose(logits, as_bf16(x) @ as_bf16(kernel) + np.float32(bias), rtol=1e-5, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
