"""Softmax cross-entropy of an output layer without the `[N, V]` logits: the vocabulary head fused with its loss.

    loss    = Σ_n w_n · (logsumexp_v(z_nv) − z_n,y_n)      z = h · Eᵀ + b   (E: `[V, D]`, the tied embedding)
    correct = Σ_n w_n · [argmax_v z_nv = y_n]

An LM with a large vocabulary spends most of its train step in the head: XLA writes the float32 logits `[N, V]`
(16×256 tokens × 32k = 512 MiB in the `gpt` bench case), then reads and writes them again for the softmax, its
gradient and two matmuls. `fused_head_cross_entropy` scans over blocks of `chunk` tokens; each block computes its
logits, its loss and, since the loss is a weighted sum, already its gradient dz = w·(softmax(z) − onehot(y)), and
folds dz into dh (one block's rows), dE and db. Memory holds one `[chunk, V]` block; the matmuls are the same three
as with materialized logits, with no recomputation.
"""

import functools

import jax
import jax.numpy as jnp


def _block_loss(h_CxD, table_VxD, bias_V, targets_C, weights_C):
  """float32 logits of a block → (Σ w·nll, Σ w·correct, the softmax `[C, V]`, the logits' dtype-cast inputs)."""
  logits_CxV = jnp.einsum('cd,vd->cv', h_CxD, table_VxD.astype(h_CxD.dtype),
                          preferred_element_type=jnp.float32) + bias_V[None, :]
  logsumexp_C = jax.nn.logsumexp(logits_CxV, axis=-1)
  target_logit_C = jnp.take_along_axis(logits_CxV, targets_C[:, None], axis=-1)[:, 0]
  loss = jnp.sum(weights_C * (logsumexp_C - target_logit_C))
  correct = jnp.sum(weights_C * (jnp.argmax(logits_CxV, axis=-1) == targets_C))
  return loss, correct, logits_CxV, logsumexp_C


def _blocks(chunk, h_NxD, targets_N, weights_N):
  """Pads N to a multiple of chunk (weight 0) and splits into `[N/chunk, chunk, ...]` blocks."""
  n = h_NxD.shape[0]
  padded = -(-n // chunk) * chunk
  pad = lambda x: jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1))
  split = lambda x: pad(x).reshape(padded // chunk, chunk, *x.shape[1:])
  return split(h_NxD), split(targets_N), split(weights_N.astype(jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_head_cross_entropy(chunk: int, h_NxD, table_VxD, bias_V, targets_N, weights_N):
  """(Σ_n w_n·nll_n, Σ_n w_n·correct_n) of the logits h·Eᵀ + b, computed `chunk` tokens at a time; float32.

  Differentiable in h, E and b (float32 gradients cast to their dtypes). Equal to
  `optax.softmax_cross_entropy_with_integer_labels(h @ E.T + b, y) · w` summed, to float32 rounding.
  """
  def step(totals, block):
    loss, correct, _, _ = _block_loss(block[0], table_VxD, bias_V, *block[1:])
    return (totals[0] + loss, totals[1] + correct), None

  totals, _ = jax.lax.scan(step, (jnp.zeros(()), jnp.zeros(())), _blocks(chunk, h_NxD, targets_N, weights_N))
  return totals


def _forward(chunk, h_NxD, table_VxD, bias_V, targets_N, weights_N):
  def step(carry, block):
    loss_sum, correct_sum, dtable_VxD, dbias_V = carry
    h_CxD, targets_C, weights_C = block
    loss, correct, logits_CxV, logsumexp_C = _block_loss(h_CxD, table_VxD, bias_V, targets_C, weights_C)
    # d loss / d logits = w · (softmax − onehot(target)), as one elementwise pass over the block (a scatter of −1
    # into the softmax would be a pass of its own).
    is_target_CxV = jax.lax.broadcasted_iota(jnp.int32, logits_CxV.shape, 1) == targets_C[:, None]
    dlogits_CxV = (jnp.exp(logits_CxV - logsumexp_C[:, None]) - is_target_CxV) * weights_C[:, None]
    dlogits_CxV = dlogits_CxV.astype(h_CxD.dtype)
    dh_CxD = jnp.einsum('cv,vd->cd', dlogits_CxV, table_VxD.astype(h_CxD.dtype), preferred_element_type=jnp.float32)
    dtable_VxD = dtable_VxD + jnp.einsum('cv,cd->vd', dlogits_CxV, h_CxD, preferred_element_type=jnp.float32)
    dbias_V = dbias_V + jnp.sum(dlogits_CxV, axis=0, dtype=jnp.float32)
    return (loss_sum + loss, correct_sum + correct, dtable_VxD, dbias_V), dh_CxD

  init = (jnp.zeros(()), jnp.zeros(()), jnp.zeros(table_VxD.shape, jnp.float32), jnp.zeros(bias_V.shape, jnp.float32))
  (loss, correct, dtable_VxD, dbias_V), dh_blocks = jax.lax.scan(step, init,
                                                                  _blocks(chunk, h_NxD, targets_N, weights_N))
  dh_NxD = dh_blocks.reshape(-1, h_NxD.shape[-1])[:h_NxD.shape[0]]
  residuals = (dh_NxD.astype(h_NxD.dtype), dtable_VxD.astype(table_VxD.dtype), dbias_V.astype(bias_V.dtype))
  return (loss, correct), residuals


def _backward(chunk, residuals, cotangents):
  del chunk
  dh_NxD, dtable_VxD, dbias_V = residuals
  scale = cotangents[0]  # the count of correct predictions has no gradient
  return (scale.astype(dh_NxD.dtype) * dh_NxD, scale * dtable_VxD, scale * dbias_V, None, None)


fused_head_cross_entropy.defvjp(_forward, _backward)
