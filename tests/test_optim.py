"""Schedules against closed forms; the decay mask on a real Flax model; AdamW updates, from dense gradients and from
the rows of a looked-up table, against float64 NumPy."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm_jax import optim


def _optim_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=4, schedule='linear', b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1,
      clip_norm=0.0, grad_accum_steps=1))
  c.update(overrides)
  return c


class _Tiny(nn.Module):
  """Embed → Dense → LayerNorm → Dense head: every kind of parameter the mask must tell apart."""

  @nn.compact
  def __call__(self, ids):
    x = nn.Embed(11, 6)(ids)
    x = nn.LayerNorm()(nn.Dense(5)(x))
    return nn.Dense(3, name='head')(x)


@functools.cache
def _tiny_params():
  return _Tiny().init(jax.random.key(0), jnp.ones((2, 3), jnp.int32))['params']


def _closed_form_lr(step, *, peak, warmup, total, schedule):
  if step < warmup:
    return peak * step / warmup
  progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
  return peak * {'linear': 1 - progress, 'cosine': 0.5 * (1 + math.cos(math.pi * progress)), 'constant': 1.0}[schedule]


def _numpy_adamw(params, grads_per_step, c, lrs, mask):
  """float64 AdamW (optax conventions: bias correction, eps outside the sqrt, decay added before the lr)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  nu = {k: np.zeros_like(v) for k, v in p.items()}
  for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    if c.clip_norm > 0:
      norm = math.sqrt(sum(float(np.sum(v ** 2)) for v in g.values()))
      g = {k: v * min(1.0, c.clip_norm / norm) for k, v in g.items()}
    for k in p:
      mu[k] = c.b1 * mu[k] + (1 - c.b1) * g[k]
      nu[k] = c.b2 * nu[k] + (1 - c.b2) * g[k] ** 2
      update = (mu[k] / (1 - c.b1 ** t)) / (np.sqrt(nu[k] / (1 - c.b2 ** t)) + c.eps)
      if mask[k]:
        update = update + c.weight_decay * p[k]
      p[k] = p[k] - lr * update
  return p


def _flat(tree):
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class ScheduleTest(parameterized.TestCase):

  @parameterized.parameters('linear', 'cosine', 'constant')
  def test_matches_closed_form(self, schedule):
    c = _optim_config(schedule=schedule, warmup_steps=10, learning_rate=2e-4)
    lr = optim.learning_rate_schedule(c, total_steps=50)
    for step in [0, 3, 9, 10, 11, 23, 37, 49, 50, 60]:
      expected = _closed_form_lr(step, peak=2e-4, warmup=10, total=50, schedule=schedule)
      np.testing.assert_allclose(float(lr(step)), expected, rtol=1e-6, atol=1e-10, err_msg=f'step {step}')

  def test_no_warmup_starts_at_peak(self):
    lr = optim.learning_rate_schedule(_optim_config(warmup_steps=0, schedule='cosine'), total_steps=8)
    np.testing.assert_allclose(float(lr(0)), 3e-3, rtol=1e-6)
    np.testing.assert_allclose(float(lr(4)), 1.5e-3, rtol=1e-6)

  def test_unknown_schedule_lists_allowed(self):
    with self.assertRaisesRegex(ValueError, r"'step'.*linear, cosine, constant"):
      optim.learning_rate_schedule(_optim_config(schedule='step'), total_steps=10)


class DecayMaskTest(absltest.TestCase):

  def test_only_kernels_and_embeddings_decay(self):
    mask = _flat(optim.decay_mask(_tiny_params()))
    self.assertEqual(mask, {
        "['Dense_0']['bias']": False, "['Dense_0']['kernel']": True,
        "['Embed_0']['embedding']": True,
        "['LayerNorm_0']['bias']": False, "['LayerNorm_0']['scale']": False,
        "['head']['bias']": False, "['head']['kernel']": True,
    })


