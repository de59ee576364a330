"""The sequence mixers' math against float64 NumPy loops of their papers' recurrences, on random inputs.

Each scan's parallel form (the training path) and recurrent form (the generation path) must both equal the
reference loop, with document starts (the state restarts) and padding (the state is kept) in the inputs.
"""

import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

import fixtures
from lm_jax import models
from lm_jax.models import linear_attention, mamba, mixers, rg_lru

B, T = 2, 11
RNG = np.random.default_rng(0)
# Row 0: one document then padding; row 1: two packed documents (a start at t = 4).
STARTS = np.zeros((B, T), bool)
STARTS[1, 4] = True
REAL = np.ones((B, T), bool)
REAL[0, 8:] = False


def normal(*shape):
  return RNG.normal(size=shape)


def _close(actual, expected, tol=1e-5):
  chex.assert_trees_all_close(jax.tree.map(lambda a: np.asarray(a, np.float64), actual), expected, atol=tol,
                              rtol=tol)


def reference_linear_scan(a, b, h0, starts, real):
  """h_t = a_t·h_{t−1} + b_t, float64; 0 before a start, unchanged at padding."""
  h, out = h0.copy(), np.zeros_like(b)
  for t in range(a.shape[1]):
    for row in range(a.shape[0]):
      if real[row, t]:
        h[row] = (0.0 if starts[row, t] else a[row, t] * h[row]) + b[row, t]
    out[:, t] = h
  return out, h


class SharedMathTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_linear_scan_matches_the_loop(self):
    a, b, h0 = RNG.uniform(0.5, 1.0, (B, T, 3)), normal(B, T, 3), normal(B, 3)
    gated = self.variant(mixers.gate_for_resets)(jnp.asarray(a), jnp.asarray(b), STARTS, REAL)
    h, last = self.variant(mixers.linear_scan)(*gated, jnp.asarray(h0))
    expected_h, expected_last = reference_linear_scan(a, b, h0, STARTS, REAL)
    _close(h, expected_h)
    _close(last, expected_last)

  def test_linear_scan_docstring_example(self):
    h, last = mixers.linear_scan(jnp.asarray([[2.0, 3.0]]), jnp.asarray([[1.0, 1.0]]), jnp.asarray([1.0]))
    np.testing.assert_allclose(h, [[3.0, 10.0]])
    np.testing.assert_allclose(last, [10.0])

  @chex.variants(with_jit=True, without_jit=True)
  def test_causal_conv_matches_the_loop_and_continues_from_its_history(self):
    width, e = 3, 4
    x, w, bias, history = normal(B, T, e), normal(width, e), normal(e), normal(B, width - 1, e)
    conv = self.variant(mixers.causal_conv)
    y, new_history = conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias), jnp.asarray(history), STARTS)
    full = np.concatenate([history, x], axis=1)
    expected = np.zeros((B, T, e))
    for row in range(B):
      for t in range(T):
        doc_start = max([s for s in range(t + 1) if STARTS[row, s]], default=-width)
        expected[row, t] = bias + sum(w[k] * full[row, t - k + width - 1] for k in range(width) if t - k >= doc_start)
    _close(y, expected)
    # Two calls, the second continuing from the first's history, equal one call (row 0 has no start).
    first, state = conv(jnp.asarray(x[:, :5]), jnp.asarray(w), jnp.asarray(bias), jnp.asarray(history), STARTS[:, :5])
    second, _ = conv(jnp.asarray(x[:, 5:]), jnp.asarray(w), jnp.asarray(bias), state, STARTS[:, 5:])
    _close(np.concatenate([first, second], axis=1), expected)
    _close(new_history[0], x[0, -(width - 1):])


class LinearAttentionTest(chex.TestCase):

  def reference(self, fq, fk, v, starts, real):
    """Katharopoulos et al. (2020), eqs. 16-20, float64: S += φk·vᵀ, z += φk, y = φqᵀS / φqᵀz."""
    batch, steps, heads, k = fq.shape
    s, z = np.zeros((batch, heads, k, v.shape[-1])), np.zeros((batch, heads, k))
    y = np.zeros(v.shape)
    for t in range(steps):
      for row in range(batch):
        if starts[row, t]:
          s[row], z[row] = 0.0, 0.0
        if real[row, t]:
          s[row] += np.einsum('hk,hv->hkv', fk[row, t], v[row, t])
          z[row] += fk[row, t]
        y[row, t] = np.einsum('hk,hkv->hv', fq[row, t], s[row]) / np.maximum(
            np.einsum('hk,hk->h', fq[row, t], z[row]), linear_attention.EPS)[:, None]
    return y, (s, z)

  @chex.variants(with_jit=True, without_jit=True)
  def test_chunked_and_recurrent_forms_match_the_float64_loop(self):
    fq, fk = (np.asarray(linear_attention.elu_feature_map(jnp.asarray(normal(B, T, 2, 3))), np.float64)
              for _ in range(2))
    v = normal(B, T, 2, 3)
    expected_y, expected_state = self.reference(fq, fk, v, STARTS, REAL)
    zeros = (jnp.zeros((B, 2, 3, 3)), jnp.zeros((B, 2, 3)))
    args = tuple(jnp.asarray(a, jnp.float32) for a in (fq, fk, v)) + (STARTS, REAL)
    for chunk in (4, T):   # 4: the chunk boundary falls inside documents, and T pads to 12
      chunked = functools.partial(linear_attention.chunked_linear_attention, chunk=chunk)
      y, state = self.variant(chunked)(*args, zeros)
      _close(y, expected_y)
      _close(state, expected_state)
    y, state = self.variant(linear_attention.recurrent_linear_attention)(*args, zeros)
    _close(y, expected_y)
    _close(state, expected_state)

  def test_feature_map_is_positive(self):
    phi = linear_attention.elu_feature_map(jnp.asarray(normal(100) * 3))
    self.assertTrue(bool(jnp.all(phi > 0)))


