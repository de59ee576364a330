"""What the sequence-mixer families (linear_attention, mamba, rg_lru, griffin) share: the two pieces of math their
papers have in common, and one trunk with the transformer's call contract.

The math, pure jnp:
- `linear_scan`: h_t = a_t ⊙ h_{t-1} + b_t for all t at once, by `jax.lax.associative_scan` over the pairs (a, b)
  with (a₁, b₁) ∘ (a₂, b₂) = (a₁·a₂, a₂·b₁ + b₂) (Blelloch, 1990; Martin & Cundy, 2018). Mamba's selective SSM
  and the RG-LRU are both this recurrence with input-dependent a_t.
- `causal_conv`: the short depthwise causal convolution y_t = b + Σ_{k<W} w_k ⊙ x_{t−k} that Mamba (Gu & Dao, 2023,
  §3.4) and Griffin (De et al., 2024, §2.4) put before their recurrences.
Both know packed rows (the state, and the convolution's window, restart at each document start) and padding (a
pad token leaves the state as it was, and enters the convolution as zero).

The trunk: ids `[B, T]` → token embedding → the family's residual blocks → final norm → 'lm_head' (LM), or, for
classification, a pooled vector → 'classifier_head'. Every mixer here is causal, so a classifier pools the output
at the last real token ('cls': the whole sequence is behind it) or the mean over real tokens ('mean'). Params live
under 'decoder' (lm) or 'encoder' (classification), the embedding under 'token_embed', as for the transformer.
With `decode`, each block keeps its state in the 'cache' collection and runs its recurrent form.
"""

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lm_jax.models import blocks, layers
from lm_jax.models.rnn import document_starts

TASKS = ('classification', 'lm')


