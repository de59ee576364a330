"""Scaled dot-product attention as pure jnp functions (Vaswani et al., 2017).

    scores  = q · kᵀ / √d_k + b        b: an additive bias; masks enter as -inf in b
    weights = softmax(scores)          over the keys, always in float32
    out     = weights · v

Shapes: q `[B, T, H, D]`, k and v `[B, S, H, D]` (the layout of `jax.nn.dot_product_attention`); bias and mask
broadcast to `[B, H, T, S]`. Masks are boolean, True = may attend. Combine masks with `combine_masks` (logical
and; `None` means "no mask"), e.g. a decoder over padded ids:

    mask = combine_masks(causal_mask(T), padding_mask(ids, pad_id=0))

A query row with no allowed key (e.g. a padding query) gets all-zero weights and a zero output, never NaN.
"""

import math

import jax
import jax.numpy as jnp


def split_heads(x_BxTxD: jax.Array, num_heads: int) -> jax.Array:
  """`[B, T, H·K] -> [B, T, H, K]`; the inverse of `merge_heads`."""
  *lead, d = x_BxTxD.shape
  if d % num_heads:
    raise ValueError(f'split_heads: feature size {d} is not divisible by num_heads={num_heads}.')
  return x_BxTxD.reshape(*lead, num_heads, d // num_heads)


def merge_heads(x_BxTxHxK: jax.Array) -> jax.Array:
  """`[B, T, H, K] -> [B, T, H·K]`; the inverse of `split_heads`."""
  *lead, h, k = x_BxTxHxK.shape
  return x_BxTxHxK.reshape(*lead, h * k)


def causal_mask(length: int) -> jax.Array:
  """Boolean `[1, 1, T, T]`, True where key s <= query t.

  causal_mask(3)[0, 0] == [[1, 0, 0],
                           [1, 1, 0],
                           [1, 1, 1]]
  """
  idx = jnp.arange(length)
  return (idx[None, :] <= idx[:, None])[None, None]


def padding_mask(query_ids_BxT: jax.Array, key_ids_BxS: jax.Array | None = None, *, pad_id: int = 0) -> jax.Array:
  """Boolean `[B, 1, T, S]`, True where neither the query nor the key token is padding.

  padding_mask([[5, 7, 0]])[0, 0] == [[1, 1, 0],
                                      [1, 1, 0],
                                      [0, 0, 0]]
  key_ids defaults to query_ids (self-attention).
  """
  query_ids_BxT = jnp.asarray(query_ids_BxT)
  key_ids_BxS = query_ids_BxT if key_ids_BxS is None else jnp.asarray(key_ids_BxS)
  q_real = query_ids_BxT != pad_id
  k_real = key_ids_BxS != pad_id
  return q_real[:, None, :, None] & k_real[:, None, None, :]


def segment_mask(query_segments_BxT: jax.Array, key_segments_BxS: jax.Array | None = None) -> jax.Array:
  """Boolean `[B, 1, T, S]`, True where query and key belong to the same packed document (segment id)."""
  key_segments_BxS = query_segments_BxT if key_segments_BxS is None else key_segments_BxS
  return query_segments_BxT[:, None, :, None] == key_segments_BxS[:, None, None, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
  """Logical and of the given boolean masks (broadcasting); `None` entries are skipped, all-None gives None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def _check_shapes(q, k, v=None):
  if q.ndim != 4 or k.ndim != 4:
    raise ValueError(f'attention expects q [B, T, H, D] and k [B, S, H, D]; got q {q.shape}, k {k.shape}.')
  if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f'attention: q {q.shape} and k {k.shape} must agree on B, H and D.')
  if v is not None and (v.ndim != 4 or v.shape[:3] != k.shape[:3]):
    raise ValueError(f'attention: v {v.shape} must be [B, S, H, Dv] with B, S, H of k {k.shape}.')


def attention_weights(q: jax.Array, k: jax.Array, *, bias: jax.Array | None = None,
                      mask: jax.Array | None = None) -> jax.Array:
  """softmax(q · kᵀ / √d_k + b) over keys, float32 `[B, H, T, S]`; fully masked rows are all zero."""
  _check_shapes(q, k)
  scores_BxHxTxS = jnp.einsum('bthd,bshd->bhts', q, k, preferred_element_type=jnp.float32)
  scores_BxHxTxS = scores_BxHxTxS / math.sqrt(q.shape[-1])
  if bias is not None:
    scores_BxHxTxS = scores_BxHxTxS + bias.astype(jnp.float32)
  if mask is not None:
    scores_BxHxTxS = jnp.where(mask, scores_BxHxTxS, -jnp.inf)
  # Stable softmax. A row that is all -inf has no finite max: shift it by 0 instead, so exp gives zeros and the
  # zero denominator is replaced by 1 (zero weights rather than NaN).
  row_max = jnp.max(scores_BxHxTxS, axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  unnormalized = jnp.exp(scores_BxHxTxS - row_max)
  denominator = jnp.sum(unnormalized, axis=-1, keepdims=True)
  return unnormalized / jnp.where(denominator == 0.0, 1.0, denominator)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                          mask: jax.Array | None = None) -> jax.Array:
  """weights · v with `attention_weights`; output `[B, T, H, Dv]` in the dtype of v."""
  _check_shapes(q, k, v)
  weights_BxHxTxS = attention_weights(q, k, bias=bias, mask=mask)
  return jnp.einsum('bhts,bshd->bthd', weights_BxHxTxS.astype(v.dtype), v)
