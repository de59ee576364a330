"""Transformer encoder (BERT-style classifier, masked LM) and causal decoder (LM) as Flax linen modules.

ids `[B, T]` (pad id 0) → embeddings (+ learned or sinusoidal positions, + token-type embeddings) → num_layers ×
(self-attention + GELU MLP, pre-LN or post-LN) → a head of `layers` under a top-level name containing 'head'.
Attention is `lm_jax.attention` (or cuDNN's fused kernel); the additive bias b is none, a learned T5
relative-position bias per head, or ALiBi; with smeared_keys each key mixes in the previous token's key (Olsson et
al., 2022: induction and recall heads form in one layer, not after a previous-token head in another). Params are
float32; `dtype` sets the compute dtype; logits are float32.

With post-LN, token types, the pooler, LayerNorm epsilon 1e-12 and learned positions up to max_position_embeddings
it computes what Hugging Face's BERT computes (lm_jax.interop.hf_bert imports its weights). Keys attend only to non-pad
tokens; a pad query gets a zero attention output (BERT's differs there, but no real position ever reads it).
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm_jax import attention
from lm_jax.models import layers

TASKS = ('classification', 'mlm', 'lm')
ATTENTION_BIASES = ('none', 'relative', 'alibi')
POSITIONS = ('learned', 'sinusoidal', 'none')
ATTENTIONS = ('dense', 'chunked', 'cudnn')
# model.hidden_act, by Hugging Face's names: the MLP's activation and the MLM transform's.
ACTIVATIONS = {
    'gelu': functools.partial(nn.gelu, approximate=False),    # exact: x·Φ(x)
    'gelu_new': functools.partial(nn.gelu, approximate=True),  # tanh approximation (GPT-2; HF gelu_pytorch_tanh)
}
# T5's defaults: 32 buckets, exact up to 8 (bidirectional: per direction), logarithmic up to distance 128.
RELATIVE_BUCKETS = 32
RELATIVE_MAX_DISTANCE = 128

_embed_init = nn.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig(layers.ModelConfig):
  """Everything a transformer module needs; built from `config.model` by `from_config`."""
  max_len: int
  num_heads: int = 2
  mlp_dim: int = 64
  attention_bias: str = 'none'
  positions: str = 'learned'
  pre_norm: bool = True
  attention: str = 'dense'
  type_vocab_size: int = 0
  pooler: bool = False
  layer_norm_eps: float = 1e-6
  hidden_act: str = 'gelu'
  max_position_embeddings: int = 0
  smeared_keys: bool = False

  def __post_init__(self):
    super().__post_init__()
    layers.check_choice('model.attention_bias', self.attention_bias, ATTENTION_BIASES)
    layers.check_choice('model.positions', self.positions, POSITIONS)
    layers.check_choice('model.attention', self.attention, ATTENTIONS)
    layers.check_choice('model.hidden_act', self.hidden_act, tuple(ACTIVATIONS))
    if min(self.type_vocab_size, self.max_position_embeddings) < 0:
      raise ValueError(f'model.type_vocab_size={self.type_vocab_size} and model.max_position_embeddings='
                       f'{self.max_position_embeddings} must be >= 0.')
    if self.layer_norm_eps <= 0:
      raise ValueError(f'model.layer_norm_eps={self.layer_norm_eps} must be > 0.')
    if self.positions == 'learned' and self.position_table_size < self.max_len:
      raise ValueError(f'model.max_position_embeddings={self.max_position_embeddings} is less than '
                       f'data.max_len={self.max_len}: the learned position table must cover every position.')
    if self.pooler and self.pooling != 'cls':
      raise ValueError(f"model.pooler=True reads the [CLS] position: it needs model.pooling='cls', got "
                       f'{self.pooling!r}.')
    if self.d_model % self.num_heads:
      raise ValueError(f'model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}.')
    if self.positions == 'sinusoidal' and self.d_model % 2:
      raise ValueError(f'model.positions=sinusoidal needs an even model.d_model, got {self.d_model}.')
    if self.attention == 'cudnn':
      if jax.default_backend() != 'gpu':
        raise ValueError(f"model.attention='cudnn' runs only on GPU; this backend is {jax.default_backend()!r}. "
                         "Use model.attention='dense'.")
      if self.dtype != 'bfloat16':
        raise ValueError(f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN has no float32 kernel), "
                         f'got {self.dtype!r}.')


  @property
  def position_table_size(self) -> int:
    return self.max_position_embeddings or self.max_len

  def layer_norm(self, **kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.compute_dtype, param_dtype=jnp.float32, **kwargs)


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


def _attend(q, k, v, *, bias, mask, implementation: str):
  if implementation == 'dense':
    return attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
  if implementation == 'chunked':
    return attention.chunked_dot_product_attention(q, k, v, bias=bias, mask=mask)
  # cuDNN folds the mask into one bias in the compute dtype.
  bias = None if bias is None else bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation='cudnn')


class SelfAttention(nn.Module):
  """Multi-head self-attention; with `decode_index` it writes k, v into a max_len cache and attends to it."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD, *, bias, mask, key_positions, decode_index=None):
    cfg = self.config
    dense = functools.partial(nn.DenseGeneral, features=(cfg.num_heads, cfg.d_model // cfg.num_heads),
                              dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    q_BxTxHxK = dense(name='query')(x_BxTxD)
    k_BxTxHxK = dense(name='key')(x_BxTxD)
    v_BxTxHxK = dense(name='value')(x_BxTxD)
    if decode_index is not None:
      cache_shape = (x_BxTxD.shape[0], cfg.max_len) + k_BxTxHxK.shape[2:]
      cached_k = self.variable('cache', 'cached_key', jnp.zeros, cache_shape, k_BxTxHxK.dtype)
      cached_v = self.variable('cache', 'cached_value', jnp.zeros, cache_shape, v_BxTxHxK.dtype)
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxHxK, (0, decode_index, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxHxK, (0, decode_index, 0, 0))
      k_BxTxHxK, v_BxTxHxK = cached_k.value, cached_v.value
    if cfg.smeared_keys:   # positions restart at 0 where a document (or a decoded row) starts
      mix_H = self.param('smear', nn.initializers.zeros, (cfg.num_heads,), jnp.float32)
      k_BxTxHxK = attention.smear_keys(k_BxTxHxK, mix_H, key_positions == 0)
    if self.is_mutable_collection('intermediates'):   # attention maps (lm_jax.tools.attention_maps): only when asked
      self.sow('intermediates', 'attention_weights',
               attention.attention_weights(q_BxTxHxK, k_BxTxHxK, bias=bias, mask=mask))
    out_BxTxHxK = _attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, bias=bias, mask=mask, implementation=cfg.attention)
    return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                           name='out')(out_BxTxHxK)


