"""lm_jax.tools.attention_maps on a tiny trained decoder: the PNG, and weights equal to a float64 NumPy reference."""

import os
import subprocess
import sys
import tempfile

import chex
import fixtures
import jax
import numpy as np
import pytest

from lm_jax.tools import attention_maps
from lm_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_weights(params, ids_T, num_heads):
  """Layer 0 of a pre-LN decoder with learned positions and no bias, in float64: softmax(q·kᵀ/√d_k), causal."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(params['decoder']))
  x_TxD = p['token_embed']['embedding'][ids_T] + p['position_embed']['embedding'][np.arange(len(ids_T))]
  norm = p['layers_0']['attention_norm']
  x_TxD = (x_TxD - x_TxD.mean(-1, keepdims=True)) / np.sqrt(x_TxD.var(-1, keepdims=True) + 1e-6)
  x_TxD = x_TxD * norm['scale'] + norm['bias']
  attention = p['layers_0']['attention']
  q_TxHxK = np.einsum('td,dhk->thk', x_TxD, attention['query']['kernel']) + attention['query']['bias']
  k_TxHxK = np.einsum('td,dhk->thk', x_TxD, attention['key']['kernel']) + attention['key']['bias']
  scores_HxTxS = np.einsum('thk,shk->hts', q_TxHxK, k_TxHxK) / np.sqrt(q_TxHxK.shape[-1])
  length = len(ids_T)
  scores_HxTxS = np.where(np.tril(np.ones((length, length), bool)), scores_HxTxS, -np.inf)
  weights = np.exp(scores_HxTxS - scores_HxTxS.max(-1, keepdims=True))
  assert weights.shape[0] == num_heads
  return weights / weights.sum(-1, keepdims=True)


@pytest.mark.slow   # trains a decoder, then runs the tool (one test in a subprocess)
class AttentionMapsTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.workdir = os.path.join(cls.tmp.name, 'recall')
    config = fixtures.recall({'train.num_steps': 10, 'model.num_layers': 2, 'model.attention_bias': 'none',
                              'model.smeared_keys': False})
    cls.state, _ = train.train_and_evaluate(config, cls.workdir)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_validation_example_maps(self):
    out = os.path.join(self.tmp.name, 'example.png')
    path, weights, tokens = attention_maps.render(self.workdir, example=2, out=out)
    self.assertEqual(path, out)
    with open(out, 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    layers, heads, length, keys = weights.shape
    self.assertEqual((layers, heads, keys), (2, 2, length))
    self.assertLen(tokens, length)
    self.assertTrue(all(t[0] in 'kv·' for t in tokens), tokens)   # keys, values and pad gaps of MQAR
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)    # every row is a distribution over keys
    self.assertEqual(np.abs(np.triu(weights, k=1)).max(), 0.0)     # causal: no weight on later tokens
    self.assertGreater(np.triu(np.ones((length, length)), k=1).sum(), 0)

    from lm_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
    tok = tokenizers.load(os.path.join(self.workdir, 'tokenizer'))
    ids = [tok.encode(t)[0] if t != '·' else 0 for t in tokens]
    # The maps come from the restored checkpoint; the reference uses the params training returned.
    np.testing.assert_allclose(weights[0], reference_weights(self.state.params, np.asarray(ids), heads),
                               rtol=1e-4, atol=1e-6)

  def test_text_input_from_the_command_line(self):
    out = os.path.join(self.tmp.name, 'text.png')
    result = subprocess.run([sys.executable, '-m', 'lm_jax.tools.attention_maps', '--workdir', self.workdir,
                             '--text', 'k1 v2 k3 v0 k3 v0 k1', '--out', out], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('2 layers x 2 heads over 7 tokens', result.stdout)
    self.assertGreater(os.path.getsize(out), 10_000)

  def test_refuses_both_or_neither_input(self):
    with self.assertRaisesRegex(ValueError, 'exactly one of --text and --example'):
      attention_maps.render(self.workdir)
    with self.assertRaisesRegex(ValueError, r'--example=5000: the validation split has 64 examples'):
      attention_maps.render(self.workdir, example=5000)
