"""Schedules against closed forms; the decay mask on a real Flax model; each optimizer's updates over three steps
against an independent reference on random inputs: AdamW, Lion and SGD with momentum against float64 NumPy written
from their papers' update rules, Adafactor against `optax.adafactor` itself; weight decay on matrices only."""

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
import optax

from lm_jax import optim


def _optim_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      name='adamw', learning_rate=3e-3, warmup_steps=4, schedule='linear', b1=0.9, b2=0.99, eps=1e-6,
      weight_decay=0.1, clip_norm=0.0, grad_accum_steps=1))
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


def _numpy_adamw(c):
  """u = m̂ / (√v̂ + ε), optax's conventions: bias correction, eps outside the sqrt."""
  mu, nu = {}, {}

  def direction(k, g, t):
    mu[k] = c.b1 * mu.get(k, 0.0) + (1 - c.b1) * g
    nu[k] = c.b2 * nu.get(k, 0.0) + (1 - c.b2) * g ** 2
    return (mu[k] / (1 - c.b1 ** t)) / (np.sqrt(nu[k] / (1 - c.b2 ** t)) + c.eps)

  return direction


def _numpy_lion(c):
  """Chen et al. 2023, Algorithm 2: u = sign(β₁m + (1−β₁)g), then m ← β₂m + (1−β₂)g."""
  mu = {}

  def direction(k, g, _):
    m = mu.get(k, 0.0)
    mu[k] = c.b2 * m + (1 - c.b2) * g
    return np.sign(c.b1 * m + (1 - c.b1) * g)

  return direction


def _numpy_sgd(c):
  """Heavy-ball momentum, as torch.optim.SGD (no dampening): m ← μm + g, u = m."""
  mu = {}

  def direction(k, g, _):
    mu[k] = c.b1 * mu.get(k, 0.0) + g
    return mu[k]

  return direction


NUMPY_DIRECTIONS = {'adamw': _numpy_adamw, 'lion': _numpy_lion, 'sgd': _numpy_sgd}


def _numpy_descent(params, grads_per_step, c, lrs):
  """float64 p ← p − lr·(u + λp), λ on matrices only, after global-norm clipping; u from `NUMPY_DIRECTIONS`."""
  direction = NUMPY_DIRECTIONS[c.name](c)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    if c.clip_norm > 0:
      norm = math.sqrt(sum(float(np.sum(v ** 2)) for v in g.values()))
      g = {k: v * min(1.0, c.clip_norm / norm) for k, v in g.items()}
    for k in p:
      u = direction(k, g[k], t)
      if p[k].ndim >= 2:
        u = u + c.weight_decay * p[k]
      p[k] = p[k] - lr * u
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


def _apply_updates(tx, grads_per_step, wrap=lambda f: f, params=None, update=None):
  """Runs `update` (default `tx.update`) on each step's gradients from `params` (default the tiny model's), the
  state from `tx.init`; returns the params and the optimizer state."""
  new_params = {k: jnp.asarray(v) for k, v in (params or _flat(_tiny_params())).items()}
  opt_state = tx.init(new_params)
  update_fn = wrap(update or tx.update)
  for grads in grads_per_step:
    updates, opt_state = update_fn(jax.tree.map(jnp.asarray, grads), opt_state, new_params)
    new_params = optax.apply_updates(new_params, updates)
  return new_params, opt_state


def _make(c):
  return optim.make_optimizer(c, total_steps=20)


def _three_steps(clip_norm, name='adamw', params=None):
  """The config, params and gradients of three updates (lr 0, peak/2, peak during warmup): gradient norms differing
  by 100x between steps, which none of the optimizers is invariant to, so clipping (which brings every step to norm
  0.5) changes the result far beyond the tolerance."""
  c = _optim_config(name=name, warmup_steps=2, clip_norm=clip_norm, eps=1e-2)
  params = params or _flat(_tiny_params())
  grads_per_step = _random_grads(params, grad_scales=[1.0, 10.0, 0.1])
  return c, params, grads_per_step