class Block(nn.Module):
  """Attention and MLP (hidden_act), each in a residual branch with dropout; LayerNorm before (pre-LN) or after."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD, *, bias, mask, key_positions, decode_index, train: bool):
    cfg = self.config
    dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    norm = cfg.layer_norm
    dropout = functools.partial(layers.Dropout(cfg.dropout), train=train)

    def attend(y):
      return SelfAttention(cfg, name='attention')(y, bias=bias, mask=mask, key_positions=key_positions,
                                                  decode_index=decode_index)

    def mlp(y):
      y = ACTIVATIONS[cfg.hidden_act](dense(cfg.mlp_dim, name='mlp_in')(y))
      return dense(cfg.d_model, name='mlp_out')(y)

    if cfg.pre_norm:
      x_BxTxD = x_BxTxD + dropout(attend(norm(name='attention_norm')(x_BxTxD)))
      return x_BxTxD + dropout(mlp(norm(name='mlp_norm')(x_BxTxD)))
    x_BxTxD = norm(name='attention_norm')(x_BxTxD + dropout(attend(x_BxTxD)))
    return norm(name='mlp_norm')(x_BxTxD + dropout(mlp(x_BxTxD)))


class Transformer(nn.Module):
  """The trunk: ids `[B, T]` → hidden `[B, T, D]` in the compute dtype. `causal` makes it a decoder.

  token_type_ids `[B, T]` (BERT's segments A/B) default to type 0. With `decode`, each row's prompt may be
  left-padded: the first call (the prompt) records each row's pad count, and positions start after it.
  """
  config: TransformerConfig
  causal: bool

  def setup(self):
    cfg = self.config
    embed = functools.partial(nn.Embed, features=cfg.d_model, embedding_init=_embed_init,
                              dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    self.token_embed = embed(cfg.vocab_size)
    if cfg.type_vocab_size:
      self.type_embed = embed(cfg.type_vocab_size)
    if cfg.positions == 'learned':
      self.position_embed = embed(cfg.position_table_size)
    if cfg.attention_bias == 'relative':
      self.relative_bias = self.param('relative_bias', _embed_init, (RELATIVE_BUCKETS, cfg.num_heads),
                                      jnp.float32)
    self.layers = [Block(cfg) for _ in range(cfg.num_layers)]
    # Pre-LN normalizes the last block's output; post-LN (BERT) normalizes the embeddings instead.
    self.norm = cfg.layer_norm()
    self.dropout = layers.Dropout(cfg.dropout)

  @nn.compact
  def __call__(self, inputs_BxT, *, train: bool = False, segment_ids=None, positions=None, decode: bool = False,
               token_type_ids=None):
    cfg = self.config
    if token_type_ids is not None and not cfg.type_vocab_size:
      raise ValueError('token_type_ids were given, but model.type_vocab_size=0: the model has no token types.')
    if cfg.positions == 'learned' and inputs_BxT.shape[1] > cfg.max_len:
      raise ValueError(f'sequence length {inputs_BxT.shape[1]} exceeds max_len={cfg.max_len} (learned positions).')
    if decode:
      q_pos_BxT, k_pos_BxS, mask, decode_index = self._decode_positions(inputs_BxT, segment_ids, positions)
    else:
      q_pos_BxT = k_pos_BxS = self._positions(inputs_BxT, positions)
      mask = attention.combine_masks(
          attention.causal_mask(inputs_BxT.shape[1]) if self.causal else attention.padding_mask(inputs_BxT),
          None if segment_ids is None else attention.segment_mask(segment_ids))
      decode_index = None

    x_BxTxD = self.token_embed(inputs_BxT)
    if cfg.type_vocab_size:
      x_BxTxD = x_BxTxD + self.type_embed(jnp.zeros_like(inputs_BxT) if token_type_ids is None else token_type_ids)
    if cfg.positions == 'learned':
      x_BxTxD = x_BxTxD + self.position_embed(q_pos_BxT)
    elif cfg.positions == 'sinusoidal':
      x_BxTxD = x_BxTxD + sinusoidal_positions(q_pos_BxT, cfg.d_model).astype(cfg.compute_dtype)
    x_BxTxD = layers.perturbable(self, x_BxTxD)
    if not cfg.pre_norm:
      x_BxTxD = self.norm(x_BxTxD)
    x_BxTxD = self.dropout(x_BxTxD, train=train)

    bias = self._attention_bias(q_pos_BxT, k_pos_BxS)
    for layer in self.layers:
      x_BxTxD = layer(x_BxTxD, bias=bias, mask=mask, key_positions=k_pos_BxS, decode_index=decode_index,
                      train=train)
    return self.norm(x_BxTxD) if cfg.pre_norm else x_BxTxD

  def _positions(self, inputs_BxT, positions_BxT):
    """The given positions, else 0..T-1 as `[1, T]` (one row, so the bias is built once for the whole batch)."""
    if positions_BxT is not None:
      return positions_BxT
    return jnp.arange(inputs_BxT.shape[1], dtype=jnp.int32)[None]

  def _decode_positions(self, inputs_BxT, segment_ids, positions):
    """Queries sit in cache slots index, index+1, …; keys are the max_len slots from the row's first prompt token
    up to each query. A row's positions count from its first prompt token (slots before it hold left padding)."""
    if not self.causal:
      raise ValueError('decode=True needs the causal decoder (model.task=lm).')
    layers.check_decode_inputs(True, segment_ids, positions)
    length = inputs_BxT.shape[1]
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    # Created by the first call, the prompt: its leading pad ids per row (argmax finds the first real token).
    start = self.variable('cache', 'start', lambda: jnp.argmax(inputs_BxT != layers.PAD_ID, axis=1).astype(jnp.int32))
    decode_index = index.value
    index.value = decode_index + length
    q_slot_1xT = (decode_index + jnp.arange(length, dtype=jnp.int32))[None]
    k_slot_1xS = jnp.arange(self.config.max_len, dtype=jnp.int32)[None]
    start_Bx1 = start.value[:, None]
    mask_Bx1xTxS = ((k_slot_1xS[:, None, :] <= q_slot_1xT[:, :, None])
                    & (k_slot_1xS[:, None, :] >= start_Bx1[:, :, None]))[:, None]
    # Padding slots get position 0; they are masked as keys, and their queries' outputs are never read.
    q_pos_BxT = jnp.maximum(q_slot_1xT - start_Bx1, 0)
    k_pos_BxS = jnp.maximum(k_slot_1xS - start_Bx1, 0)
    return q_pos_BxT, k_pos_BxS, mask_Bx1xTxS, decode_index

  def _attention_bias(self, q_pos_BxT, k_pos_BxS):
    """The additive b, float32 `[B or 1, H, T, S]`, from key − query positions (packed documents restart)."""
    cfg = self.config
    if cfg.attention_bias == 'none':
      return None
    relative_BxTxS = k_pos_BxS[:, None, :] - q_pos_BxT[:, :, None]
    if cfg.attention_bias == 'relative':
      buckets_BxTxS = relative_position_bucket(relative_BxTxS, bidirectional=not self.causal)
      return jnp.moveaxis(self.relative_bias[buckets_BxTxS], -1, 1)
    slopes_H = jnp.asarray(alibi_slopes(cfg.num_heads))
    return -slopes_H[None, :, None, None] * jnp.abs(relative_BxTxS)[:, None].astype(jnp.float32)


class TransformerModel(nn.Module):
  """task 'classification' → {'encoder', 'classifier_head'}; 'mlm' → {'encoder', 'mlm_head'};
  'lm' → {'decoder', 'lm_head'}. ids int32 `[B, T]` → float32 `[B, num_classes]` or `[B, T, vocab_size]`.
  """
  config: TransformerConfig
  task: str

  def __post_init__(self):
    layers.check_choice('model.task', self.task, TASKS)
    if self.task == 'lm' and self.config.pooler:
      raise ValueError('model.pooler=True is for encoders (task classification or mlm), not the causal lm decoder.')
    super().__post_init__()

  @property
  def max_decode_length(self) -> int:
    """Longest prompt + generation `generate` may ask for (the key/value cache holds max_len positions)."""
    return self.config.max_len

  @nn.compact
  def __call__(self, inputs_BxT, *, train: bool = False, segment_ids=None, positions=None, decode: bool = False,
               token_type_ids=None, head_inputs: bool = False):
    """float32 logits; with `head_inputs` (tasks lm, mlm), `layers.HeadInputs` in their place (for the fused loss)."""
    cfg = self.config
    is_lm = self.task == 'lm'
    layers.check_head_inputs(head_inputs, self.task)
    trunk = Transformer(cfg, causal=is_lm, name='decoder' if is_lm else 'encoder')
    h_BxTxD = trunk(inputs_BxT, train=train, segment_ids=segment_ids, positions=positions, decode=decode,
                    token_type_ids=token_type_ids)
    # BERT's pooler: dense + tanh over [CLS].
    pooler = nn.Dense(cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name='pooler')
    if self.task == 'classification':
      # The data pipeline puts [CLS] at position 0.
      pooled_BxD = h_BxTxD[:, 0] if cfg.pooling == 'cls' else layers.mean_pool(h_BxTxD, inputs_BxT)
      if cfg.pooler:
        pooled_BxD = jnp.tanh(pooler(pooled_BxD))
      return layers.ClassifierHead(cfg.num_classes, cfg.dropout, cfg.compute_dtype, name='classifier_head')(
          pooled_BxD, train=train)
    if cfg.pooler and self.is_initializing():
      pooler(h_BxTxD[:, 0])   # an MLM model keeps the params, unread: init_from hands them to a classifier
    return layers.OutputHead(cfg.vocab_size, cfg.tie_embeddings, transform=self.task == 'mlm',
                             dtype=cfg.compute_dtype, activation=ACTIVATIONS[cfg.hidden_act],
                             norm_eps=cfg.layer_norm_eps, name=f'{self.task}_head')(h_BxTxD, trunk.token_embed,
                                                                                    head_inputs=head_inputs)


# ---------------------------------------------------------------------------------------------------- model facts
# What the registry, sweeps and FLOP counting ask of a model family (lm_jax.models.FAMILIES).

def state_size(model_config) -> tuple[int, str]:
  """(floats, 'per token'): the KV cache, keys and values of d_model per layer, for every token kept."""
  return 2 * model_config.num_layers * model_config.d_model, 'per token'


def train_flops_per_token(model_config, *, vocab_size: int, seq_len: int) -> float:
  """6·L·(4d² + 2d·d_ff) + 12·L·d·T (halved for causal LM) + head: lm/mlm 6·d·V per token, classification
  6·(d² + d·C) per sequence (pooler + classifier, as in BERT)."""
  layers_, d, task = model_config.num_layers, model_config.d_model, model_config.task
  dense = 6 * layers_ * (4 * d * d + 2 * d * model_config.mlp_dim)
  # QKᵀ and AV: 2·2·T·d per token and layer forward, ×3 with the backward; a causal mask skips half of them.
  attention_flops = 12 * layers_ * d * seq_len / (2 if task == 'lm' else 1)
  if task == 'classification':
    head = 6 * (d * d + d * model_config.num_classes) / seq_len
  else:
    head = 6 * d * vocab_size
  return float(dense + attention_flops + head)


def from_config(model_config, *, vocab_size: int, max_len: int) -> TransformerModel:
  """`config.model` (name 'transformer') → the module for `model_config.task`; takes the keys that are
  TransformerConfig fields (the RNN-only ones, name and task are not)."""
  config = layers.config_from(TransformerConfig, model_config, vocab_size=vocab_size, max_len=max_len)
  return TransformerModel(config, task=model_config.task)