def linear_scan(a_BxTx_: jax.Array, b_BxTx_: jax.Array, h0_Bx_: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(h `[B, T, ...]`, h_T): h_t = a_t ⊙ h_{t−1} + b_t from h_0, as a parallel prefix scan over T.

  linear_scan([[2, 3]], [[1, 1]], [1]) → h = [[2·1 + 1, 3·3 + 1]] = [[3, 10]], h_T = [10]
  """
  b_BxTx_ = b_BxTx_.at[:, 0].add(a_BxTx_[:, 0] * h0_Bx_)   # fold h_0 into the first step

  def combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2

  _, h_BxTx_ = jax.lax.associative_scan(combine, (a_BxTx_, b_BxTx_), axis=1)
  return h_BxTx_, h_BxTx_[:, -1]


def gate_for_resets(a_BxTx_, b_BxTx_, starts_BxT, real_BxT):
  """(a, b) with the state zeroed at a document start (a = 0) and kept at padding (a = 1, b = 0)."""
  shape = (slice(None), slice(None)) + (None,) * (a_BxTx_.ndim - 2)
  a_BxTx_ = jnp.where(starts_BxT[shape], 0.0, a_BxTx_)
  return jnp.where(real_BxT[shape], a_BxTx_, 1.0), jnp.where(real_BxT[shape], b_BxTx_, 0.0)


def causal_conv(x_BxTxE: jax.Array, w_WxE: jax.Array, b_E: jax.Array, history_BxKxE: jax.Array,
                starts_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(y `[B, T, E]`, the new history): y_t = b + Σ_{k<W} w_k ⊙ x_{t−k}, where x before the current document is 0.

  `history` holds the K = W − 1 inputs before x (zeros for a fresh row): the cache of a decode step. With W = 2,
  w = [[1], [10]], no history and x = [[1], [2], [3]] (one feature): y = [[1], [2 + 10], [3 + 20]].
  """
  width, steps = w_WxE.shape[0], x_BxTxE.shape[1]
  full_BxSxE = jnp.concatenate([history_BxKxE.astype(x_BxTxE.dtype), x_BxTxE], axis=1)
  t_T = jnp.arange(steps)
  # The latest document start at or before t; -width when there is none in x (then the history counts).
  last_start_BxT = jax.lax.cummax(jnp.where(starts_BxT, t_T[None, :], -width), axis=1)
  y_BxTxE = jnp.zeros(x_BxTxE.shape, jnp.float32) + b_E[None, None, :]
  for k in range(width):
    shifted_BxTxE = full_BxSxE[:, width - 1 - k:width - 1 - k + steps]
    keep_BxT = t_T[None, :] - k >= last_start_BxT
    y_BxTxE = y_BxTxE + jnp.where(keep_BxT[:, :, None], shifted_BxTxE, 0.0) * w_WxE[k][None, None, :]
  # The next call's history: the last W − 1 inputs, zero where they precede the last document start.
  tail_index_K = jnp.arange(steps - (width - 1), steps)
  tail_keep_BxK = tail_index_K[None, :] >= last_start_BxT[:, -1:]
  history_BxKxE = jnp.where(tail_keep_BxK[:, :, None], full_BxSxE[:, full_BxSxE.shape[1] - (width - 1):], 0.0)
  return y_BxTxE.astype(x_BxTxE.dtype), history_BxKxE


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixerConfig(blocks.AttentionConfig):
  """The config of every mixer family: the attention keys (griffin's attention blocks, the MLP and norm) and the
  recurrences' own. Positions are the mixers' own business (RoPE in griffin's attention, none elsewhere)."""
  name: str
  state_dim: int = 16
  conv_width: int = 4

  def __post_init__(self):
    super().__post_init__()
    if self.state_dim < 1 or self.conv_width < 1:
      raise ValueError(f'model.state_dim={self.state_dim} and model.conv_width={self.conv_width} must be >= 1.')


@flax.struct.dataclass
class Context:
  """What a block reads beside its input: which tokens are real, where documents start, and (for attention) the
  mask, the positions and the first cache slot. `decode` and `train` are static (not traced): with model.remat the
  blocks run under `jax.checkpoint`, which traces every array it is given."""
  real_BxT: jax.Array
  starts_BxT: jax.Array
  decode: bool = flax.struct.field(pytree_node=False)
  train: bool = flax.struct.field(pytree_node=False)
  mask: jax.Array | None = None
  positions_BxT: jax.Array | None = None
  key_positions_BxS: jax.Array | None = None
  decode_index: jax.Array | None = None


def cache_variable(module: nn.Module, name: str, decode: bool, zeros_shape, dtype=jnp.float32):
  """The block's decode state `name` in 'cache' (zeros at first), or None when not decoding."""
  return module.variable('cache', name, jnp.zeros, zeros_shape, dtype) if decode else None


class Trunk(nn.Module):
  """ids `[B, T]` → `[B, T, D]`: embedding, the blocks (classes taking (config, name)), the final norm."""
  config: MixerConfig
  block_types: tuple

  def setup(self):
    cfg = self.config
    self.token_embed = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nn.initializers.normal(stddev=0.02),
                                dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    if cfg.scan_layers:
      self.pattern = repeating_unit(self.block_types)
      unit = self.pattern[0] if len(self.pattern) == 1 else functools.partial(Group, block_types=self.pattern)
      self.layers = layers.remat(unit, cfg.remat)(cfg)
    else:
      self.layers = [layers.remat(block, cfg.remat)(cfg) for block in self.block_types]
    self.norm = cfg.layer_norm()
    self.dropout = layers.Dropout(cfg.dropout)

  @nn.compact
  def __call__(self, inputs_BxT, *, train: bool, segment_ids=None, positions=None, decode: bool = False):
    cfg = self.config
    real_BxT = inputs_BxT != layers.PAD_ID
    context = Context(real_BxT, document_starts(inputs_BxT, segment_ids, positions), decode, train)
    if any(getattr(block, 'attends', False) for block in self.block_types):
      context = context.replace(**self._attention_inputs(inputs_BxT, segment_ids, positions, decode))
    x_BxTxD = layers.perturbable(self, self.token_embed(inputs_BxT))
    x_BxTxD = self.dropout(x_BxTxD, train=train)
    if cfg.scan_layers:
      x_BxTxD = layers.scan_blocks(self.layers, x_BxTxD, context, length=len(self.block_types) // len(self.pattern))
    else:
      for layer in self.layers:
        x_BxTxD = layer(x_BxTxD, context)
    return self.norm(x_BxTxD)

  def _attention_inputs(self, inputs_BxT, segment_ids, positions, decode: bool) -> dict:
    window = self.config.attention_window
    if decode:
      q_pos_BxT, k_pos_BxS, mask, decode_index = blocks.decode_positions(self, inputs_BxT, max_len=self.config.max_len,
                                                                         window=window)
      return dict(mask=mask, positions_BxT=q_pos_BxT, key_positions_BxS=k_pos_BxS, decode_index=decode_index)
    q_pos_BxT = jnp.arange(inputs_BxT.shape[1], dtype=jnp.int32)[None] if positions is None else positions
    mask = blocks.train_mask(inputs_BxT, causal=True, segment_ids=segment_ids, window=window)
    return dict(mask=mask, positions_BxT=q_pos_BxT, key_positions_BxS=q_pos_BxT)


def repeating_unit(block_types: tuple) -> tuple:
  """The shortest run of block types that repeats to make all of them: (A,) for A A A, (R, R, A) for Griffin's."""
  for size in range(1, len(block_types) + 1):
    if len(block_types) % size == 0 and block_types == block_types[:size] * (len(block_types) // size):
      return block_types[:size]
  raise AssertionError('unreachable: the whole tuple repeats once')


class Group(nn.Module):
  """One repeat of a block pattern (Griffin: two recurrent blocks, then attention), scanned as one layer."""
  config: MixerConfig
  block_types: tuple

  @nn.compact
  def __call__(self, x_BxTxD, context: Context):
    for i, block in enumerate(self.block_types):
      x_BxTxD = block(self.config, name=f'blocks_{i}')(x_BxTxD, context)
    return x_BxTxD


def last_real(h_BxTxD, inputs_BxT) -> jax.Array:
  """`[B, D]`: the output at each row's last real token (a causal model's summary of the whole row)."""
  last_B = jnp.maximum((inputs_BxT != layers.PAD_ID).sum(axis=1) - 1, 0)
  return jnp.take_along_axis(h_BxTxD, last_B[:, None, None], axis=1)[:, 0]


def residual_block(cfg: 'MixerConfig', context: 'Context', x_BxTxD, mixer, name: str):
  """x + mixer(norm(x)), then x + MLP(norm(x)), each branch with dropout: the pre-norm block of linear attention,
  Hawk and Griffin. `mixer` maps the normed `[B, T, D]` to `[B, T, D]`; its norm is named `<name>_norm`."""
  dropout = functools.partial(layers.Dropout(cfg.dropout), train=context.train)
  x_BxTxD = x_BxTxD + dropout(mixer(cfg.layer_norm(name=f'{name}_norm')(x_BxTxD)))
  return x_BxTxD + dropout(blocks.mlp(cfg, cfg.layer_norm(name='mlp_norm')(x_BxTxD)))


class ResidualBlock(nn.Module):
  """`residual_block` around `mixer(config, name=mixer_name)(h, context)`: a layer of linear attention or Hawk."""
  config: 'MixerConfig'
  mixer: Any            # the mixer's Module class
  mixer_name: str

  @nn.compact
  def __call__(self, x_BxTxD, context: 'Context'):
    mix = self.mixer(self.config, name=self.mixer_name)
    return residual_block(self.config, context, x_BxTxD, lambda h: mix(h, context), self.mixer_name)


class MixerModel(nn.Module):
  """task 'classification' → {'encoder', 'classifier_head'}; 'lm' → {'decoder', 'lm_head'}; the transformer's call."""
  config: MixerConfig
  task: str
  block_types: tuple
  max_decode_length: int | None = None   # the longest generation; None: a fixed-size state has no limit

  def __post_init__(self):
    layers.check_choice(f'model.task (model.name={self.config.name!r})', self.task, TASKS)
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs_BxT, *, train: bool = False, segment_ids=None, positions=None, decode: bool = False,
               head_inputs: bool = False):
    layers.check_head_inputs(head_inputs, self.task)
    layers.check_decode_inputs(decode, segment_ids, positions)
    cfg, decoder = self.config, self.task == 'lm'
    if decode and not decoder:
      raise ValueError('decode=True is for model.task=lm.')
    trunk = Trunk(cfg, self.block_types, name='decoder' if decoder else 'encoder')
    h_BxTxD = trunk(inputs_BxT, train=train, segment_ids=segment_ids, positions=positions, decode=decode)
    pool = lambda h: layers.mean_pool(h, inputs_BxT) if cfg.pooling == 'mean' else last_real(h, inputs_BxT)
    return layers.lm_or_classifier_head(cfg, self.task, h_BxTxD, trunk.token_embed, pool, head_inputs=head_inputs,
                                        train=train)


def config_from(model_config, *, vocab_size: int, max_len: int, **given) -> MixerConfig:
  """The MixerConfig of `config.model`; `given` fixes keys the family decides itself (e.g. positions)."""
  return layers.config_from(MixerConfig, model_config, vocab_size=vocab_size, max_len=max_len,
                            **{'positions': 'none', **given})


def head_flops_per_token(model_config, *, vocab_size: int, seq_len: int) -> float:
  """The head's training FLOPs per token: lm 6·d·V; classification 6·d·C once per sequence."""
  per_token = model_config.num_classes / seq_len if model_config.task == 'classification' else vocab_size
  return 6 * model_config.d_model * per_token


def mlp_flops_per_token(model_config) -> float:
  """One MLP's training FLOPs per token: 6·m·d·d_ff, m = 2 (gelu) or 3 (swiglu)."""
  matrices = 3 if model_config.get('mlp', 'gelu') == 'swiglu' else 2
  return 6 * matrices * model_config.d_model * model_config.mlp_dim
