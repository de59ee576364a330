"""Autoregressive decoding with a cache: the prompt runs once, then each new token costs one position.

Works for any LM module whose `__call__` takes `decode=True` and keeps its state in the 'cache' collection (the
transformer's key/value cache, the RNN's carried state) and that names its length limit in `max_decode_length`.
Prompts of different lengths share a batch left-padded with the pad id 0 (`left_pad`): the transformer starts each
row's positions at its first prompt token and never attends to the padding; an RNN's state ignores padding.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm_jax.models.layers import PAD_ID


def left_pad(prompts: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
  """int32 `[B, length]` (default: the longest prompt): each prompt right-aligned after pad ids 0.

  left_pad([[5, 6, 7], [8]]) == [[5, 6, 7], [0, 0, 8]]
  """
  length = max(map(len, prompts)) if length is None else length
  out = np.full((len(prompts), length), PAD_ID, np.int32)
  for row, ids in zip(out, prompts):
    if not 0 < len(ids) <= length:
      raise ValueError(f'A prompt has {len(ids)} tokens; each needs 1 to {length}.')
    row[length - len(ids):] = ids
  return out


def sample(logits_BxV: jax.Array, key: jax.Array, *, temperature: float, top_k: int) -> jax.Array:
  """int32 `[B]`: argmax at temperature 0; else a draw from softmax(logits / temperature) over the top_k logits."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth_largest_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_largest_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(key, logits_BxV).astype(jnp.int32)


def generate(module: nn.Module, params, prompt_ids_BxP, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, rng: jax.Array | None = None) -> jax.Array:
  """int32 `[B, P + max_new_tokens]`: the prompts (left-padded with 0, see `left_pad`) then the sampled tokens.

  temperature 0 is greedy (rng unused); top_k 0 samples from the whole vocabulary. A row's continuation is the
  one its prompt gets alone.
  """
  prompt_ids_BxP = jnp.asarray(prompt_ids_BxP, jnp.int32)
  if prompt_ids_BxP.ndim != 2 or prompt_ids_BxP.shape[1] < 1:
    raise ValueError(f'prompt_ids must be [B, P] with P >= 1, got shape {prompt_ids_BxP.shape}.')
  if not bool(jnp.all(prompt_ids_BxP[:, -1] != PAD_ID)):
    raise ValueError('Every prompt must end with a token (pad id 0 only on the left): an empty or right-padded '
                     'prompt has nothing to continue.')
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0 (0 = greedy), got {temperature}.')
  if top_k < 0:
    raise ValueError(f'top_k must be >= 0 (0 = no cut), got {top_k}.')
  if temperature > 0 and rng is None:
    raise ValueError(f'temperature={temperature} samples and needs an rng key (or temperature=0 for greedy).')
  limit = module.max_decode_length
  total = prompt_ids_BxP.shape[1] + max_new_tokens
  if limit is not None and total > limit:
    raise ValueError(f'prompt length {prompt_ids_BxP.shape[1]} + max_new_tokens {max_new_tokens} = {total} '
                     f'exceeds the decode cache of {limit} positions (max_len).')
  rng = jax.random.key(0) if rng is None else rng
  return _generate(module, params, prompt_ids_BxP, rng, max_new_tokens=max_new_tokens,
                   temperature=float(temperature), top_k=int(top_k))


@functools.partial(jax.jit, static_argnames=('module', 'max_new_tokens', 'temperature', 'top_k'))
def _generate(module, params, prompt_ids_BxP, rng, *, max_new_tokens, temperature, top_k):
  pick = functools.partial(sample, temperature=temperature, top_k=top_k)
  # The prompt fills the cache in one call; its last position predicts the first new token.
  logits_BxPxV, variables = module.apply({'params': params}, prompt_ids_BxP, decode=True, mutable=['cache'])
  first_key, rng = jax.random.split(rng)
  first_B = pick(logits_BxPxV[:, -1], first_key)

  def step(carry, key):
    cache, token_B = carry
    logits_Bx1xV, variables = module.apply({'params': params, 'cache': cache}, token_B[:, None], decode=True,
                                           mutable=['cache'])
    return (variables['cache'], pick(logits_Bx1xV[:, -1], key)), token_B

  # The last token is sampled but never fed back, so max_new_tokens - 1 steps.
  (_, last_B), tokens_NxB = jax.lax.scan(step, (variables['cache'], first_B),
                                         jax.random.split(rng, max_new_tokens - 1))
  new_BxN = jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1)
  return jnp.concatenate([prompt_ids_BxP, new_BxN], axis=1)
