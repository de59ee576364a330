"""Transformer encoder (BERT-style classifier, masked LM) and causal decoder (LM) as Flax linen modules.

ids `[B, T]` (pad id 0) → embeddings (+ learned or sinusoidal positions, + token-type embeddings) → num_layers ×
(self-attention + MLP, pre-norm or post-norm) → a head of `layers` under a top-level name containing 'head'.
The layers are `blocks`: RoPE, grouped-query attention, a causal sliding window, a GELU or SwiGLU MLP, LayerNorm or
RMSNorm, biases or none (a Llama-style decoder: experiments/llama.py).
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

import flax.linen as nn
import jax.numpy as jnp

from lm_jax.models import blocks, layers
from lm_jax.models.blocks import ACTIVATIONS, ATTENTIONS, SelfAttention  # noqa: F401  (this module's API)
from lm_jax.models.positions import (POSITIONS, RELATIVE_BUCKETS, alibi_slopes,  # noqa: F401
                                     relative_position_bucket, sinusoidal_positions)

TASKS = ('classification', 'mlm', 'lm')
ATTENTION_BIASES = ('none', 'relative', 'alibi')

_embed_init = nn.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig(blocks.AttentionConfig):
  """Everything a transformer module needs; built from `config.model` by `from_config`."""
  attention_bias: str = 'none'
  pre_norm: bool = True
  type_vocab_size: int = 0
  pooler: bool = False
  max_position_embeddings: int = 0

  def __post_init__(self):
    super().__post_init__()
    layers.check_choice('model.attention_bias', self.attention_bias, ATTENTION_BIASES)
    if min(self.type_vocab_size, self.max_position_embeddings) < 0:
      raise ValueError(f'model.type_vocab_size={self.type_vocab_size} and model.max_position_embeddings='
                       f'{self.max_position_embeddings} must be >= 0.')
    if self.positions == 'learned' and self.position_table_size < self.max_len:
      raise ValueError(f'model.max_position_embeddings={self.max_position_embeddings} is less than '
                       f'data.max_len={self.max_len}: the learned position table must cover every position.')
    if self.pooler and self.pooling != 'cls':
      raise ValueError(f"model.pooler=True reads the [CLS] position: it needs model.pooling='cls', got "
                       f'{self.pooling!r}.')
    if self.positions == 'sinusoidal' and self.d_model % 2:
      raise ValueError(f'model.positions=sinusoidal needs an even model.d_model, got {self.d_model}.')

  @property
  def position_table_size(self) -> int:
    return self.max_position_embeddings or self.max_len


class Block(nn.Module):
  """Attention and MLP (model.mlp), each in a residual branch with dropout; the norm before (pre-LN) or after."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD, train: bool, *, bias, mask, query_positions, key_positions, decode_index):
    cfg = self.config
    norm = cfg.layer_norm
    dropout = functools.partial(layers.Dropout(cfg.dropout), train=train)

    def attend(y):
      return SelfAttention(cfg, name='attention')(y, bias=bias, mask=mask, query_positions=query_positions,
                                                  key_positions=key_positions, decode_index=decode_index)

    mlp = functools.partial(blocks.mlp, cfg)
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
    if not cfg.scan_layers:   # else one scanned block, built in __call__
      block = layers.remat(Block, cfg.remat, static_argnums=(2,))   # `train` is static
      self.layers = [block(cfg) for _ in range(cfg.num_layers)]
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
      if not self.causal:
        raise ValueError('decode=True needs the causal decoder (model.task=lm).')
      layers.check_decode_inputs(True, segment_ids, positions)
      q_pos_BxT, k_pos_BxS, mask, decode_index = blocks.decode_positions(self, inputs_BxT, max_len=cfg.max_len,
                                                                         window=cfg.attention_window)
    else:
      q_pos_BxT = k_pos_BxS = self._positions(inputs_BxT, positions)
      mask = blocks.train_mask(inputs_BxT, causal=self.causal, segment_ids=segment_ids, window=cfg.attention_window)
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
    call = lambda layer, x, *arrays: layer(x, train, **dict(zip(('bias', 'mask', 'query_positions', 'key_positions',
                                                                 'decode_index'), arrays)))
    arrays = (bias, mask, q_pos_BxT, k_pos_BxS, decode_index)
    if cfg.scan_layers:
      block = layers.remat(Block, cfg.remat, static_argnums=(2,))(cfg, name='layers')
      x_BxTxD = layers.scan_blocks(block, x_BxTxD, *arrays, length=cfg.num_layers, call=call)
    else:
      for layer in self.layers:
        x_BxTxD = call(layer, x_BxTxD, *arrays)
    return self.norm(x_BxTxD) if cfg.pre_norm else x_BxTxD

  def _positions(self, inputs_BxT, positions_BxT):
    """The given positions, else 0..T-1 as `[1, T]` (one row, so the bias is built once for the whole batch)."""
    if positions_BxT is not None:
      return positions_BxT
    return jnp.arange(inputs_BxT.shape[1], dtype=jnp.int32)[None]

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
    if self.task != 'lm' and self.config.attention_window:
      raise ValueError(f'model.attention_window={self.config.attention_window} is a causal sliding window: it needs '
                       f'model.task=lm, not {self.task!r}.')
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

def kv_width(model_config) -> int:
  """Features of the keys (and of the values) per token and layer: kv_heads · d_model / num_heads."""
  heads = model_config.get('num_heads', 1)
  return model_config.d_model * (model_config.get('num_kv_heads', 0) or heads) // heads


def state_size(model_config) -> tuple[int, str]:
  """The KV cache, keys and values of kv_heads · head_dim features per layer: (floats, 'per token'), or with a
  sliding window of w keys, (w · that, 'per sequence')."""
  per_token = 2 * model_config.num_layers * kv_width(model_config)
  window = model_config.get('attention_window', 0)
  return (per_token * window, 'per sequence') if window else (per_token, 'per token')


def attended_keys(seq_len: int, *, causal: bool, window: int = 0) -> float:
  """Keys per query, averaged over a sequence: T (encoder), T/2 (causal, by the usual convention), and with a
  window w < T, w − w²/(2T) (the first w queries see fewer)."""
  if not causal:
    return float(seq_len)
  if not window or window >= seq_len:
    return seq_len / 2
  return window - window * window / (2 * seq_len)


def train_flops_per_token(model_config, *, vocab_size: int, seq_len: int) -> float:
  """6·L·(2d² + 2d·d_kv + m·d·d_ff) (m = 2, SwiGLU 3) + 12·L·d·(attended keys) + head: lm/mlm 6·d·V per token,
  classification 6·(d² + d·C) per sequence (pooler + classifier, as in BERT)."""
  layers_, d, task = model_config.num_layers, model_config.d_model, model_config.task
  mlp_matrices = 3 if model_config.get('mlp', 'gelu') == 'swiglu' else 2
  dense = 6 * layers_ * (2 * d * d + 2 * d * kv_width(model_config) + mlp_matrices * d * model_config.mlp_dim)
  # QKᵀ and AV: 2·2·d per attended key, token and layer forward, ×3 with the backward.
  keys = attended_keys(seq_len, causal=task == 'lm', window=model_config.get('attention_window', 0))
  attention_flops = 12 * layers_ * d * keys
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