def _random_grads(params, grad_scales):
  rng = np.random.default_rng(7)
  return [{k: s * rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for s in grad_scales]


def _apply_updates(c, grads_per_step, wrap=lambda f: f):
  """Runs `make_optimizer(c)` on each step's gradients (trees of arrays or RowGradients); returns params and state."""
  tx = optim.make_optimizer(c, total_steps=20)
  new_params = {k: jnp.asarray(v) for k, v in _flat(_tiny_params()).items()}
  opt_state = tx.init(new_params)
  update = wrap(tx.update)
  for grads in grads_per_step:
    updates, opt_state = update(jax.tree.map(jnp.asarray, grads), opt_state, new_params)
    new_params = {k: new_params[k] + updates[k] for k in new_params}
  return new_params, opt_state


def _three_steps(clip_norm):
  """The config, params and gradients of three updates (lr 0, peak/2, peak during warmup), and the float64 AdamW
  result: gradient norms differing by 100x between steps, which Adam is not invariant to, so clipping (which brings
  every step to norm 0.5) changes the result far beyond the tolerance."""
  c = _optim_config(warmup_steps=2, clip_norm=clip_norm, eps=1e-2)
  params = _flat(_tiny_params())
  grads_per_step = _random_grads(params, grad_scales=[1.0, 10.0, 0.1])
  return c, params, grads_per_step


def _expected(c, params, grads_per_step):
  lrs = [_closed_form_lr(s, peak=c.learning_rate, warmup=2, total=20, schedule='linear') for s in range(3)]
  return _numpy_adamw(params, grads_per_step, c, lrs, {k: v.ndim >= 2 for k, v in params.items()})


class AdamWTest(chex.TestCase):
  """`_three_steps` against `_numpy_adamw` on random params and gradients."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(('no_clip', 0.0), ('clip', 0.5))
  def test_matches_numpy_adamw(self, clip_norm):
    c, params, grads_per_step = _three_steps(clip_norm)
    got, _ = _apply_updates(c, grads_per_step, wrap=self.variant)
    expected = _expected(c, params, grads_per_step)
    for k in params:
      np.testing.assert_allclose(np.asarray(got[k]), expected[k], rtol=2e-5, atol=2e-7, err_msg=k)
    toggled_clip = _optim_config(warmup_steps=2, clip_norm=0.0 if clip_norm else 0.5, eps=1e-2)
    other = _expected(toggled_clip, params, grads_per_step)
    self.assertGreater(max(float(np.max(np.abs(other[k] - expected[k]))) for k in params), 1e-4)


class RowGradientTest(chex.TestCase):
  """The embedding's gradient as rows: what the train step gives for a table that is only looked up."""

  TABLE = "['Embed_0']['embedding']"
  IDS = [[3, 1, 3, 7, 3], [0, 3, 3, 3, 9], [10, 1, 5, 1, 1]]   # repeats; rows 2, 4, 6 and 8 never looked up

  def test_row_gradient_sums_repeated_ids(self):
    per_lookup = np.random.default_rng(1).standard_normal((2, 5, 6))
    ids = np.asarray(self.IDS[:2])
    rows = optim.row_gradient(jnp.asarray(ids), jnp.asarray(per_lookup, jnp.float32), 11)
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
    c, params, grads_per_step = _three_steps(clip_norm)
    rng = np.random.default_rng(3)
    row_grads_per_step = []
    for grads, ids in zip(grads_per_step, self.IDS):
      per_lookup = 3.0 * rng.standard_normal((len(ids), 6)).astype(np.float32)
      grads[self.TABLE] = np.zeros((11, 6), np.float32)
      np.add.at(grads[self.TABLE], ids, per_lookup)
      row_grads_per_step.append({**grads, self.TABLE: optim.row_gradient(jnp.asarray(ids), per_lookup, 11)})
    got, got_state = _apply_updates(c, row_grads_per_step, wrap=self.variant)
    expected = _expected(c, params, grads_per_step)
    for k in params:
      np.testing.assert_allclose(np.asarray(got[k]), expected[k], rtol=2e-5, atol=2e-7, err_msg=k)
    # The moments too, against optax from the dense gradient; every row moved, looked up or not.
    _, dense_state = _apply_updates(c, grads_per_step)
    chex.assert_trees_all_close(got_state, dense_state, rtol=1e-6, atol=1e-9)
    self.assertTrue(np.all(np.asarray(got[self.TABLE]) != np.asarray(params[self.TABLE])))


if __name__ == '__main__':
  absltest.main()
