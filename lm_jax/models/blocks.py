"""The attention model's pieces that the transformer and the hybrids (griffin) share: the config of an attention
layer, its masks, self-attention with a key/value cache, the MLP and the norm.

Self-attention computes `lm_jax.attention`'s softmax(q·kᵀ/√d + b)·v, with today's options: RoPE on q and k, G
key/value heads shared by groups of query heads (GQA; G = 1 is multi-query), a causal sliding window. The MLP is
the transformer's W₂·act(W₁x) (act = hidden_act) or SwiGLU, W₂·(silu(W_g x) ⊙ W₁x) (Shazeer, 2020, eq. 6); the norm
is LayerNorm or RMSNorm, x / √(mean(x²) + ε) · g (Zhang & Sennrich, 2019, eq. 4).
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm_jax import attention
from lm_jax.models import layers
from lm_jax.models.positions import POSITIONS

ATTENTIONS = ('dense', 'chunked', 'cudnn')
# model.hidden_act, by Hugging Face's names: the MLP's activation and the MLM transform's.
ACTIVATIONS = {
    'gelu': functools.partial(nn.gelu, approximate=False),    # exact: x·Φ(x)
    'gelu_new': functools.partial(nn.gelu, approximate=True),  # tanh approximation (GPT-2; HF gelu_pytorch_tanh)
}
MLPS = ('gelu', 'swiglu')          # gelu: W₂·act(W₁x) with act = model.hidden_act; swiglu: W₂·(silu(W_g x) ⊙ W₁x)
NORMS = ('layernorm', 'rmsnorm')


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionConfig(layers.ModelConfig):
  """What an attention layer, its MLP and its norms read (the transformer's config and griffin's extend it)."""
  max_len: int
  num_heads: int = 2
  num_kv_heads: int = 0            # 0 = num_heads
  mlp_dim: int = 64
  mlp: str = 'gelu'
  norm: str = 'layernorm'
  hidden_act: str = 'gelu'
  layer_norm_eps: float = 1e-6
  use_bias: bool = True
  positions: str = 'learned'
  rope_theta: float = 10000.0
  attention_window: int = 0        # 0 = every earlier key
  attention: str = 'dense'
  smeared_keys: bool = False

  def __post_init__(self):
    super().__post_init__()
    layers.check_choice('model.positions', self.positions, POSITIONS)
    layers.check_choice('model.attention', self.attention, ATTENTIONS)
    layers.check_choice('model.hidden_act', self.hidden_act, tuple(ACTIVATIONS))
    layers.check_choice('model.mlp', self.mlp, MLPS)
    layers.check_choice('model.norm', self.norm, NORMS)
    if self.layer_norm_eps <= 0:
      raise ValueError(f'model.layer_norm_eps={self.layer_norm_eps} must be > 0.')
    if self.num_kv_heads < 0 or self.attention_window < 0:
      raise ValueError(f'model.num_kv_heads={self.num_kv_heads} and model.attention_window='
                       f'{self.attention_window} must be >= 0 (0 = num_heads; 0 = no window).')
    if self.d_model % self.num_heads:
      raise ValueError(f'model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}.')
    if self.num_heads % self.kv_heads:
      raise ValueError(f'model.num_heads={self.num_heads} must be divisible by model.num_kv_heads='
                       f'{self.num_kv_heads}: each key/value head serves a whole group of query heads.')
    if self.positions == 'rope' and self.head_dim % 2:
      raise ValueError(f"model.positions='rope' rotates pairs of features: d_model / num_heads = {self.head_dim} "
                       'must be even.')
    if self.rope_theta <= 0:
      raise ValueError(f'model.rope_theta={self.rope_theta} must be > 0.')
    if self.attention == 'cudnn':
      if jax.default_backend() != 'gpu':
        raise ValueError(f"model.attention='cudnn' runs only on GPU; this backend is {jax.default_backend()!r}. "
                         "Use model.attention='dense'.")
      if self.dtype != 'bfloat16':
        raise ValueError(f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN has no float32 kernel), "
                         f'got {self.dtype!r}.')

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  def layer_norm(self, **kwargs) -> nn.Module:
    """model.norm: LayerNorm (with a bias only under use_bias) or RMSNorm, epsilon layer_norm_eps."""
    if self.norm == 'rmsnorm':
      return nn.RMSNorm(epsilon=self.layer_norm_eps, dtype=self.compute_dtype, param_dtype=jnp.float32, **kwargs)
    return nn.LayerNorm(epsilon=self.layer_norm_eps, use_bias=self.use_bias, dtype=self.compute_dtype,
                        param_dtype=jnp.float32, **kwargs)


def mlp(cfg: AttentionConfig, x_BxTxD):
  """The MLP's params ('mlp_in', 'mlp_out', and 'mlp_gate' for swiglu) in the calling module; `[B, T, D]`."""
  dense = functools.partial(nn.Dense, use_bias=cfg.use_bias, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
  hidden_BxTxF = dense(cfg.mlp_dim, name='mlp_in')(x_BxTxD)
  if cfg.mlp == 'swiglu':
    hidden_BxTxF = nn.silu(dense(cfg.mlp_dim, name='mlp_gate')(x_BxTxD)) * hidden_BxTxF
  else:
    hidden_BxTxF = ACTIVATIONS[cfg.hidden_act](hidden_BxTxF)
  return dense(cfg.d_model, name='mlp_out')(hidden_BxTxF)


def train_mask(inputs_BxT, *, causal: bool, segment_ids=None, window: int = 0):
  """The mask of a whole-sequence call: causal (and within `window`) or over non-pad keys, within documents."""
  length = inputs_BxT.shape[1]
  if causal:
    order = (attention.sliding_window_mask(jnp.arange(length)[None], window=window) if window
             else attention.causal_mask(length))
  else:
    order = attention.padding_mask(inputs_BxT)
  return attention.combine_masks(order, None if segment_ids is None else attention.segment_mask(segment_ids))


def decode_positions(module: nn.Module, inputs_BxT, *, max_len: int, window: int = 0):
  """(query positions `[B, T]`, key positions `[B, S]`, mask `[B, 1, T, S]`, first cache slot) of a decode call.

  Queries sit in cache slots index, index+1, …; keys are the max_len slots from the row's first prompt token up to
  each query (the `window` latest, if any). A row's positions count from its first prompt token (slots before it
  hold left padding). Keeps 'index' and 'start' in the module's 'cache' collection.
  """
  length = inputs_BxT.shape[1]
  index = module.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
  # Created by the first call, the prompt: its leading pad ids per row (argmax finds the first real token).
  start = module.variable('cache', 'start',
                          lambda: jnp.argmax(inputs_BxT != layers.PAD_ID, axis=1).astype(jnp.int32))
  decode_index = index.value
  index.value = decode_index + length
  q_slot_1xT = (decode_index + jnp.arange(length, dtype=jnp.int32))[None]
  k_slot_1xS = jnp.arange(max_len, dtype=jnp.int32)[None]
  start_Bx1 = start.value[:, None]
  mask_Bx1xTxS = ((k_slot_1xS[:, None, :] <= q_slot_1xT[:, :, None])
                  & (k_slot_1xS[:, None, :] >= start_Bx1[:, :, None]))[:, None]
  if window:
    mask_Bx1xTxS = mask_Bx1xTxS & attention.sliding_window_mask(q_slot_1xT, k_slot_1xS, window=window)
  # Padding slots get position 0; they are masked as keys, and their queries' outputs are never read.
  q_pos_BxT = jnp.maximum(q_slot_1xT - start_Bx1, 0)
  k_pos_BxS = jnp.maximum(k_slot_1xS - start_Bx1, 0)
  return q_pos_BxT, k_pos_BxS, mask_Bx1xTxS, decode_index


def _attend(q, k, v, *, bias, mask, implementation: str):
  if implementation == 'dense':
    return attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
  if implementation == 'chunked':
    return attention.chunked_dot_product_attention(q, k, v, bias=bias, mask=mask)
  # cuDNN folds the mask into one bias in the compute dtype.
  bias = None if bias is None else bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation='cudnn')