def _expected(c, params, grads_per_step):
  lrs = [_closed_form_lr(s, peak=c.learning_rate, warmup=2, total=20, schedule='linear') for s in range(3)]
  return _numpy_descent(params, grads_per_step, c, lrs)


class OptimizerTest(chex.TestCase):
  """Each of `optim.OPTIMIZERS` on random params and gradients, against a reference it does not share code with."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=tuple(NUMPY_DIRECTIONS), clip_norm=(0.0, 0.5))
  def test_matches_numpy(self, name, clip_norm):
    c, params, grads_per_step = _three_steps(clip_norm, name)
    got, _ = _apply_updates(_make(c), grads_per_step, wrap=self.variant)
    expected = _expected(c, params, grads_per_step)
    chex.assert_trees_all_close(got, expected, rtol=2e-5, atol=2e-7)
    toggled_clip = _optim_config(name=name, warmup_steps=2, clip_norm=0.0 if clip_norm else 0.5, eps=1e-2)
    other = _expected(toggled_clip, params, grads_per_step)
    self.assertGreater(max(float(np.max(np.abs(other[k] - expected[k]))) for k in params), 1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(('no_clip', 0.0), ('clip', 0.5))
  def test_adafactor_matches_optax_adafactor(self, clip_norm):
    # A 128 × 130 matrix: optax factors the second moments of matrices whose sides are both >= 128.
    big = {'big': np.random.default_rng(5).standard_normal((128, 130)).astype(np.float32)}
    c, params, grads_per_step = _three_steps(clip_norm, 'adafactor', params={**_flat(_tiny_params()), **big})
    c.weight_decay = 0.0   # optax.adafactor's decay is not scaled by the learning rate (ours is: the test below)
    got, _ = _apply_updates(_make(c), grads_per_step, wrap=self.variant, params=params)
    peer = optax.adafactor(optim.learning_rate_schedule(c, total_steps=20))
    if clip_norm:
      peer = optax.chain(optax.clip_by_global_norm(clip_norm), peer)
    expected, _ = _apply_updates(peer, grads_per_step, wrap=jax.jit, params=params)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)
    self.assertGreater(float(jnp.max(jnp.abs(got['big'] - params['big']))), 1e-4)   # it moved

  def test_adamw_is_optax_adamw(self):
    """Part for part, so the state of a checkpoint written by `optax.adamw` restores into it."""
    c, params, grads_per_step = _three_steps(0.5)
    got, got_state = _apply_updates(_make(c), grads_per_step)
    peer = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(
        optim.learning_rate_schedule(c, total_steps=20), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
        mask=optim.decay_mask))
    expected, expected_state = _apply_updates(peer, grads_per_step, params=params)
    chex.assert_trees_all_equal((got, got_state), (expected, expected_state))

  @parameterized.named_parameters(*((name, name) for name in optim.OPTIMIZERS))
  def test_weight_decay_only_on_matrices(self, name):
    """One step at the peak lr, with and without decay: the updates differ by −lr·λ·p on matrices, not elsewhere."""
    params = _flat(_tiny_params())
    grads = _random_grads(params, grad_scales=[1.0])
    c = _optim_config(name=name, warmup_steps=0)
    with_decay, _ = _apply_updates(_make(c), grads)
    without, _ = _apply_updates(_make(_optim_config(name=name, warmup_steps=0, weight_decay=0.0)), grads)
    expected = {k: -c.learning_rate * c.weight_decay * v if v.ndim >= 2 else np.zeros_like(v)
                for k, v in params.items()}
    chex.assert_trees_all_close(jax.tree.map(jnp.subtract, with_decay, without), expected, rtol=1e-3, atol=1e-9)

  def test_unknown_optimizer_lists_allowed(self):
    with self.assertRaisesRegex(ValueError, r"'adam'.*adamw, adafactor, lion, sgd"):
      optim.make_optimizer(_optim_config(name='adam'), total_steps=10)


if __name__ == '__main__':
  absltest.main()
