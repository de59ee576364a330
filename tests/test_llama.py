"""Today's attention options (RoPE, grouped-query attention, a sliding window, SwiGLU, RMSNorm, no biases) and the
Llama-style experiment that combines them."""

import os

from absl.testing import absltest
from absl.testing import parameterized
import chex
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

import fixtures
import model_helpers
from lm_jax import attention, configs, models
from test_all_models import decoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = dict(positions='rope', num_heads=4, num_kv_heads=2, mlp='swiglu', norm='rmsnorm', use_bias=False,
             attention_bias='none', tie_embeddings=False, dropout=0.0)
VOCAB = 19


def llama_model(**overrides):
  model_config = fixtures.model('transformer', 'lm', **{**LLAMA, **overrides})
  return models.get_model(model_config, vocab_size=VOCAB, max_len=32)


class RopeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_scores_depend_only_on_the_distance(self):
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 2, 8)), jnp.float32) for _ in range(2))
    rotate = self.variant(lambda x, p: attention.rotary_embedding(x, p, theta=100.0))
    score = lambda t, s: jnp.einsum('bthd,bshd->bh', rotate(q, jnp.asarray([[t]])), rotate(k, jnp.asarray([[s]])))
    chex.assert_trees_all_close(score(5, 2), score(13, 10), atol=1e-5)
    chex.assert_trees_all_close(score(0, 0), jnp.einsum('bthd,bshd->bh', q, k), atol=1e-5)
    self.assertGreater(float(jnp.abs(score(5, 2) - score(5, 3)).max()), 1e-3)
    chex.assert_trees_all_close(jnp.linalg.norm(rotate(q, jnp.asarray([[7]]))), jnp.linalg.norm(q), atol=1e-5)

  def test_a_rope_decoder_sees_relative_positions_only(self):
    """Shifting every position of a RoPE decoder (no other position signal) leaves its logits unchanged."""
    module = llama_model(num_layers=2)
    params = model_helpers.random_params(module, scale=0.3)
    ids = model_helpers.random_ids(3, (2, 10), vocab=VOCAB)
    positions = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (2, 10))
    apply = jax.jit(lambda p, x, pos: module.apply({'params': p}, x, positions=pos))
    chex.assert_trees_all_close(apply(params, ids, positions + 7), apply(params, ids, positions), atol=1e-4)

  def test_docstring_example(self):
    np.testing.assert_allclose(attention.rotary_embedding(jnp.asarray([[[[1.0, 0.0]]]]), jnp.asarray([[1]])),
                               [[[[np.cos(1.0), np.sin(1.0)]]]], atol=1e-6)


