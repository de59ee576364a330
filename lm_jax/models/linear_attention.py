"""Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs"): softmax(q·kᵀ) replaced by φ(q)·φ(k)ᵀ.

With a positive feature map φ(x) = elu(x) + 1 (§3.2.1) causal attention is a recurrence (eqs. 16-20):

    S_t = S_{t−1} + φ(k_t)·v_tᵀ      z_t = z_{t−1} + φ(k_t)      y_t = φ(q_t)ᵀ·S_t / φ(q_t)ᵀ·z_t

per head, S `[K, V]` and z `[K]`: a state of H·K·(K + 1) floats per layer, whatever the length (zoology's
"state size"). Training runs the chunked-parallel form: within a chunk of C tokens the masked C×C product
(φ(Q)·φ(K)ᵀ ⊙ M)·V, plus φ(Q)·S of the chunks before; between chunks S and z are carried
(`chunked_linear_attention`). Generation runs the recurrence above (`recurrent_linear_attention`); both give the
same y. The state restarts at each packed document's start, and padding leaves it unchanged.

The layer is a transformer block with this attention: x + W_o·LinAttn(norm(x)), then x + MLP(norm(x)).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm_jax.models import mixers

TASKS = mixers.TASKS
CHUNK = 64          # tokens per chunk of the parallel form: C×C scores per chunk, one state carry between chunks
EPS = 1e-6          # floor of the normalizer φ(q)ᵀ·z (it is > 0 wherever a real key was seen)


def elu_feature_map(x: jax.Array) -> jax.Array:
  """φ(x) = elu(x) + 1 > 0 (Katharopoulos et al., 2020, eq. 7): x + 1 for x > 0, exp(x) otherwise."""
  return jax.nn.elu(x) + 1.0


def linear_attention_step(state, fq_BxHxK, fk_BxHxK, v_BxHxV, start_B, real_B):
  """One token of the recurrence: (S, z) zeroed at a document start, then, for a real token, S += φk·vᵀ and
  z += φk; y = φqᵀ·S / φqᵀ·z. Returns ((S, z), y `[B, H, V]`)."""
  s_BxHxKxV, z_BxHxK = state
  keep_B = ~start_B
  s_BxHxKxV = s_BxHxKxV * keep_B[:, None, None, None]
  z_BxHxK = z_BxHxK * keep_B[:, None, None]
  real = real_B.astype(jnp.float32)
  s_BxHxKxV = s_BxHxKxV + jnp.einsum('bhk,bhv,b->bhkv', fk_BxHxK, v_BxHxV, real)
  z_BxHxK = z_BxHxK + fk_BxHxK * real[:, None, None]
  numerator_BxHxV = jnp.einsum('bhk,bhkv->bhv', fq_BxHxK, s_BxHxKxV)
  denominator_BxH = jnp.einsum('bhk,bhk->bh', fq_BxHxK, z_BxHxK)
  return (s_BxHxKxV, z_BxHxK), numerator_BxHxV / jnp.maximum(denominator_BxH, EPS)[:, :, None]


def recurrent_linear_attention(fq_BxTxHxK, fk_BxTxHxK, v_BxTxHxV, starts_BxT, real_BxT, state):
  """The recurrence over T tokens from `state` = (S, z): (y `[B, T, H, V]`, final state)."""
  time_major = lambda a: jnp.moveaxis(a, 1, 0)
  state, y_TxBxHxV = jax.lax.scan(lambda carry, xs: linear_attention_step(carry, *xs), state,
                                  tuple(map(time_major, (fq_BxTxHxK, fk_BxTxHxK, v_BxTxHxV, starts_BxT, real_BxT))))
  return jnp.moveaxis(y_TxBxHxV, 0, 1), state


def _chunk(carry, inputs):
  """One chunk of C tokens. g: each token's document number; a token attends to earlier tokens of its document,
  and to the carried state when that state belongs to its document too."""
  s_BxHxKxV, z_BxHxK, g_prev_B = carry
  fq_BxCxHxK, fk_BxCxHxK, v_BxCxHxV, g_BxC, real_BxC = inputs
  length = g_BxC.shape[1]
  causal_CxC = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  same_BxCxC = (g_BxC[:, :, None] == g_BxC[:, None, :]) & causal_CxC[None] & real_BxC[:, None, :]
  scores_BxHxCxC = jnp.einsum('bthk,bshk->bhts', fq_BxCxHxK, fk_BxCxHxK) * same_BxCxC[:, None]
  from_state_BxC = (g_BxC == g_prev_B[:, None]).astype(jnp.float32)
  numerator_BxCxHxV = (jnp.einsum('bhts,bshv->bthv', scores_BxHxCxC, v_BxCxHxV)
                       + jnp.einsum('bthk,bhkv,bt->bthv', fq_BxCxHxK, s_BxHxKxV, from_state_BxC))
  denominator_BxCxH = (jnp.swapaxes(scores_BxHxCxC.sum(axis=-1), 1, 2)
                       + jnp.einsum('bthk,bhk,bt->bth', fq_BxCxHxK, z_BxHxK, from_state_BxC))
  y_BxCxHxV = numerator_BxCxHxV / jnp.maximum(denominator_BxCxH, EPS)[..., None]
  # The state after the chunk: that of its last token's document.
  g_last_B = g_BxC[:, -1]
  keep_B = (g_last_B == g_prev_B).astype(jnp.float32)
  adds_BxC = ((g_BxC == g_last_B[:, None]) & real_BxC).astype(jnp.float32)
  s_BxHxKxV = s_BxHxKxV * keep_B[:, None, None, None] + jnp.einsum('bshk,bshv,bs->bhkv', fk_BxCxHxK, v_BxCxHxV,
                                                                   adds_BxC)
  z_BxHxK = z_BxHxK * keep_B[:, None, None] + jnp.einsum('bshk,bs->bhk', fk_BxCxHxK, adds_BxC)
  return (s_BxHxKxV, z_BxHxK, g_last_B), y_BxCxHxV


def chunked_linear_attention(fq_BxTxHxK, fk_BxTxHxK, v_BxTxHxV, starts_BxT, real_BxT, state, *, chunk: int = CHUNK):
  """The same (y `[B, T, H, V]`, final state) as `recurrent_linear_attention`, a chunk of tokens at a time."""
  batch, length = starts_BxT.shape
  chunk = min(chunk, length)
  padded = -(-length // chunk) * chunk
  # Document numbers: the state's document is 0, the first start makes 1, ... Padded tokens are not real, and
  # they continue the last token's document.
  g_BxT = jnp.cumsum(starts_BxT.astype(jnp.int32), axis=1)
  pad = lambda a, mode: jnp.pad(a, [(0, 0), (0, padded - length)] + [(0, 0)] * (a.ndim - 2), mode=mode)
  by_chunk = lambda a, mode='constant': jnp.moveaxis(
      pad(a, mode).reshape(batch, padded // chunk, chunk, *a.shape[2:]), 1, 0)
  inputs = (*map(by_chunk, (fq_BxTxHxK, fk_BxTxHxK, v_BxTxHxV)), by_chunk(g_BxT, 'edge'), by_chunk(real_BxT))
  (s_BxHxKxV, z_BxHxK, _), y_NxBxCxHxV = jax.lax.scan(_chunk, (*state, jnp.zeros((batch,), jnp.int32)), inputs)
  y_BxTxHxV = jnp.moveaxis(y_NxBxCxHxV, 0, 1).reshape(batch, padded, *y_NxBxCxHxV.shape[3:])[:, :length]
  return y_BxTxHxV, (s_BxHxKxV, z_BxHxK)


class LinearAttention(nn.Module):
  """Heads of linear attention, `[B, T, D]` → `[B, T, D]`; with decode, (S, z) carried in 'cache'."""
  config: mixers.MixerConfig

  @nn.compact
  def __call__(self, x_BxTxD, context: mixers.Context):
    cfg = self.config
    dense = functools.partial(nn.DenseGeneral, features=(cfg.num_heads, cfg.head_dim), use_bias=cfg.use_bias,
                              dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    fq_BxTxHxK = elu_feature_map(dense(name='query')(x_BxTxD).astype(jnp.float32))
    fk_BxTxHxK = elu_feature_map(dense(name='key')(x_BxTxD).astype(jnp.float32))
    v_BxTxHxK = dense(name='value')(x_BxTxD).astype(jnp.float32)
    batch, heads, k = x_BxTxD.shape[0], cfg.num_heads, cfg.head_dim
    cached_s = mixers.cache_variable(self, 'state', context.decode, (batch, heads, k, k))
    cached_z = mixers.cache_variable(self, 'normalizer', context.decode, (batch, heads, k))
    args = (fq_BxTxHxK, fk_BxTxHxK, v_BxTxHxK, context.starts_BxT, context.real_BxT)
    if context.decode:
      y_BxTxHxK, (cached_s.value, cached_z.value) = recurrent_linear_attention(
          *args, (cached_s.value, cached_z.value))
    else:
      zeros = (jnp.zeros((batch, heads, k, k), jnp.float32), jnp.zeros((batch, heads, k), jnp.float32))
      y_BxTxHxK, _ = chunked_linear_attention(*args, zeros)
    return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias, dtype=cfg.compute_dtype,
                           param_dtype=jnp.float32, name='out')(y_BxTxHxK.astype(cfg.compute_dtype))


class Block(mixers.ResidualBlock):
  """x + LinearAttention(norm(x)), then x + MLP(norm(x)), each branch with dropout."""
  mixer: Any = LinearAttention
  mixer_name: str = 'attention'


# ---------------------------------------------------------------------------------------------------- model facts

def state_size(model_config) -> tuple[int, str]:
  """(floats, 'per sequence'): S `[K, K]` and z `[K]` per head and layer, K = d_model / num_heads."""
  k = model_config.d_model // model_config.num_heads
  return model_config.num_layers * model_config.num_heads * k * (k + 1), 'per sequence'


def train_flops_per_token(model_config, *, vocab_size: int, seq_len: int) -> float:
  """6·L·(4d² + the MLP's matrices) + 12·L·d·K (the state's update φk·vᵀ and read-out φqᵀ·S, 2·d·K each
  forward; K = d / heads) + the head."""
  d, k = model_config.d_model, model_config.d_model // model_config.num_heads
  per_layer = 6 * 4 * d * d + mixers.mlp_flops_per_token(model_config) + 12 * d * k
  return float(model_config.num_layers * per_layer
               + mixers.head_flops_per_token(model_config, vocab_size=vocab_size, seq_len=seq_len))


def from_config(model_config, *, vocab_size: int, max_len: int) -> mixers.MixerModel:
  """`config.model` (name 'linear_attention') → num_layers linear-attention blocks for `model_config.task`."""
  config = mixers.config_from(model_config, vocab_size=vocab_size, max_len=max_len)
  return mixers.MixerModel(config, task=model_config.task, block_types=(Block,) * config.num_layers)
