"""What the transformer and the RNNs share: config checks, dropout, pooling and the output heads.

Heads return float32 logits computed with float32 accumulation (bfloat16 inputs, float32 products and bias), so
bfloat16 compute never rounds the logits themselves.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm_jax.models.random_bits import random_bits

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# model.remat → what a layer keeps for the backward pass (`jax.checkpoint` policies); the rest is recomputed.
REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,   # only the layer's input: the least memory, a second forward
    'dots': jax.checkpoint_policies.dots_saveable,      # matmul outputs: elementwise work is recomputed
}
POOLINGS = ('cls', 'mean')
PAD_ID = 0
# Tasks whose head scores the vocabulary: logits `[B, T, V]`, or `HeadInputs` for the fused loss.
VOCABULARY_TASKS = ('lm', 'mlm')


def check_choice(key: str, value, allowed: Sequence) -> None:
  """Raises ValueError naming the config key, the bad value and the allowed values."""
  if value not in allowed:
    raise ValueError(f'{key}={value!r} is not supported; allowed: {", ".join(map(repr, allowed))}.')


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """What every model's config holds; each model's dataclass adds its own fields and checks."""
  vocab_size: int
  num_layers: int = 2
  d_model: int = 32
  dropout: float = 0.0
  pooling: str = 'cls'
  tie_embeddings: bool = True
  num_classes: int = 2
  dtype: str = 'float32'
  remat: str = 'none'
  scan_layers: bool = False

  def __post_init__(self):
    check_choice('model.pooling', self.pooling, POOLINGS)
    check_choice('model.remat', self.remat, ('none', *REMAT_POLICIES))
    check_choice('model.dtype', self.dtype, tuple(DTYPES))
    check_dropout(self.dropout)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]


def remat(layer_class, policy: str, static_argnums: tuple[int, ...] = ()):
  """`layer_class` whose activations are recomputed in the backward pass as model.remat says ('none': as is).

  The same parameters and outputs: only what is kept for the gradient changes. `static_argnums` are the call's
  Python-valued arguments (self is 0), e.g. `train`.
  """
  if policy == 'none':
    return layer_class
  return nn.remat(layer_class, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)


def scan_blocks(block, x, *broadcast, length: int, call=None):
  """`x` through `length` layers of `block` (a module built with name='layers') as one `nn.scan`: one layer is
  traced and compiled whatever the depth; its params (and decode cache) carry a leading layer axis. `broadcast`
  reach every layer unchanged; `call(block, x, *broadcast)` calls the block (default `block(x, *broadcast)`)."""
  call = call or (lambda module, h, *args: module(h, *args))
  body = lambda module, h, *args: (call(module, h, *args), None)
  scanned = nn.scan(body, variable_axes={'params': 0, 'cache': 0}, split_rngs={'params': True, 'dropout': True},
                    in_axes=nn.broadcast, length=length)
  return scanned(block, x, *broadcast)[0]


def config_from(config_class, model_config, **given):
  """A model's config dataclass from the keys of `config.model` that are its fields, plus `given` (vocab_size...)."""
  fields = {f.name for f in dataclasses.fields(config_class)} - set(given)
  return config_class(**given, **{key: model_config[key] for key in fields if key in model_config})


def perturbable(module: nn.Module, x):
  """`x` plus a zero 'perturbations' entry whose gradient is the gradient w.r.t. `x` (causality tests).

  Made only on request (`apply(..., mutable=['perturbations'])`), so `init` returns params alone.
  """
  return x if module.is_initializing() else module.perturb('embedded', x)


def check_decode_inputs(decode: bool, segment_ids, positions) -> None:
  if decode and (segment_ids is not None or positions is not None):
    raise ValueError('decode=True takes unpacked prompts: pass neither segment_ids nor positions.')


def check_head_inputs(head_inputs: bool, task: str) -> None:
  if head_inputs and task not in VOCABULARY_TASKS:
    raise ValueError(f'head_inputs=True is for the vocabulary heads (tasks {", ".join(VOCABULARY_TASKS)}), '
                     f'not task {task!r}.')


def check_dropout(rate: float) -> None:
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'model.dropout={rate!r} must be in [0, 1).')


class Dropout(nn.Module):
  """Inverted dropout with rng collection 'dropout': with `train`, each element is zeroed with probability `rate`
  and the rest scaled by 1 / (1 - rate); without, the identity.

  The bits come from `random_bits`, which XLA fuses into the mask, rather than nn.Dropout's
  jax.random.bernoulli, which on CPU runs as a separate loop over the whole array.
  """
  rate: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_dropout(self.rate)
    if not train or self.rate == 0.0:
      return x
    # P(bits < threshold) = threshold / 2^32 = rate, exact to 2^-32.
    threshold = min(round(self.rate * 2.0 ** 32), 2 ** 32 - 1)
    keep = random_bits(self.make_rng('dropout'), x.shape) >= jnp.uint32(threshold)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype))


