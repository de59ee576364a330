"""Mamba (Gu & Dao, 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

The selective SSM (§3.2, Algorithm 2) per channel e of E = 2·d_model and state index n < N:

    Δ_t = softplus(W_Δ·(W_r·x_t) + b_Δ)     B_t = W_B·x_t     C_t = W_C·x_t          (input-dependent, Alg. 2)
    Ā_t = exp(Δ_t·A)                        B̄_t·x_t = Δ_t·B_t·x_t                      (discretization, eq. 4)
    h_t = Ā_t ⊙ h_{t−1} + B̄_t·x_t           y_t = C_t·h_t + D ⊙ x_t                   (eq. 2a, 2b)

with A = −exp(A_log) diagonal `[E, N]` (S4D-real init: A_log = log n), as mamba's `selective_scan_ref` (which also
discretizes B by Euler's Δ·B). Training runs h over all t at once (`mixers.linear_scan`, an associative scan);
generation runs the recurrence one token at a time (`selective_step`). The block (§3.4, Figure 3):

    x, z = split(W_in·u)      x = silu(conv(x))      y = SSM(x) ⊙ silu(z)      out = W_out·y

with a depthwise causal convolution of conv_width taps; layers are residual, u + Mamba(RMSNorm(u)), no MLP.
The state per layer is E·N for the SSM plus E·(conv_width − 1) inputs the convolution still needs.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm_jax.models import layers, mixers

TASKS = mixers.TASKS
EXPAND = 2                          # E = EXPAND · d_model (the paper's)
DT_MIN, DT_MAX = 1e-3, 1e-1          # Δ at init, log-uniform in this range (mamba_simple.py)


def dt_rank(d_model: int) -> int:
  """The rank R of Δ's projection: ⌈d_model / 16⌉ (the paper's)."""
  return math.ceil(d_model / 16)


def discretize(delta_BxTxE, a_ExN, b_BxTxN, x_BxTxE):
  """(Ā = exp(Δ·A), B̄·x = Δ·B·x), each `[B, T, E, N]` (eq. 4, with Euler's B̄ as selective_scan_ref)."""
  a_bar_BxTxExN = jnp.exp(delta_BxTxE[..., None] * a_ExN[None, None])
  bx_BxTxExN = (delta_BxTxE * x_BxTxE)[..., None] * b_BxTxN[:, :, None, :]
  return a_bar_BxTxExN, bx_BxTxExN


def selective_scan(x_BxTxE, delta_BxTxE, a_ExN, b_BxTxN, c_BxTxN, d_E, h0_BxExN, starts_BxT, real_BxT):
  """(y `[B, T, E]`, h_T `[B, E, N]`) of eqs. 2a-2b for all t at once; h restarts from 0 at a document start and
  is kept at padding."""
  a_bar, bx = discretize(delta_BxTxE, a_ExN, b_BxTxN, x_BxTxE)
  a_bar, bx = mixers.gate_for_resets(a_bar, bx, starts_BxT, real_BxT)
  h_BxTxExN, h_last_BxExN = mixers.linear_scan(a_bar, bx, h0_BxExN)
  y_BxTxE = jnp.einsum('bten,btn->bte', h_BxTxExN, c_BxTxN) + d_E[None, None, :] * x_BxTxE
  return y_BxTxE, h_last_BxExN


def selective_step(h_BxExN, x_BxE, delta_BxE, a_ExN, b_BxN, c_BxN, d_E, start_B, real_B):
  """One token of the recurrence: (h_t, y_t `[B, E]`)."""
  a_bar_BxExN = jnp.exp(delta_BxE[..., None] * a_ExN[None])
  bx_BxExN = (delta_BxE * x_BxE)[..., None] * b_BxN[:, None, :]
  h_new_BxExN = jnp.where(start_B[:, None, None], 0.0, a_bar_BxExN * h_BxExN) + bx_BxExN
  h_BxExN = jnp.where(real_B[:, None, None], h_new_BxExN, h_BxExN)
  return h_BxExN, jnp.einsum('ben,bn->be', h_BxExN, c_BxN) + d_E[None, :] * x_BxE


def recurrent_selective_scan(x_BxTxE, delta_BxTxE, a_ExN, b_BxTxN, c_BxTxN, d_E, h0_BxExN, starts_BxT, real_BxT):
  """The same (y, h_T) as `selective_scan`, one `selective_step` per token."""
  def step(h, xs):
    x, delta, b, c, start, real = xs
    return selective_step(h, x, delta, a_ExN, b, c, d_E, start, real)

  time_major = lambda a: jnp.moveaxis(a, 1, 0)
  inputs = tuple(map(time_major, (x_BxTxE, delta_BxTxE, b_BxTxN, c_BxTxN, starts_BxT, real_BxT)))
  h_last_BxExN, y_TxBxE = jax.lax.scan(step, h0_BxExN, inputs)
  return jnp.moveaxis(y_TxBxE, 0, 1), h_last_BxExN


def _dt_bias_init(key, shape, dtype=jnp.float32):
  """b_Δ = softplus⁻¹(Δ₀), Δ₀ log-uniform in [DT_MIN, DT_MAX], so Δ starts in that range (mamba_simple.py)."""
  dt = jnp.exp(jax.random.uniform(key, shape, dtype, math.log(DT_MIN), math.log(DT_MAX)))
  return dt + jnp.log(-jnp.expm1(-dt))


def _symmetric_uniform(limit: float):
  """U(−limit, limit): W_Δ's init (mamba_simple.py: dt_rank^−0.5)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


def _a_log_init(key, shape, dtype=jnp.float32):
  """A_log[e, n] = log(n + 1): S4D-real's A = −(n + 1) for every channel."""
  del key
  return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[1] + 1, dtype=dtype))[None, :], shape)


