"""Hawk and Griffin (De et al., 2024, "Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient
Language Models"): the Real-Gated Linear Recurrent Unit in a residual block, alone (model.name 'rg_lru', Hawk) or
two recurrent blocks to each local-attention block ('griffin').

The RG-LRU (§2.4, eqs. 1-4), per channel, with a = σ(Λ) a learned decay and c = 8:

    r_t = σ(W_a·x_t + b_a)      i_t = σ(W_x·x_t + b_x)      a_t = a^(c·r_t)     (1), (2), (3)
    h_t = a_t ⊙ h_{t−1} + √(1 − a_t²) ⊙ (i_t ⊙ x_t)                            (4)

log a_t = −c·r_t·softplus(−Λ) keeps it stable; W_a, W_x are block-diagonal (one block per head), and Λ starts with
a^c uniform in [0.9, 0.999] (§2.4). At a document start h_{t−1} is 0, as at the start of a row (recurrentgemma
also skips the √(1 − a_t²) there; here a packed document starts exactly as an unpacked row does). Training runs h
over all t at once (`mixers.linear_scan`); generation runs eq. 4 a token at a time (`rg_lru_step`).

The recurrent block (§2.4, Figure 2c): y = W_out·(gelu(W_y·x) ⊙ RG-LRU(conv(W_x'·x))), with a depthwise causal
convolution of conv_width taps; the residual block (§2.2) is x + block(RMSNorm(x)), then x + MLP(RMSNorm(x)).
Griffin's attention blocks are multi-query (model.num_kv_heads) local attention over attention_window keys
(0 = the paper's 1024) with RoPE, from `blocks.SelfAttention`. The width of the recurrence is d_model (the paper
uses 4/3 of it).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm_jax.models import blocks, mixers, transformer

TASKS = mixers.TASKS
C = 8.0                        # the fixed scale c of eq. 3
A_MIN, A_MAX = 0.9, 0.999      # a^c at init, uniform in this range
GRIFFIN_WINDOW = 1024          # griffin's local attention window when model.attention_window = 0 (the paper's)
PATTERN = 3                    # griffin: blocks 0, 1 recurrent, block 2 attention, and so on


def rg_lru_coefficients(x_BxTxE, r_BxTxE, i_BxTxE, log_a_E, starts_BxT, real_BxT):
  """(a_t, b_t) of h_t = a_t ⊙ h_{t−1} + b_t from eqs. 3-4, given the gates r, i ∈ (0, 1) and log a = log σ(Λ)."""
  log_a_BxTxE = C * r_BxTxE * log_a_E[None, None, :]
  a_BxTxE = jnp.exp(log_a_BxTxE)
  scale_BxTxE = jnp.sqrt(-jnp.expm1(2.0 * log_a_BxTxE))          # √(1 − a_t²)
  return mixers.gate_for_resets(a_BxTxE, scale_BxTxE * i_BxTxE * x_BxTxE, starts_BxT, real_BxT)


def rg_lru(x_BxTxE, r_BxTxE, i_BxTxE, log_a_E, h0_BxE, starts_BxT, real_BxT):
  """(h `[B, T, E]`, h_T) of eq. 4 for all t at once."""
  a_BxTxE, b_BxTxE = rg_lru_coefficients(x_BxTxE, r_BxTxE, i_BxTxE, log_a_E, starts_BxT, real_BxT)
  return mixers.linear_scan(a_BxTxE, b_BxTxE, h0_BxE)


def rg_lru_step(h_BxE, x_BxE, r_BxE, i_BxE, log_a_E, start_B, real_B):
  """One token of eq. 4: (h_t, h_t)."""
  log_a_BxE = C * r_BxE * log_a_E[None, :]
  scale_BxE = jnp.sqrt(-jnp.expm1(2.0 * log_a_BxE))
  h_new_BxE = jnp.where(start_B[:, None], 0.0, jnp.exp(log_a_BxE) * h_BxE) + scale_BxE * i_BxE * x_BxE
  h_BxE = jnp.where(real_B[:, None], h_new_BxE, h_BxE)
  return h_BxE, h_BxE


def recurrent_rg_lru(x_BxTxE, r_BxTxE, i_BxTxE, log_a_E, h0_BxE, starts_BxT, real_BxT):
  """The same (h, h_T) as `rg_lru`, one `rg_lru_step` per token."""
  time_major = lambda a: jnp.moveaxis(a, 1, 0)
  h_last_BxE, h_TxBxE = jax.lax.scan(lambda h, xs: rg_lru_step(h, *xs[:3], log_a_E, *xs[3:]), h0_BxE,
                                     tuple(map(time_major, (x_BxTxE, r_BxTxE, i_BxTxE, starts_BxT, real_BxT))))
  return jnp.moveaxis(h_TxBxE, 0, 1), h_last_BxE


def _lambda_init(key, shape, dtype=jnp.float32):
  """Λ with a^c = σ(Λ)^c uniform in [A_MIN, A_MAX]."""
  a_c = jax.random.uniform(key, shape, dtype, A_MIN, A_MAX)
  a = a_c ** (1.0 / C)
  return jnp.log(a) - jnp.log1p(-a)                               # σ⁻¹(a)


class BlockDiagonalDense(nn.Module):
  """x `[B, T, E]` → `[B, T, E]` with one (E/H × E/H) matrix and bias per head: the RG-LRU's gate projections."""
  heads: int

  @nn.compact
  def __call__(self, x_BxTxE):
    e = x_BxTxE.shape[-1]
    w_HxIxO = self.param('kernel', nn.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,)),
                         (self.heads, e // self.heads, e // self.heads))
    b_HxO = self.param('bias', nn.initializers.zeros, (self.heads, e // self.heads))
    x_BxTxHxI = x_BxTxE.reshape(*x_BxTxE.shape[:2], self.heads, e // self.heads)
    y_BxTxHxO = jnp.einsum('bthi,hio->btho', x_BxTxHxI, w_HxIxO) + b_HxO[None, None]
    return y_BxTxHxO.reshape(x_BxTxE.shape)


class RecurrentMixer(nn.Module):
  """Hawk's temporal block, `[B, T, D]` → `[B, T, D]`; with decode, h and the convolution's inputs in 'cache'."""
  config: mixers.MixerConfig

  @nn.compact
  def __call__(self, x_BxTxD, context: mixers.Context):
    cfg = self.config
    e, width, batch = cfg.d_model, cfg.conv_width, x_BxTxD.shape[0]
    dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    gate_BxTxE = nn.gelu(dense(e, name='gate_proj')(x_BxTxD).astype(jnp.float32))
    u_BxTxE = dense(e, name='input_proj')(x_BxTxD).astype(jnp.float32)
    u_BxTxE = jnp.where(context.real_BxT[:, :, None], u_BxTxE, 0.0)   # padding enters the convolution as 0
    history = mixers.cache_variable(self, 'conv_history', context.decode, (batch, width - 1, e))
    state = mixers.cache_variable(self, 'lru_state', context.decode, (batch, e))
    conv_w_WxE = self.param('conv_kernel', nn.initializers.lecun_normal(in_axis=0, out_axis=1), (width, e))
    conv_b_E = self.param('conv_bias', nn.initializers.zeros, (e,))
    u_BxTxE, new_history = mixers.causal_conv(
        u_BxTxE, conv_w_WxE, conv_b_E, jnp.zeros((batch, width - 1, e)) if history is None else history.value,
        context.starts_BxT)
    r_BxTxE = jax.nn.sigmoid(BlockDiagonalDense(cfg.num_heads, name='recurrence_gate')(u_BxTxE))
    i_BxTxE = jax.nn.sigmoid(BlockDiagonalDense(cfg.num_heads, name='input_gate')(u_BxTxE))
    log_a_E = jax.nn.log_sigmoid(self.param('a_param', _lambda_init, (e,)))
    args = (u_BxTxE, r_BxTxE, i_BxTxE, log_a_E)
    if context.decode:
      h_BxTxE, state.value = recurrent_rg_lru(*args, state.value, context.starts_BxT, context.real_BxT)
      history.value = new_history
    else:
      h_BxTxE, _ = rg_lru(*args, jnp.zeros((batch, e)), context.starts_BxT, context.real_BxT)
    return dense(cfg.d_model, name='out_proj')((h_BxTxE * gate_BxTxE).astype(cfg.compute_dtype))


class RecurrentBlock(mixers.ResidualBlock):
  """x + RecurrentMixer(norm(x)), then x + MLP(norm(x)): Hawk's residual block."""
  mixer: Any = RecurrentMixer
  mixer_name: str = 'mixer'


class AttentionBlock(nn.Module):
  """x + LocalAttention(norm(x)), then x + MLP(norm(x)): Griffin's attention block."""
  config: mixers.MixerConfig
  attends = True    # the trunk builds masks and positions for it

  @nn.compact
  def __call__(self, x_BxTxD, context: mixers.Context):
    attend = blocks.SelfAttention(self.config, name='attention')
    return mixers.residual_block(
        self.config, context, x_BxTxD,
        lambda h: attend(h, bias=None, mask=context.mask, query_positions=context.positions_BxT,
                         key_positions=context.key_positions_BxS, decode_index=context.decode_index), 'attention')


def griffin_pattern(num_layers: int) -> tuple:
  """Block types: two recurrent blocks, then an attention block, repeated."""
  return tuple(AttentionBlock if i % PATTERN == PATTERN - 1 else RecurrentBlock for i in range(num_layers))


# ---------------------------------------------------------------------------------------------------- model facts

def _griffin_window(model_config) -> int:
  return model_config.get('attention_window', 0) or GRIFFIN_WINDOW


def _attention_layers(model_config) -> int:
  return model_config.num_layers // PATTERN if model_config.name == 'griffin' else 0


def state_size(model_config) -> tuple[int, str]:
  """(floats, 'per sequence'): per recurrent layer h `[E]` and the convolution's last conv_width − 1 inputs; per
  griffin attention layer the keys and values of its window."""
  d = model_config.d_model
  attention_layers = _attention_layers(model_config)
  recurrent = (model_config.num_layers - attention_layers) * d * model_config.conv_width
  kv_cache = attention_layers * 2 * transformer.kv_width(model_config) * _griffin_window(model_config)
  return recurrent + kv_cache, 'per sequence'


def train_flops_per_token(model_config, *, vocab_size: int, seq_len: int) -> float:
  """6 × per recurrent layer the projections W_y, W_x', W_out (3·d·E), the gates (2·E²/H) and the convolution
  (W·E); per attention layer 6·(2d² + 2d·d_kv) + 12·d·(attended keys); + an MLP per layer and the head."""
  d, heads = model_config.d_model, model_config.num_heads
  attention_layers = _attention_layers(model_config)
  recurrent = 6 * (3 * d * d + 2 * d * d / heads + model_config.conv_width * d)
  keys = transformer.attended_keys(seq_len, causal=True, window=_griffin_window(model_config))
  attending = 6 * (2 * d * d + 2 * d * transformer.kv_width(model_config)) + 12 * d * keys
  return float((model_config.num_layers - attention_layers) * recurrent + attention_layers * attending
               + model_config.num_layers * mixers.mlp_flops_per_token(model_config)
               + mixers.head_flops_per_token(model_config, vocab_size=vocab_size, seq_len=seq_len))


def from_config(model_config, *, vocab_size: int, max_len: int) -> mixers.MixerModel:
  """`config.model` (name 'rg_lru': Hawk, or 'griffin') → its residual blocks for `model_config.task`."""
  if model_config.name == 'rg_lru':
    config = mixers.config_from(model_config, vocab_size=vocab_size, max_len=max_len)
    return mixers.MixerModel(config, task=model_config.task, block_types=(RecurrentBlock,) * config.num_layers)
  if model_config.num_layers < PATTERN:
    raise ValueError(f"model.name='griffin' with model.num_layers={model_config.num_layers} has no attention block "
                     "(its blocks go recurrent, recurrent, attention): use num_layers >= 3, or model.name='rg_lru'.")
  config = mixers.config_from(model_config, vocab_size=vocab_size, max_len=max_len, positions='rope',
                              attention_window=_griffin_window(model_config))
  return mixers.MixerModel(config, task=model_config.task, block_types=griffin_pattern(config.num_layers),
                           max_decode_length=max_len)

