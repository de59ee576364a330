"""Where a token is: the position encodings and position biases the attention models add.

Learned tables live in the modules; these are the closed forms: T5's relative-position buckets (Raffel et al.,
2020, §2.1), ALiBi's head slopes (Press et al., 2022, §3) and the sinusoids of Vaswani et al. (2017, §3.5). RoPE
rotates q and k inside attention, so it is `lm_jax.attention.rotary_embedding`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# model.positions: added to the embeddings (learned, sinusoidal), rotating q and k (rope), or none.
POSITIONS = ('learned', 'sinusoidal', 'rope', 'none')
# T5's defaults: 32 buckets, exact up to 8 (bidirectional: per direction), logarithmic up to distance 128.
RELATIVE_BUCKETS = 32
RELATIVE_MAX_DISTANCE = 128


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int = RELATIVE_BUCKETS,
                             max_distance: int = RELATIVE_MAX_DISTANCE) -> jax.Array:
  """T5's bucket of `key_position - query_position`: exact for small distances, log-spaced up to max_distance.

  bidirectional (32 buckets): 0 → 0, -1 → 1, +1 → 17, -127 → 15, -1000 → 15, +1000 → 31.
  causal (keys never after the query): 0 → 0, -1 → 1, -20 → 17, -1000 → 31.
  """
  distance = -jnp.asarray(relative_position)  # > 0: the key lies before the query
  bucket = jnp.zeros_like(distance)
  if bidirectional:
    num_buckets //= 2
    bucket = jnp.where(distance < 0, num_buckets, 0)
    distance = jnp.abs(distance)
  else:
    distance = jnp.maximum(distance, 0)
  max_exact = num_buckets // 2
  # Only used where distance >= max_exact, so the log never sees 0.
  log_ratio = jnp.log(jnp.maximum(distance, max_exact) / max_exact) / math.log(max_distance / max_exact)
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(distance < max_exact, distance, large)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi head slopes (Press et al., 2022): 2^(-8/H·(h+1)); non-powers of 2 interleave the next power's slopes.

  alibi_slopes(4) == [2^-2, 2^-4, 2^-6, 2^-8]
  """
  def geometric(n):
    return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
  closest = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = geometric(closest) + geometric(2 * closest)[0::2][:num_heads - closest]
  return np.asarray(slopes, np.float32)


def sinusoidal_positions(positions_BxT: jax.Array, d_model: int) -> jax.Array:
  """float32 `[B, T, D]`: sin(p / 10000^(2i/D)) in the first D/2 features, cos in the last D/2."""
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(d_model // 2, dtype=jnp.float32) * 2.0 / d_model))
  angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * inv_freq[None, None, :]
  return jnp.concatenate([jnp.sin(angles_BxTxF), jnp.cos(angles_BxTxF)], axis=-1)