class MambaTest(chex.TestCase):

  def reference(self, x, delta, a, b, c, d, starts, real):
    """selective_scan_ref in float64: h = exp(Δ·A)·h + Δ·B·x, y = C·h + D·x."""
    batch, steps, e = x.shape
    h, y = np.zeros((batch, e, a.shape[1])), np.zeros(x.shape)
    for t in range(steps):
      for row in range(batch):
        if real[row, t]:
          decay = 0.0 if starts[row, t] else np.exp(delta[row, t][:, None] * a)
          h[row] = decay * h[row] + (delta[row, t] * x[row, t])[:, None] * b[row, t][None, :]
        y[row, t] = h[row] @ c[row, t] + d * x[row, t]
    return y, h

  @chex.variants(with_jit=True, without_jit=True)
  def test_parallel_and_recurrent_scans_match_the_float64_loop(self):
    e, n = 3, 4
    x, b, c, d = normal(B, T, e), normal(B, T, n), normal(B, T, n), normal(e)
    delta = np.log1p(np.exp(normal(B, T, e)))          # softplus: Δ > 0
    a = -np.exp(normal(e, n))
    expected_y, expected_h = self.reference(x, delta, a, b, c, d, STARTS, REAL)
    args = tuple(jnp.asarray(v, jnp.float32) for v in (x, delta, a, b, c, d)) + (jnp.zeros((B, e, n)),)
    for scan in (mamba.selective_scan, mamba.recurrent_selective_scan):
      y, h = self.variant(scan)(*args, STARTS, REAL)
      _close(y, expected_y)
      _close(h, expected_h)


class RgLruTest(chex.TestCase):

  def reference(self, x, r, i, log_a, starts, real):
    """De et al. (2024), eqs. 3-4 in float64: a_t = a^(8·r_t), h = a_t·h + √(1 − a_t²)·(i_t·x_t)."""
    h, out = np.zeros((x.shape[0], x.shape[2])), np.zeros(x.shape)
    for t in range(x.shape[1]):
      for row in range(x.shape[0]):
        a_t = np.exp(8.0 * r[row, t] * log_a)
        if real[row, t]:
          h[row] = (0.0 if starts[row, t] else a_t * h[row]) + np.sqrt(1.0 - a_t ** 2) * i[row, t] * x[row, t]
        out[row, t] = h[row]
    return out, h

  @chex.variants(with_jit=True, without_jit=True)
  def test_parallel_and_recurrent_forms_match_the_float64_loop(self):
    e = 5
    x = normal(B, T, e)
    r, i = (1.0 / (1.0 + np.exp(-normal(B, T, e))) for _ in range(2))
    log_a = np.log(RNG.uniform(0.5, 0.99, e))
    expected_h, expected_last = self.reference(x, r, i, log_a, STARTS, REAL)
    args = tuple(jnp.asarray(v, jnp.float32) for v in (x, r, i, log_a)) + (jnp.zeros((B, e)),)
    for form in (rg_lru.rg_lru, rg_lru.recurrent_rg_lru):
      h, last = self.variant(form)(*args, STARTS, REAL)
      _close(h, expected_h)
      _close(last, expected_last)

  def test_decay_starts_in_the_papers_range(self):
    lam = rg_lru._lambda_init(jax.random.key(0), (1000,))  # pylint: disable=protected-access
    a_c = np.asarray(jax.nn.sigmoid(lam), np.float64) ** rg_lru.C
    self.assertGreaterEqual(a_c.min(), rg_lru.A_MIN - 1e-5)
    self.assertLessEqual(a_c.max(), rg_lru.A_MAX + 1e-5)

  def test_griffin_has_two_recurrent_blocks_per_attention_block(self):
    names = [block.__name__ for block in rg_lru.griffin_pattern(6)]
    self.assertEqual(names, ['RecurrentBlock', 'RecurrentBlock', 'AttentionBlock'] * 2)


