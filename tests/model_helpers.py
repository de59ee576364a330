"""Helpers shared by the model tests: random params and ids, and which inputs each output depends on."""

import jax
import jax.numpy as jnp
import numpy as np

from lm_jax import models


def random_params(module, *, scale: float, seed: int = 0):
  """Float32 params of the module's shapes, drawn by NumPy (no init compile; no zero biases or unit scales)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), jnp.float32), shapes)


def make_model(model_config, *, vocab: int, max_len: int, scale: float):
  """The registry's module for `model_config` and random params for it (see `random_params`)."""
  module = models.get_model(model_config, vocab_size=vocab, max_len=max_len)
  return module, random_params(module, scale=scale)


def random_ids(seed, shape, *, vocab: int, lengths=None):
  """Random non-pad ids; with `lengths`, row b is padded (id 0) after lengths[b] tokens."""
  ids = np.random.default_rng(seed).integers(1, vocab, shape)
  if lengths is not None:
    ids[np.arange(shape[1])[None, :] >= np.asarray(lengths)[:, None]] = 0
  return jnp.asarray(ids, jnp.int32)


def dependencies(module, params, inputs, **kwargs):
  """bool [T, S]: whether any logit at position t has a nonzero gradient w.r.t. the embedding at position s."""
  logits, state = jax.eval_shape(
      lambda: module.apply({'params': params}, inputs, mutable=['perturbations'], **kwargs))
  perturbations = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state['perturbations'])
  weights = jax.random.normal(jax.random.key(7), logits.shape)

  def per_position(perturbations):
    logits = module.apply({'params': params, 'perturbations': perturbations}, inputs, **kwargs)
    return jnp.einsum('btv,btv->t', logits, weights)

  (jacobian_TxBxSxD,) = jax.tree.leaves(jax.jit(jax.jacrev(per_position))(perturbations))
  return np.asarray(jnp.abs(jacobian_TxBxSxD).sum(axis=(1, 3)) > 0)
