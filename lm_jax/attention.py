"""Scaled dot-product attention as pure jnp functions (Vaswani et al., 2017).

    scores  = q · kᵀ / √d_k + b        b: an additive bias; masks enter as -inf in b
    weights = softmax(scores)          over the keys, always in float32
    out     = weights · v

Shapes: q `[B, T, H, D]`, k and v `[B, S, H, D]` (the layout of `jax.nn.dot_product_attention`); bias and mask
broadcast to `[B, H, T, S]`. Masks are boolean, True = may attend. Combine masks with `combine_masks` (logical
and; `None` means "no mask"), e.g. a decoder over padded ids:

    mask = combine_masks(causal_mask(T), padding_mask(ids, pad_id=0))

A query row with no allowed key (e.g. a padding query) gets all-zero weights and a zero output, never NaN.

`smear_keys` is Olsson et al.'s (2022) smeared key: each key mixes in the previous position's key, so one layer
can match "the token after an earlier copy of mine", the induction/recall pattern that otherwise waits for a
previous-token head to form in an earlier layer.

`chunked_dot_product_attention` computes the same output without the `[B, H, T, S]` scores (Rabe & Staats, 2021;
the online softmax of FlashAttention, Dao et al., 2022): keys in blocks of `key_chunk`, queries in blocks of
`query_chunk`; per query row it keeps the running max m, the running sum l of exp(s - m) and the running
Σ exp(s - m)·v (rescaled by exp(m_old - m_new) when m grows). The backward recomputes each block's scores
(`jax.checkpoint`) instead of storing them, so memory grows with T·S only through the caller's mask and bias.

What today's decoders add, each a pure function applied before attention:
- `rotary_embedding` (RoPE, Su et al., 2021, eq. 34): rotate each pair (x_i, x_{i+D/2}) of q and k by the angle
  p·θ^(-2i/D) of the token's position p, so q_t·k_s depends on t − s only.
- `repeat_kv_heads` (grouped-query attention, Ainslie et al., 2023): G key/value heads, each shared by H/G
  consecutive query heads (G = 1: multi-query attention, Shazeer, 2019).
- `sliding_window_mask` (local attention, Beltagy et al., 2020; Mistral): query t sees the `window` latest keys.
"""

import math

import jax
import jax.numpy as jnp


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


def sliding_window_mask(query_index_BxT: jax.Array, key_index_BxS: jax.Array | None = None, *,
                        window: int) -> jax.Array:
  """Boolean `[B, 1, T, S]`, True where key s is one of the `window` latest up to query t: 0 <= t − s < window.

  Indices are token slots (not positions that restart in a packed row; the segment mask separates documents).
  sliding_window_mask(jnp.arange(4)[None], window=2)[0, 0] == [[1, 0, 0, 0],
                                                               [1, 1, 0, 0],
                                                               [0, 1, 1, 0],
                                                               [0, 0, 1, 1]]
  """
  if window < 1:
    raise ValueError(f'sliding_window_mask: window={window} must be >= 1.')
  key_index_BxS = query_index_BxT if key_index_BxS is None else key_index_BxS
  distance_BxTxS = query_index_BxT[:, :, None] - key_index_BxS[:, None, :]
  return ((distance_BxTxS >= 0) & (distance_BxTxS < window))[:, None]


def rotary_embedding(x_BxTxHxD: jax.Array, positions_BxT: jax.Array, *, theta: float = 10000.0) -> jax.Array:
  """RoPE: (x_i, x_{i+D/2}) rotated by the angle p·θ^(-2i/D), i < D/2, p the token's position; x's dtype.

  The half-split pairing of GPT-NeoX and Llama's Hugging Face port. For one pair, D = 2 and position 1:
  rotary_embedding([[[[1., 0.]]]], [[1]]) == [[[[cos 1, sin 1]]]].
  """
  half = x_BxTxHxD.shape[-1] // 2
  if x_BxTxHxD.shape[-1] % 2:
    raise ValueError(f'rotary_embedding needs an even head dimension, got {x_BxTxHxD.shape[-1]}.')
  inv_freq_F = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / x_BxTxHxD.shape[-1]))
  angles_BxTx1xF = (positions_BxT.astype(jnp.float32)[:, :, None] * inv_freq_F[None, None, :])[:, :, None, :]
  cos, sin = jnp.cos(angles_BxTx1xF), jnp.sin(angles_BxTx1xF)
  x1, x2 = x_BxTxHxD[..., :half].astype(jnp.float32), x_BxTxHxD[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BxTxHxD.dtype)