class ModelFactsTest(absltest.TestCase):

  def test_state_sizes_in_closed_form(self):
    """zoology's state size: what each family keeps about the past, for 3 layers of d = 16, 2 heads."""
    keys = dict(num_layers=3, d_model=16, num_heads=2, state_dim=4, conv_width=3)
    state = lambda name, **kw: models.state_size(fixtures.model(name, 'lm', **{**keys, **kw}))
    self.assertEqual(state('linear_attention'), (3 * 2 * 8 * (8 + 1), 'per sequence'))     # S [K, K], z [K]
    self.assertEqual(state('mamba'), (3 * 32 * (4 + 2), 'per sequence'))                   # h [E, N], conv [W-1, E]
    self.assertEqual(state('rg_lru'), (3 * 16 * (1 + 2), 'per sequence'))                  # h [E], conv [W-1, E]
    # griffin: two recurrent blocks, one attention block whose single key/value head keeps 5 tokens.
    self.assertEqual(state('griffin', num_kv_heads=1, attention_window=5), (2 * 16 * 3 + 2 * 8 * 5, 'per sequence'))

  def test_flops_grow_with_the_model_not_the_sequence(self):
    """A recurrence costs the same per token at any length; griffin's attention only up to its window."""
    for name in ('linear_attention', 'mamba', 'rg_lru'):
      model_config = fixtures.model(name, 'lm', num_layers=3, d_model=16, num_heads=2)
      flops = [models.train_flops_per_token(model_config, vocab_size=10, seq_len=n) for n in (64, 4096)]
      self.assertEqual(flops[0], flops[1], name)


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _conv(x_TxE, w_WxE, b_E):
  return b_E + sum(w_WxE[k] * np.pad(x_TxE, ((k, 0), (0, 0)))[:len(x_TxE)] for k in range(len(w_WxE)))


class WholeMixerTest(chex.TestCase):
  """Each recurrent mixer (projections, convolution, gates, scan) against its paper's block in float64 NumPy."""

  def mixer_and_params(self, mixer_class, **overrides):
    model_config = fixtures.model('mamba', 'lm', d_model=8, num_heads=2, state_dim=3, conv_width=3, **overrides)
    config = mixers.config_from(model_config, vocab_size=5, max_len=16)
    module = mixer_class(config)
    u = jnp.asarray(normal(1, 7, 8), jnp.float32)
    context = mixers.Context(jnp.ones((1, 7), bool), jnp.zeros((1, 7), bool), decode=False, train=False)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, context), u)['params']
    params = jax.tree.map(lambda s: jnp.asarray(normal(*s.shape) * 0.5, jnp.float32), shapes)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    out = jax.jit(lambda params, u: module.apply({'params': params}, u, context))(params, u)
    return out, p, np.asarray(u[0], np.float64)

  def test_mamba_block_matches_the_paper(self):
    """Gu & Dao (2023), Figure 3 and Algorithm 2."""
    out, p, u = self.mixer_and_params(mamba.Mamba)
    x, z = np.split(u @ p['in_proj']['kernel'], 2, axis=-1)
    x = _silu(_conv(x, p['conv_kernel'], p['conv_bias']))
    rank = mamba.dt_rank(8)
    delta_in, b, c = np.split(x @ p['x_proj']['kernel'], [rank, rank + 3], axis=-1)
    delta = np.log1p(np.exp(delta_in @ p['dt_proj']['kernel'] + p['dt_proj']['bias']))
    a = -np.exp(p['A_log'])
    h, y = np.zeros((16, 3)), np.zeros((7, 16))
    for t in range(7):
      h = np.exp(delta[t][:, None] * a) * h + (delta[t] * x[t])[:, None] * b[t][None, :]
      y[t] = h @ c[t] + p['D'] * x[t]
    _close(out[0], (y * _silu(z)) @ p['out_proj']['kernel'])

  def test_hawk_recurrent_block_matches_the_paper(self):
    """De et al. (2024), Figure 2c and eqs. 1-4."""
    out, p, u = self.mixer_and_params(rg_lru.RecurrentMixer)
    gate = 0.5 * (u @ p['gate_proj']['kernel'] + p['gate_proj']['bias'])
    gate = gate * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (2 * gate + 0.044715 * (2 * gate) ** 3)))   # tanh GELU
    x = _conv(u @ p['input_proj']['kernel'] + p['input_proj']['bias'], p['conv_kernel'], p['conv_bias'])

    def block_diagonal(q, v):
      return np.einsum('thi,hio->tho', v.reshape(7, 2, 4), q['kernel']).reshape(7, 8) + q['bias'].reshape(8)

    r, i = _sigmoid(block_diagonal(p['recurrence_gate'], x)), _sigmoid(block_diagonal(p['input_gate'], x))
    log_a = np.log(_sigmoid(p['a_param']))
    h, hs = np.zeros(8), np.zeros((7, 8))
    for t in range(7):
      a_t = np.exp(8.0 * r[t] * log_a)
      h = a_t * h + np.sqrt(1.0 - a_t ** 2) * i[t] * x[t]
      hs[t] = h
    _close(out[0], (hs * gate) @ p['out_proj']['kernel'] + p['out_proj']['bias'])


if __name__ == '__main__':
  absltest.main()
