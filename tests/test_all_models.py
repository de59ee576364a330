"""Properties every model of the registry (`lm_jax.models.MODELS`) must have, on random params and inputs.

A new model is covered by adding it to the registry: causality by gradient, cached decoding equal to the full
forward, packed documents independent of each other, left padding of a prompt and right padding of a
classifier's input changing nothing.
"""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

import fixtures
import model_helpers
from lm_jax import models

VOCAB, MAX_LEN, LENGTH = 23, 32, 12
# Keys a family needs beyond the tiny defaults to show everything it has (griffin: an attention block is the
# third); every key must exist in lm_jax/defaults.py.
EXTRA = {'griffin': {'num_layers': 3, 'attention_window': 4}}
LM_MODELS = [name for name in models.MODELS if 'lm' in models.tasks(name)]
CLASSIFIERS = [name for name in models.MODELS if 'classification' in models.tasks(name)]


def named(names):
  """Test cases named by the model: test_..._mamba."""
  return [(name, name) for name in names]


def tiny(name: str, task: str = 'lm'):
  keys = dict(num_layers=2, d_model=16, num_heads=2, mlp_dim=32, dropout=0.0, num_classes=3)
  return fixtures.model(name, task, **{**keys, **EXTRA.get(name, {})})


def tiny_model(name: str, task: str = 'lm', seed: int = 0):
  module = models.get_model(tiny(name, task), vocab_size=VOCAB, max_len=MAX_LEN)
  return module, model_helpers.random_params(module, scale=0.3, seed=seed)


def decoder(module):
  """decode_all(params, ids_BxT, prompt) → logits `[B, T, V]` of decoding: the first `prompt` tokens in one call,
  then one token per call. Two jitted functions, shared by every call: the steps compile once, the prompt once per
  prompt shape."""
  prefill = jax.jit(lambda p, x: module.apply({'params': p}, x, decode=True, mutable=['cache']))
  step = jax.jit(lambda p, cache, x: module.apply({'params': p, 'cache': cache}, x, decode=True, mutable=['cache']))

  def decode_all(params, ids_BxT, prompt: int):
    logits, variables = prefill(params, ids_BxT[:, :prompt])
    outputs = [logits]
    for t in range(prompt, ids_BxT.shape[1]):
      logits, variables = step(params, variables['cache'], ids_BxT[:, t:t + 1])
      outputs.append(logits)
    return jnp.concatenate(outputs, axis=1)

  return decode_all


class AllModelsTest(chex.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(*named(LM_MODELS))
  def test_lm_is_causal_by_gradient(self, name):
    """The logits at t have exactly zero gradient w.r.t. every input embedding after t, and nonzero up to t."""
    module, params = tiny_model(name)
    ids = model_helpers.random_ids(0, (2, LENGTH), vocab=VOCAB)
    depends_TxS = model_helpers.dependencies(module, params, ids)
    np.testing.assert_array_equal(depends_TxS, np.tril(np.ones((LENGTH, LENGTH), bool)), err_msg=name)

  @parameterized.named_parameters(*named(LM_MODELS))
  def test_decoding_with_a_cache_equals_the_full_forward_also_after_left_padding(self, name):
    """Prompt + one token at a time gives the full forward's logits; so does the prompt left-padded (as
    `generate` batches prompts), at the real positions. (Both prompts are 5 tokens, longer than griffin's window
    of 4: one compile of the prompt.)"""
    module, params = tiny_model(name)
    ids = model_helpers.random_ids(1, (2, LENGTH), vocab=VOCAB)
    full = jax.jit(lambda p, x: module.apply({'params': p}, x))(params, ids)
    decode_all = decoder(module)
    chex.assert_trees_all_close(decode_all(params, ids, prompt=5), full, atol=1e-4, rtol=1e-4)
    padded = jnp.pad(ids, ((0, 0), (3, 0)))   # a prompt of 3 pads and 2 tokens
    chex.assert_trees_all_close(decode_all(params, padded, prompt=5)[:, 3:], full, atol=1e-4, rtol=1e-4)

  @parameterized.named_parameters(*named(LM_MODELS))
  def test_packed_documents_are_independent(self, name):
    """In a packed row (segment_ids, positions restarting) the second document's logits are its logits alone."""
    module, params = tiny_model(name)
    first, second = (model_helpers.random_ids(seed, (1, n), vocab=VOCAB) for seed, n in ((3, 5), (4, 7)))
    packed = jnp.concatenate([first, second], axis=1)
    segment_ids = jnp.asarray([[1] * 5 + [2] * 7], jnp.int32)
    positions = jnp.asarray([list(range(5)) + list(range(7))], jnp.int32)
    apply = jax.jit(lambda p, x, **packing: module.apply({'params': p}, x, **packing))
    logits = apply(params, packed, segment_ids=segment_ids, positions=positions)
    chex.assert_trees_all_close(logits[:, 5:], apply(params, second), atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(logits[:, :5], apply(params, first), atol=1e-4, rtol=1e-4)

  @parameterized.named_parameters(*named(CLASSIFIERS))
  def test_classifier_ignores_appended_padding(self, name):
    module, params = tiny_model(name, 'classification')
    ids = model_helpers.random_ids(5, (2, 8), vocab=VOCAB, lengths=[8, 6])
    padded = jnp.pad(ids, ((0, 0), (0, 4)))
    apply = jax.jit(lambda p, x: module.apply({'params': p}, x))
    logits = apply(params, ids)
    chex.assert_shape(logits, (2, 3))
    chex.assert_tree_all_finite(logits)
    chex.assert_trees_all_close(apply(params, padded), logits, atol=1e-5, rtol=1e-5)

  @parameterized.named_parameters(*named(models.MODELS))
  def test_reports_state_size_and_flops(self, name):
    model_config = tiny(name)
    floats, unit = models.state_size(model_config)
    self.assertGreater(floats, 0)
    self.assertIn(unit, ('per token', 'per sequence'))
    self.assertGreater(models.train_flops_per_token(model_config, vocab_size=VOCAB, seq_len=LENGTH), 0)


if __name__ == '__main__':
  jax.config.update('jax_numpy_rank_promotion', 'raise')
  absltest.main()