class SelfAttention(nn.Module):
  """Multi-head self-attention; with `decode_index` it writes k, v into a max_len cache and attends to it.

  With RoPE the keys are rotated before they are cached; with GQA the cache holds only the kv_heads heads.
  """
  config: AttentionConfig

  @nn.compact
  def __call__(self, x_BxTxD, *, bias, mask, query_positions, key_positions, decode_index=None):
    cfg = self.config
    dense = functools.partial(nn.DenseGeneral, use_bias=cfg.use_bias, dtype=cfg.compute_dtype,
                              param_dtype=jnp.float32)
    q_BxTxHxK = dense((cfg.num_heads, cfg.head_dim), name='query')(x_BxTxD)
    k_BxTxGxK = dense((cfg.kv_heads, cfg.head_dim), name='key')(x_BxTxD)
    v_BxTxGxK = dense((cfg.kv_heads, cfg.head_dim), name='value')(x_BxTxD)
    if cfg.positions == 'rope':   # the new keys sit at the queries' positions
      q_BxTxHxK = attention.rotary_embedding(q_BxTxHxK, query_positions, theta=cfg.rope_theta)
      k_BxTxGxK = attention.rotary_embedding(k_BxTxGxK, query_positions, theta=cfg.rope_theta)
    if decode_index is not None:
      cache_shape = (x_BxTxD.shape[0], cfg.max_len) + k_BxTxGxK.shape[2:]
      cached_k = self.variable('cache', 'cached_key', jnp.zeros, cache_shape, k_BxTxGxK.dtype)
      cached_v = self.variable('cache', 'cached_value', jnp.zeros, cache_shape, v_BxTxGxK.dtype)
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxGxK, (0, decode_index, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxGxK, (0, decode_index, 0, 0))
      k_BxTxGxK, v_BxTxGxK = cached_k.value, cached_v.value
    k_BxTxHxK = attention.repeat_kv_heads(k_BxTxGxK, cfg.num_heads)
    v_BxTxHxK = attention.repeat_kv_heads(v_BxTxGxK, cfg.num_heads)
    if cfg.smeared_keys:   # positions restart at 0 where a document (or a decoded row) starts
      mix_H = self.param('smear', nn.initializers.zeros, (cfg.num_heads,), jnp.float32)
      k_BxTxHxK = attention.smear_keys(k_BxTxHxK, mix_H, key_positions == 0)
    if self.is_mutable_collection('intermediates'):   # attention maps (lm_jax.tools.attention_maps): only when asked
      self.sow('intermediates', 'attention_weights',
               attention.attention_weights(q_BxTxHxK, k_BxTxHxK, bias=bias, mask=mask))
    out_BxTxHxK = _attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, bias=bias, mask=mask, implementation=cfg.attention)
    return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias, dtype=cfg.compute_dtype,
                           param_dtype=jnp.float32, name='out')(out_BxTxHxK)