class AttentionOptionsTest(chex.TestCase, parameterized.TestCase):

  def test_grouped_query_attention_equals_full_heads_with_shared_keys_and_values(self):
    """num_kv_heads = 2 of 4 heads computes what 4 key/value heads compute when heads 0, 1 and 2, 3 share theirs."""
    grouped = llama_model()
    params = model_helpers.random_params(grouped, scale=0.3)
    full_params = traverse_util.flatten_dict(params)
    for path, value in list(full_params.items()):
      if path[-2] in ('key', 'value'):   # kernel [D, G, K] → [D, H, K]: each kv head repeated for its group
        full_params[path] = jnp.repeat(value, 2, axis=1)
    full = llama_model(num_kv_heads=0)
    ids = model_helpers.random_ids(0, (2, 10), vocab=VOCAB)
    apply = lambda module, p: jax.jit(lambda x: module.apply({'params': p}, x))(ids)
    chex.assert_trees_all_close(apply(grouped, params), apply(full, traverse_util.unflatten_dict(full_params)),
                                atol=1e-5)
    _, cache = jax.eval_shape(lambda: grouped.apply({'params': params}, ids, decode=True, mutable=['cache']))
    chex.assert_shape(cache['cache']['decoder']['layers_0']['attention']['cached_key'], (2, 32, 2, 4))

  def test_sliding_window_reaches_exactly_window_tokens_back(self):
    module = llama_model(attention_window=3)
    params = model_helpers.random_params(module, scale=0.3)
    depends_TxS = model_helpers.dependencies(module, params, model_helpers.random_ids(1, (2, 9), vocab=VOCAB))
    distance = np.arange(9)[:, None] - np.arange(9)[None, :]
    np.testing.assert_array_equal(depends_TxS, (distance >= 0) & (distance < 3))

  def test_sliding_window_mask_docstring_example(self):
    np.testing.assert_array_equal(attention.sliding_window_mask(jnp.arange(4)[None], window=2)[0, 0],
                                  np.tril(np.ones((4, 4), bool)) & ~np.tril(np.ones((4, 4), bool), -2))

  def test_llama_layers_with_a_window_decode_as_the_full_forward(self):
    module = llama_model(attention_window=4, num_layers=2)
    params = model_helpers.random_params(module, scale=0.3)
    ids = model_helpers.random_ids(2, (2, 12), vocab=VOCAB)
    full = jax.jit(lambda x: module.apply({'params': params}, x))(ids)
    decode_all = decoder(module)   # prompts of 6, longer than the window: the cut inside the prompt, one compile
    chex.assert_trees_all_close(decode_all(params, ids, prompt=6), full, atol=1e-4, rtol=1e-4)
    padded = jnp.pad(ids, ((0, 0), (2, 0)))
    chex.assert_trees_all_close(decode_all(params, padded, prompt=6)[:, 2:], full, atol=1e-4, rtol=1e-4)

  def test_llama_layers_have_no_biases_and_the_closed_form_parameter_count(self):
    module = llama_model()
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
    paths = ['/'.join(path) for path in traverse_util.flatten_dict(shapes)]
    self.assertEqual([p for p in paths if p.endswith('bias') and 'head' not in p], [])
    self.assertIn('decoder/layers_0/mlp_gate/kernel', paths)
    d, f, kv = 16, 32, 16 * 2 // 4
    # embedding, q and o (d·d each), k and v (d·kv each), SwiGLU (3·d·f), two RMSNorm scales, final norm, untied
    # head (d·V + V bias).
    expected = VOCAB * d + 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d + d + d * VOCAB + VOCAB
    self.assertEqual(models.count_params(shapes), expected)

  def test_flops_and_state_size_count_grouped_heads_swiglu_and_the_window(self):
    model_config = fixtures.model('transformer', 'lm', **{**LLAMA, 'attention_window': 8})
    d, f, kv, seq, vocab = 16, 32, 8, 32, 100
    keys = 8 - 8 * 8 / (2 * seq)
    expected = 6 * (2 * d * d + 2 * d * kv + 3 * d * f) + 12 * d * keys + 6 * d * vocab
    np.testing.assert_allclose(models.train_flops_per_token(model_config, vocab_size=vocab, seq_len=seq), expected)
    self.assertEqual(models.state_size(model_config), (2 * kv * 8, 'per sequence'))

  @parameterized.named_parameters(
      ('groups', dict(num_kv_heads=3), 'model.num_heads=4 must be divisible by model.num_kv_heads=3'),
      ('mlp', dict(mlp='relu'), "model.mlp='relu' is not supported; allowed: 'gelu', 'swiglu'"),
      ('norm', dict(norm='batchnorm'), "model.norm='batchnorm'"),
      ('window', dict(attention_window=-1), 'model.attention_window=-1 must be >= 0'),
      ('odd_rope', dict(num_heads=16, num_kv_heads=0), "positions='rope' rotates pairs"),
  )
  def test_bad_values_name_the_key(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      llama_model(**overrides)

  def test_a_window_needs_the_causal_decoder(self):
    model_config = fixtures.model('transformer', 'classification', attention_window=4, num_classes=2)
    with self.assertRaisesRegex(ValueError, 'attention_window=4 is a causal sliding window'):
      models.get_model(model_config, vocab_size=VOCAB, max_len=16)


class LlamaExperimentTest(absltest.TestCase):

  def test_local_variant_is_a_valid_llama_style_decoder(self):
    for spec in ('llama.py', 'llama.py:local'):
      config = configs.load(os.path.join(ROOT, 'experiments', spec))
      configs.validate(config)
      m = config.model
      self.assertEqual((m.positions, m.mlp, m.norm, m.use_bias), ('rope', 'swiglu', 'rmsnorm', False))
      self.assertEqual(m.num_heads % m.num_kv_heads, 0)
      self.assertLess(m.num_kv_heads, m.num_heads)

  def test_validate_rejects_heads_not_divisible_by_kv_heads(self):
    config = configs.override(configs.load(os.path.join(ROOT, 'experiments', 'llama.py:local')),
                              {'model.num_kv_heads': 3})
    with self.assertRaisesRegex(ValueError, 'num_kv_heads=3'):
      configs.validate(config)


if __name__ == '__main__':
  absltest.main()