def add_bias(x: jax.Array, bias_F: jax.Array) -> jax.Array:
  """`x [..., F] + bias [F]` with the bias's rank made explicit (tests run with rank promotion as an error)."""
  return x + bias_F.reshape((1,) * (x.ndim - 1) + bias_F.shape)


def mean_pool(h_BxTxD: jax.Array, inputs_BxT: jax.Array) -> jax.Array:
  """Mean over the non-pad positions (accumulated in float32); an all-pad row gives zeros."""
  real_BxT = (inputs_BxT != PAD_ID).astype(h_BxTxD.dtype)
  total_BxD = jnp.einsum('btd,bt->bd', h_BxTxD, real_BxT, preferred_element_type=jnp.float32)
  return total_BxD / jnp.maximum(real_BxT.sum(axis=1, keepdims=True, dtype=jnp.float32), 1.0)


class HeadInputs(NamedTuple):
  """What an output head multiplies, instead of its logits: logits = hidden · tableᵀ + bias.

  `losses.fused_head_cross_entropy` takes these, so a train step never materializes `[B, T, V]` logits.
  """
  hidden_BxTxD: jax.Array  # in the compute dtype (after the MLM transform, if any)
  table_VxD: jax.Array     # float32 params: the tied embedding, or an untied kernel transposed
  bias_V: jax.Array


class Logits(nn.Module):
  """nn.Dense's params and init ('kernel', 'bias'), but float32 out: x·W in `dtype` with float32 accumulation.

  With `head_inputs`, returns `HeadInputs(x, Wᵀ, bias)` instead.
  """
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxF, *, head_inputs: bool = False):
    kernel_FxC = self.param('kernel', nn.initializers.lecun_normal(), (x_BxF.shape[-1], self.features), jnp.float32)
    bias_C = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    if head_inputs:
      return HeadInputs(x_BxF.astype(self.dtype), kernel_FxC.T, bias_C)
    return add_bias(jnp.einsum('...f,fc->...c', x_BxF.astype(self.dtype), kernel_FxC.astype(self.dtype),
                               preferred_element_type=jnp.float32), bias_C)


class ClassifierHead(nn.Module):
  """Pooled features `[B, F]` → dropout → float32 logits `[B, num_classes]`."""
  num_classes: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, pooled_BxF, *, train: bool):
    pooled_BxF = Dropout(self.dropout)(pooled_BxF, train=train)
    return Logits(self.num_classes, self.dtype, name='output')(pooled_BxF)


class OutputHead(nn.Module):
  """Hidden `[B, T, D]` → float32 logits `[B, T, V]`: the tied token embedding plus a bias, or its own `Logits`.

  `transform` adds BERT's masked-LM transform (Dense, `activation`, LayerNorm with epsilon `norm_eps`) first.
  With `head_inputs`, returns `HeadInputs` (the same params, the logits not computed).
  """
  vocab_size: int
  tie_embeddings: bool
  transform: bool
  dtype: Any
  activation: Callable[[jax.Array], jax.Array] = functools.partial(nn.gelu, approximate=False)
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, h_BxTxD, token_embed: nn.Embed, *, head_inputs: bool = False):
    if self.transform:
      h_BxTxD = nn.Dense(h_BxTxD.shape[-1], dtype=self.dtype, param_dtype=jnp.float32, name='transform')(h_BxTxD)
      h_BxTxD = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=jnp.float32,
                             name='transform_norm')(self.activation(h_BxTxD))
    if not self.tie_embeddings:
      return Logits(self.vocab_size, self.dtype, name='output')(h_BxTxD, head_inputs=head_inputs)
    bias_V = self.param('bias', nn.initializers.zeros, (self.vocab_size,), jnp.float32)
    if head_inputs:
      return HeadInputs(h_BxTxD.astype(self.dtype), token_embed.embedding, bias_V)
    return add_bias(jnp.einsum('btd,vd->btv', h_BxTxD.astype(self.dtype), token_embed.embedding.astype(self.dtype),
                               preferred_element_type=jnp.float32), bias_V)


def lm_or_classifier_head(cfg, task: str, h_BxTxF, token_embed: nn.Embed, pool: Callable, *, head_inputs: bool,
                          train: bool):
  """The head of a trunk with outputs `[B, T, F]`: lm → the vocabulary head on every position (`OutputHead`);
  classification → `ClassifierHead` on `pool(h)`. Called inside a model's compact `__call__`, so the heads are
  the model's 'lm_head' or 'classifier_head'."""
  if task == 'lm':
    return OutputHead(cfg.vocab_size, cfg.tie_embeddings, transform=False, dtype=cfg.compute_dtype,
                      name='lm_head')(h_BxTxF, token_embed, head_inputs=head_inputs)
  return ClassifierHead(cfg.num_classes, cfg.dropout, cfg.compute_dtype, name='classifier_head')(
      pool(h_BxTxF), train=train)