def repeat_kv_heads(kv_BxSxGxD: jax.Array, num_heads: int) -> jax.Array:
  """`[B, S, H, D]` from G key (or value) heads: head h reads kv head h // (H / G) (grouped-query attention)."""
  groups = kv_BxSxGxD.shape[2]
  if num_heads % groups:
    raise ValueError(f'repeat_kv_heads: {num_heads} query heads do not divide into {groups} key/value heads.')
  return kv_BxSxGxD if groups == num_heads else jnp.repeat(kv_BxSxGxD, num_heads // groups, axis=2)


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
  """Logical and of the given boolean masks (broadcasting); `None` entries are skipped, all-None gives None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def smear_keys(k_BxSxHxD: jax.Array, mix_H: jax.Array, starts_BxS: jax.Array) -> jax.Array:
  """k'_s = α·k_s + (1 − α)·k_{s−1} per head, α = sigmoid(mix_H); a key with starts_BxS True (the first of its
  document, or of the row) keeps k_s. starts broadcasts over the batch (`[1, S]` for one layout)."""
  if mix_H.shape != k_BxSxHxD.shape[2:3] or starts_BxS.ndim != 2:
    raise ValueError(f'smear_keys: keys {k_BxSxHxD.shape} need mix [H] and starts [B, S]; got mix '
                     f'{mix_H.shape}, starts {starts_BxS.shape}.')
  previous = jnp.pad(k_BxSxHxD, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
  alpha = jnp.where(starts_BxS[:, :, None, None], 1.0, jax.nn.sigmoid(mix_H)[None, None, :, None])
  return (alpha * k_BxSxHxD + (1 - alpha) * previous).astype(k_BxSxHxD.dtype)


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


def _pad_axis(x, axis: int, size: int, full: int, value):
  """Pads `axis` of x to `size` with `value` when that axis has the full length (not a broadcast 1)."""
  if x is None or x.shape[axis] != full or size == full:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - full)
  return jnp.pad(x, widths, constant_values=value)


def _block(x, axis: int, start, size: int):
  """The `size` entries of `axis` from `start`, or x itself when that axis is a broadcast 1 (or x is None)."""
  if x is None or x.shape[axis] == 1:
    return x
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis)


def _query_block(q_BxQxHxD, k_BxSxHxD, v_BxSxHxD, bias, mask, key_chunk: int):
  """Online softmax over the key blocks of one query block; float32 `[B, Q, H, Dv]`."""
  batch, queries, heads, _ = q_BxQxHxD.shape
  scale = 1.0 / math.sqrt(q_BxQxHxD.shape[-1])

  @jax.checkpoint  # the backward recomputes this block's scores rather than storing them
  def step(carry, start):
    max_BxHxQ, sum_BxHxQ, acc_BxQxHxD = carry
    k_BxCxHxD = jax.lax.dynamic_slice_in_dim(k_BxSxHxD, start, key_chunk, 1)
    v_BxCxHxD = jax.lax.dynamic_slice_in_dim(v_BxSxHxD, start, key_chunk, 1)
    scores_BxHxQxC = jnp.einsum('bqhd,bchd->bhqc', q_BxQxHxD, k_BxCxHxD, preferred_element_type=jnp.float32) * scale
    if bias is not None:
      scores_BxHxQxC = scores_BxHxQxC + _block(bias, -1, start, key_chunk).astype(jnp.float32)
    if mask is not None:
      scores_BxHxQxC = jnp.where(_block(mask, -1, start, key_chunk), scores_BxHxQxC, -jnp.inf)
    # As in `attention_weights`: a row with no finite score yet is shifted by 0, so it contributes exp(-inf) = 0.
    # The output does not depend on the shifts, so they carry no gradient.
    new_max_BxHxQ = jnp.maximum(max_BxHxQ, jnp.max(scores_BxHxQxC, axis=-1))
    shift_BxHxQ = jax.lax.stop_gradient(jnp.where(jnp.isfinite(new_max_BxHxQ), new_max_BxHxQ, 0.0))
    unnormalized_BxHxQxC = jnp.exp(scores_BxHxQxC - shift_BxHxQ[..., None])
    had_score_BxHxQ = jnp.isfinite(max_BxHxQ)  # else sum and acc are still 0: rescale by 0, never by exp(+inf)
    old_shift_BxHxQ = jax.lax.stop_gradient(jnp.where(had_score_BxHxQ, max_BxHxQ, 0.0))
    rescale_BxHxQ = jnp.where(had_score_BxHxQ, jnp.exp(old_shift_BxHxQ - shift_BxHxQ), 0.0)
    sum_BxHxQ = sum_BxHxQ * rescale_BxHxQ + jnp.sum(unnormalized_BxHxQxC, axis=-1)
    acc_BxQxHxD = acc_BxQxHxD * jnp.swapaxes(rescale_BxHxQ, 1, 2)[..., None] + jnp.einsum(
        'bhqc,bchd->bqhd', unnormalized_BxHxQxC.astype(v_BxSxHxD.dtype), v_BxCxHxD,
        preferred_element_type=jnp.float32)
    return (new_max_BxHxQ, sum_BxHxQ, acc_BxQxHxD), None

  init = (jnp.full((batch, heads, queries), -jnp.inf, jnp.float32), jnp.zeros((batch, heads, queries), jnp.float32),
          jnp.zeros((batch, queries, heads, v_BxSxHxD.shape[-1]), jnp.float32))
  starts = jnp.arange(0, k_BxSxHxD.shape[1], key_chunk)
  (_, sum_BxHxQ, acc_BxQxHxD), _ = jax.lax.scan(step, init, starts)
  sum_BxQxH = jnp.swapaxes(sum_BxHxQ, 1, 2)
  return acc_BxQxHxD / jnp.where(sum_BxQxH == 0.0, 1.0, sum_BxQxH)[..., None]


def chunked_dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                                  mask: jax.Array | None = None, query_chunk: int = 512,
                                  key_chunk: int = 512) -> jax.Array:
  """`dot_product_attention` in blocks of query_chunk × key_chunk scores; output `[B, T, Hv, Dv]` in v's dtype.

  Lengths that are not a multiple of a chunk are padded (padded keys masked out, padded queries dropped).
  """
  _check_shapes(q, k, v)
  if query_chunk < 1 or key_chunk < 1:
    raise ValueError(f'chunked attention: query_chunk={query_chunk} and key_chunk={key_chunk} must be >= 1.')
  length, keys = q.shape[1], k.shape[1]
  query_chunk, key_chunk = min(query_chunk, length), min(key_chunk, keys)
  padded_length = -(-length // query_chunk) * query_chunk
  padded_keys = -(-keys // key_chunk) * key_chunk
  if padded_keys != keys:
    key_real = (jnp.arange(padded_keys) < keys)[None, None, None, :]
    mask = key_real if mask is None else _pad_axis(mask, -1, padded_keys, keys, False) & key_real
    k, v = (jnp.pad(x, ((0, 0), (0, padded_keys - keys), (0, 0), (0, 0))) for x in (k, v))
    bias = _pad_axis(bias, -1, padded_keys, keys, 0.0)
  q = jnp.pad(q, ((0, 0), (0, padded_length - length), (0, 0), (0, 0)))
  bias = _pad_axis(bias, -2, padded_length, length, 0.0)
  mask = _pad_axis(mask, -2, padded_length, length, False)

  def one_query_block(start):
    q_block = jax.lax.dynamic_slice_in_dim(q, start, query_chunk, 1)
    return _query_block(q_block, k, v, _block(bias, -2, start, query_chunk), _block(mask, -2, start, query_chunk),
                        key_chunk)

  out_NxBxQxHxD = jax.lax.map(one_query_block, jnp.arange(0, padded_length, query_chunk))
  out_BxTxHxD = jnp.moveaxis(out_NxBxQxHxD, 0, 1).reshape(q.shape[0], padded_length, *out_NxBxQxHxD.shape[3:])
  return out_BxTxHxD[:, :length].astype(v.dtype)
