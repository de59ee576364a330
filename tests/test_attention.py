"""lm_jax.attention against a float64 NumPy reference, jax.nn.dot_product_attention, and its own properties."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax import test_util as jtu

from lm_jax import attention

B, T, S, H, D = 2, 5, 7, 3, 8


def reference_attention(q, k, v, bias=None, mask=None):
  """The original formula in float64 NumPy: softmax(q·kᵀ/√d + b) · v, masked rows → 0."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scores = np.einsum('bthd,bshd->bhts', q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    scores = scores + np.asarray(bias, np.float64)
  allowed = np.broadcast_to(True if mask is None else np.asarray(mask), scores.shape)
  scores = np.where(allowed, scores, -np.inf)
  row_max = np.max(scores, axis=-1, keepdims=True)
  row_max = np.where(np.isfinite(row_max), row_max, 0.0)
  e = np.exp(scores - row_max)
  total = e.sum(-1, keepdims=True)
  weights = e / np.where(total == 0, 1.0, total)
  return np.einsum('bhts,bshd->bthd', weights, v), weights


def random_inputs(seed, t=T, s=S, dtype=jnp.float32):
  kq, kk, kv, kb, km = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(kq, (B, t, H, D), dtype)
  k = jax.random.normal(kk, (B, s, H, D), dtype)
  v = jax.random.normal(kv, (B, s, H, D), dtype)
  bias = jax.random.normal(kb, (B, H, t, s), jnp.float32)
  mask = jax.random.bernoulli(km, 0.7, (B, 1, t, s))
  return q, k, v, bias, mask


class AttentionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  @parameterized.named_parameters(('plain', False, False), ('bias', True, False), ('mask', False, True),
                                  ('bias_and_mask', True, True))
  def test_matches_float64_reference(self, use_bias, use_mask):
    q, k, v, bias, mask = random_inputs(0)
    bias = bias if use_bias else None
    mask = mask if use_mask else None
    attend = self.variant(lambda q, k, v, b, m: attention.dot_product_attention(q, k, v, bias=b, mask=m))
    out = attend(q, k, v, bias, mask)
    expected, expected_weights = reference_attention(q, k, v, bias, mask)
    chex.assert_shape(out, (B, T, H, D))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    weights = attention.attention_weights(q, k, bias=bias, mask=mask)
    chex.assert_shape(weights, (B, H, T, S))
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_jax_nn(self):
    q, k, v, bias, _ = random_inputs(1, t=6, s=6)
    mask = attention.causal_mask(6)
    ours = self.variant(lambda: attention.dot_product_attention(q, k, v, bias=bias, mask=mask))()
    theirs = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-6)

  def test_jit_equals_no_jit(self):
    q, k, v, bias, mask = random_inputs(2)
    eager = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
    jitted = jax.jit(attention.dot_product_attention)(q, k, v, bias=bias, mask=mask)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-6)

  def test_gradients(self):
    q, k, v, bias, mask = random_inputs(3, t=3, s=4)
    # Keep at least one allowed key per row: a fully masked row is constant (no gradient to check).
    mask = mask.at[..., 0].set(True)
    fn = jax.jit(lambda q, k, v, b: attention.dot_product_attention(q, k, v, bias=b, mask=mask))
    jtu.check_grads(fn, (q, k, v, bias), order=1, modes=('rev',), atol=2e-2, rtol=2e-2, eps=1e-2)

  def test_bfloat16_close_to_float32(self):
    q, k, v, bias, mask = random_inputs(4)
    out32 = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
    as16 = lambda x: x.astype(jnp.bfloat16)
    out16 = attention.dot_product_attention(as16(q), as16(k), as16(v), bias=bias, mask=mask)
    self.assertEqual(out16.dtype, jnp.bfloat16)
    self.assertEqual(attention.attention_weights(as16(q), as16(k)).dtype, jnp.float32)
    np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=2e-2, rtol=2e-2)

  def test_fully_masked_rows_are_zero_with_finite_gradients(self):
    q, k, v, bias, _ = random_inputs(5)
    mask = np.ones((B, 1, T, S), bool)
    mask[0, 0, 2, :] = False  # query 2 of batch 0 may attend nowhere
    out = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
    np.testing.assert_array_equal(out[0, 2], np.zeros((H, D)))
    self.assertTrue(np.all(np.abs(out[1, 2]) > 0))
    grads = jax.grad(lambda q, k, v: attention.dot_product_attention(q, k, v, mask=mask).sum(), (0, 1, 2))(q, k, v)
    chex.assert_tree_all_finite(grads)
    # A -inf bias masks like a False mask entry.
    neg_inf_bias = jnp.where(mask, 0.0, -jnp.inf)
    chex.assert_trees_all_close(attention.dot_product_attention(q, k, v, bias=bias + neg_inf_bias), out, atol=1e-6)

  def test_causal_mask_by_gradient(self):
    q, k, v, _, _ = random_inputs(6, t=6, s=6)
    mask = attention.causal_mask(6)
    out_per_t = lambda k, v: attention.dot_product_attention(q, k, v, mask=mask).sum(axis=(0, 2, 3))
    dk_TxBxSxHxD, dv_TxBxSxHxD = jax.jit(jax.jacrev(out_per_t, (0, 1)))(k, v)
    for t in range(6):
      dk, dv = dk_TxBxSxHxD[t], dv_TxBxSxHxD[t]
      np.testing.assert_array_equal(dk[:, t + 1:], 0.0)
      np.testing.assert_array_equal(dv[:, t + 1:], 0.0)
      self.assertTrue(np.all(np.abs(dv[:, :t + 1]).sum(axis=(2, 3)) > 0))

  def test_padding_mask_makes_pad_keys_irrelevant(self):
    ids = np.array([[5, 7, 9, 0, 0], [3, 4, 0, 0, 0]])
    q, k, v, _, _ = random_inputs(7, t=5, s=5)
    mask = attention.padding_mask(ids)
    out = attention.dot_product_attention(q, k, v, mask=mask)
    noisy_k = k.at[:, 3:].set(100.0)
    noisy_v = v.at[:, 3:].set(-100.0)
    out_noisy = attention.dot_product_attention(q, noisy_k, noisy_v, mask=mask)
    chex.assert_trees_all_close(out, out_noisy, atol=1e-6)
    np.testing.assert_array_equal(out[1, 2:], 0.0)  # padding queries attend nowhere

  def test_masks(self):
    np.testing.assert_array_equal(attention.causal_mask(3)[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(attention.padding_mask(np.array([[5, 7, 0]]))[0, 0],
                                  [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    segments = np.array([[1, 1, 2, 0]])
    np.testing.assert_array_equal(attention.segment_mask(segments)[0, 0],
                                  [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    combined = attention.combine_masks(attention.causal_mask(4), None, attention.padding_mask(np.array([[5, 7, 9, 0]])))
    np.testing.assert_array_equal(combined[0, 0], [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    self.assertIsNone(attention.combine_masks(None, None))

  def test_bad_shapes_are_named(self):
    q, k, v, _, _ = random_inputs(9)
    with self.assertRaisesRegex(ValueError, r'q \(2, 5, 3\)'):
      attention.dot_product_attention(q[..., 0], k, v)
    with self.assertRaisesRegex(ValueError, 'must agree'):
      attention.dot_product_attention(q[:, :, :2], k, v)

  @chex.variants(with_jit=True, without_jit=True)
  def test_smeared_keys_match_float64_loop_and_restart_at_document_starts(self):
    k = np.random.default_rng(4).normal(size=(B, S, H, D)).astype(np.float32)
    mix = np.array([-1.5, 0.0, 2.0], np.float32)
    starts = np.zeros((B, S), bool)
    starts[:, 0] = True
    starts[1, 4] = True   # row 1 packs a second document from key 4
    smeared = self.variant(attention.smear_keys)(k, mix, starts)
    alpha = 1 / (1 + np.exp(-mix.astype(np.float64)))
    expected = np.array(k, np.float64)
    for b in range(B):
      for s in range(S):
        if not starts[b, s]:
          expected[b, s] = alpha[:, None] * k[b, s] + (1 - alpha[:, None]) * k[b, s - 1]
    np.testing.assert_allclose(smeared, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(smeared[1, 4], k[1, 4])   # the second document never sees the first
    with self.assertRaisesRegex(ValueError, r'mix \(2,\)'):
      attention.smear_keys(k, mix[:2], starts)


def dense_and_chunked(q, k, v, bias, mask, **chunks):
  dense = lambda q, k, v, b: attention.dot_product_attention(q, k, v, bias=b, mask=mask)
  chunked = lambda q, k, v, b: attention.chunked_dot_product_attention(q, k, v, bias=b, mask=mask, **chunks)
  return dense, chunked


def grads(fn, q, k, v, bias):
  """Gradients of a random projection of the output w.r.t. q, k, v and the bias."""
  weights = jax.random.normal(jax.random.key(99), (q.shape[0], q.shape[1], v.shape[2], v.shape[3]))
  return jax.grad(lambda *args: jnp.sum(fn(*args) * weights), argnums=(0, 1, 2, 3))(q, k, v, bias)


class ChunkedAttentionTest(chex.TestCase):
  """chunked_dot_product_attention == dot_product_attention (itself checked against float64 NumPy above)."""

  @chex.variants(with_jit=True)
  @parameterized.named_parameters(
      ('bias', 'none', True, 2, 3), ('random_mask_bias', 'random', True, 3, 2),
      ('causal_bias', 'causal', True, 2, 2), ('padding', 'padding', False, 4, 3),
      ('one_block', 'random', True, 512, 512), ('single_rows', 'causal', True, 1, 1))
  def test_outputs_and_gradients_equal_dense(self, mask_kind, use_bias, query_chunk, key_chunk):
    self.check_equal_dense(mask_kind, use_bias, query_chunk, key_chunk)

  @chex.variants(without_jit=True)   # eager == jit: with and without a bias, chunks that do not divide T
  @parameterized.named_parameters(('random_mask_bias', 'random', True, 3, 2), ('padding', 'padding', False, 4, 3))
  def test_outputs_and_gradients_equal_dense_eagerly(self, mask_kind, use_bias, query_chunk, key_chunk):
    self.check_equal_dense(mask_kind, use_bias, query_chunk, key_chunk)

  def check_equal_dense(self, mask_kind, use_bias, query_chunk, key_chunk):
    t = s = 7
    q, k, v, bias, random_mask = random_inputs(20, t=t, s=s)
    ids = np.array([[5, 7, 9, 4, 0, 0, 0], [3, 4, 6, 1, 2, 8, 0]])
    mask = {'none': None, 'random': random_mask, 'causal': attention.causal_mask(t),
            'padding': attention.padding_mask(ids)}[mask_kind]
    bias = bias if use_bias else jnp.zeros((1, 1, 1, 1))
    dense, chunked = dense_and_chunked(q, k, v, bias, mask, query_chunk=query_chunk, key_chunk=key_chunk)
    out = self.variant(chunked)(q, k, v, bias)
    chex.assert_shape(out, (B, t, H, D))
    chex.assert_trees_all_close(out, dense(q, k, v, bias), atol=1e-5, rtol=1e-5)
    chunked_grads = self.variant(lambda *args: grads(chunked, *args))(q, k, v, bias)
    chex.assert_trees_all_close(chunked_grads, grads(dense, q, k, v, bias), atol=1e-5, rtol=1e-5)
    chex.assert_tree_all_finite(chunked_grads)

  def test_cross_attention_lengths_and_fully_masked_rows(self):
    q, k, v, bias, mask = random_inputs(21)  # T=5 queries, S=7 keys, neither a multiple of the chunks
    mask = mask.at[0, 0, 2, :].set(False)  # query 2 of batch 0 may attend nowhere
    dense, chunked = dense_and_chunked(q, k, v, bias, mask, query_chunk=2, key_chunk=3)
    out = jax.jit(chunked)(q, k, v, bias)
    np.testing.assert_array_equal(out[0, 2], np.zeros((H, D)))
    chex.assert_trees_all_close(out, jax.jit(dense)(q, k, v, bias), atol=1e-5, rtol=1e-5)
    grads_of = lambda fn: jax.jit(functools.partial(grads, fn))(q, k, v, bias)
    chex.assert_trees_all_close(grads_of(chunked), grads_of(dense), atol=1e-5, rtol=1e-5)
    # A -inf bias masks like a False mask entry, also inside the running max.
    neg_inf = jnp.where(mask, 0.0, -jnp.inf)
    chex.assert_trees_all_close(attention.chunked_dot_product_attention(q, k, v, bias=bias + neg_inf, query_chunk=2,
                                                                        key_chunk=3), out, atol=1e-6)

  def test_large_score_range_is_stable(self):
    q, k, v, _, _ = random_inputs(22, t=8, s=8)
    q = q * 30.0  # scores of several hundred: exp without the running max would overflow
    dense, chunked = dense_and_chunked(q, k, v, None, attention.causal_mask(8), query_chunk=4, key_chunk=2)
    chex.assert_trees_all_close(chunked(q, k, v, None), dense(q, k, v, None), atol=1e-5, rtol=1e-5)

  def test_bfloat16_keeps_dtype_and_matches_float32(self):
    q, k, v, bias, mask = random_inputs(23)
    as16 = lambda x: x.astype(jnp.bfloat16)
    out16 = attention.chunked_dot_product_attention(as16(q), as16(k), as16(v), bias=bias, mask=mask, key_chunk=3)
    self.assertEqual(out16.dtype, jnp.bfloat16)
    expected = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
    np.testing.assert_allclose(out16.astype(jnp.float32), expected, atol=2e-2, rtol=2e-2)

  def test_backward_memory_does_not_grow_with_t_squared(self):
    def temp_bytes(fn, t):
      q = k = v = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
      loss = lambda q, k, v: fn(q, k, v, mask=attention.causal_mask(t)).sum()
      return jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    chunked = functools.partial(attention.chunked_dot_product_attention, query_chunk=128, key_chunk=128)
    dense_bytes = temp_bytes(attention.dot_product_attention, 2048)
    chunked_bytes = temp_bytes(chunked, 2048)
    # Dense keeps [1, 2, T, T] float32 scores and weights (32 MiB each at T=2048); the blocks are 128 × 128.
    self.assertGreater(dense_bytes, 32 * 2 ** 20)
    self.assertLess(chunked_bytes, dense_bytes / 8)

  def test_bad_chunk_is_named(self):
    q, k, v, _, _ = random_inputs(24)
    with self.assertRaisesRegex(ValueError, 'key_chunk=0'):
      attention.chunked_dot_product_attention(q, k, v, key_chunk=0)

  def test_transformer_with_chunked_attention_equals_dense(self):
    import fixtures  # pylint: disable=g-import-not-at-top
    from lm_jax import models  # pylint: disable=g-import-not-at-top
    import model_helpers  # pylint: disable=g-import-not-at-top
    config = fixtures.model(task='lm', attention_bias='alibi')
    ids = jax.random.randint(jax.random.key(25), (2, 12), 1, 50)
    logits, params = {}, None
    for name in ('dense', 'chunked'):
      config.attention = name
      module = models.get_model(config, vocab_size=50, max_len=12)
      params = params or model_helpers.random_params(module, scale=0.3)   # the same params: the schedule has none
      logits[name] = jax.jit(module.apply)({'params': params}, ids)
    chex.assert_trees_all_close(logits['chunked'], logits['dense'], atol=1e-5, rtol=1e-5)