class Mamba(nn.Module):
  """The Mamba mixer, `[B, T, D]` → `[B, T, D]`; with decode, the SSM state and the convolution's inputs are
  carried in 'cache'."""
  config: mixers.MixerConfig

  @nn.compact
  def __call__(self, u_BxTxD, context: mixers.Context):
    cfg = self.config
    e, n, r, width = EXPAND * cfg.d_model, cfg.state_dim, dt_rank(cfg.d_model), cfg.conv_width
    dense = lambda features, name, **kw: nn.Dense(features, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                                                  name=name, **kw)
    xz_BxTx2E = dense(2 * e, 'in_proj', use_bias=False)(u_BxTxD)
    x_BxTxE, z_BxTxE = jnp.split(xz_BxTx2E.astype(jnp.float32), 2, axis=-1)
    conv_w_WxE = self.param('conv_kernel', nn.initializers.lecun_normal(in_axis=0, out_axis=1), (width, e))
    conv_b_E = self.param('conv_bias', nn.initializers.zeros, (e,))
    batch = u_BxTxD.shape[0]
    history = mixers.cache_variable(self, 'conv_history', context.decode, (batch, width - 1, e))
    state = mixers.cache_variable(self, 'ssm_state', context.decode, (batch, e, n))
    x_BxTxE = jnp.where(context.real_BxT[:, :, None], x_BxTxE, 0.0)   # padding enters the convolution as 0
    x_BxTxE, new_history = mixers.causal_conv(
        x_BxTxE, conv_w_WxE, conv_b_E, jnp.zeros((batch, width - 1, e)) if history is None else history.value,
        context.starts_BxT)
    x_BxTxE = nn.silu(x_BxTxE)
    projected_BxTxF = dense(r + 2 * n, 'x_proj', use_bias=False)(x_BxTxE).astype(jnp.float32)
    delta_in_BxTxR, b_BxTxN, c_BxTxN = jnp.split(projected_BxTxF, [r, r + n], axis=-1)
    delta_BxTxE = jax.nn.softplus(nn.Dense(e, kernel_init=_symmetric_uniform(r ** -0.5), bias_init=_dt_bias_init,
                                           dtype=jnp.float32, param_dtype=jnp.float32, name='dt_proj')(delta_in_BxTxR))
    a_ExN = -jnp.exp(self.param('A_log', _a_log_init, (e, n)))
    d_E = self.param('D', nn.initializers.ones, (e,))
    scan_args = (x_BxTxE, delta_BxTxE, a_ExN, b_BxTxN, c_BxTxN, d_E)
    if context.decode:
      y_BxTxE, state.value = recurrent_selective_scan(*scan_args, state.value, context.starts_BxT, context.real_BxT)
      history.value = new_history
    else:
      y_BxTxE, _ = selective_scan(*scan_args, jnp.zeros((batch, e, n)), context.starts_BxT, context.real_BxT)
    y_BxTxE = y_BxTxE * nn.silu(z_BxTxE)
    return dense(cfg.d_model, 'out_proj', use_bias=False)(y_BxTxE.astype(cfg.compute_dtype))


class Block(nn.Module):
  """u + dropout(Mamba(norm(u))): the Mamba architecture's only layer (no MLP)."""
  config: mixers.MixerConfig

  @nn.compact
  def __call__(self, u_BxTxD, context: mixers.Context):
    cfg = self.config
    mixed_BxTxD = Mamba(cfg, name='mixer')(cfg.layer_norm(name='norm')(u_BxTxD), context)
    return u_BxTxD + layers.Dropout(cfg.dropout)(mixed_BxTxD, train=context.train)


# ---------------------------------------------------------------------------------------------------- model facts

def state_size(model_config) -> tuple[int, str]:
  """(floats, 'per sequence'): per layer the SSM's h `[E, N]` and the convolution's last conv_width − 1 inputs."""
  e = EXPAND * model_config.d_model
  return model_config.num_layers * e * (model_config.state_dim + model_config.conv_width - 1), 'per sequence'


def train_flops_per_token(model_config, *, vocab_size: int, seq_len: int) -> float:
  """6 × per layer: the projections W_in (2dE), W_x (E(R + 2N)), W_Δ (RE), W_out (Ed), the convolution (W·E) and
  the scan's 3·E·N (Δ·B·x, Ā·h + B̄x, C·h); + the head."""
  d, n, width = model_config.d_model, model_config.state_dim, model_config.conv_width
  e, r = EXPAND * d, dt_rank(d)
  per_layer = 2 * d * e + e * (r + 2 * n) + r * e + e * d + width * e + 3 * e * n
  return float(6 * model_config.num_layers * per_layer
               + mixers.head_flops_per_token(model_config, vocab_size=vocab_size, seq_len=seq_len))


def from_config(model_config, *, vocab_size: int, max_len: int) -> mixers.MixerModel:
  """`config.model` (name 'mamba') → num_layers Mamba blocks for `model_config.task`."""
  config = mixers.config_from(model_config, vocab_size=vocab_size, max_len=max_len)
  return mixers.MixerModel(config, task=model_config.task, block_types=(Block,) * config.num_layers)

