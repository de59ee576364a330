"""FLOP formulas against a reference written out independently; the device peak table; MFU."""

import types

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_collections
import numpy as np

from lm_jax import flops


def _model_config(**overrides):
  c = ml_collections.ConfigDict(dict(name='transformer', task='classification', num_layers=3, d_model=48,
                                     mlp_dim=160, bidirectional=True, num_classes=5))
  c.update(overrides)
  return c



def reference_transformer_flops(L, d, d_ff, T, B, lm_vocab=None, n_classes=None, causal=False):
  """Per training step, counted matmul by matmul (forward 2·m·n·k, backward twice that), embeddings free."""
  tokens = B * T
  per_token_matmuls = L * (3 * d * d + d * d + d * d_ff + d_ff * d)   # Q, K, V, O projections and the MLP
  attention = L * B * (T * T * d + T * T * d) * (0.5 if causal else 1.0)   # QKᵀ and AV, full T² unless causal
  head = tokens * d * lm_vocab if lm_vocab else B * (d * d + d * n_classes)   # LM head | pooler + classifier
  return 3 * 2 * (tokens * per_token_matmuls + attention + head)


class PeakFlopsTest(parameterized.TestCase):

  @parameterized.parameters(
      ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12), ('NVIDIA H100 80GB HBM3', 'float32', 495e12),
      ('NVIDIA H200', 'bfloat16', 989e12), ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
      ('NVIDIA A100-SXM4-40GB', 'float32', 156e12), ('Tesla V100-SXM2-16GB', 'float32', 15.7e12),
      ('Tesla V100-SXM2-16GB', 'bfloat16', None), ('TPU v4', 'float32', 275e12), ('TPU v5 lite', 'bfloat16', 197e12),
      ('TPU v5', 'bfloat16', 459e12), ('TPU v6 lite', 'bfloat16', 918e12), ('Some future chip', 'bfloat16', None))
  def test_table(self, kind, dtype, expected):
    self.assertEqual(flops.peak_flops_per_device(types.SimpleNamespace(device_kind=kind), dtype), expected)

  def test_cpu_is_unknown_and_bad_dtype_raises(self):
    self.assertIsNone(flops.peak_flops_per_device(jax.devices()[0], 'float32'))
    with self.assertRaisesRegex(ValueError, 'int8.*bfloat16'):
      flops.peak_flops_per_device(jax.devices()[0], 'int8')

  def test_mfu(self):
    self.assertAlmostEqual(flops.mfu(1000.0, 3e9, 1e13), 0.3)
    self.assertIsNone(flops.mfu(1000.0, 3e9, None))


class TransformerAndLstmFlopsTest(absltest.TestCase):

  def test_transformer_against_matmul_count(self):
    c, tokens_per_step = _model_config(), 4 * 32
    for task, kwargs in (('classification', dict(n_classes=5)), ('mlm', dict(lm_vocab=999)),
                         ('lm', dict(lm_vocab=999, causal=True))):
      got = flops.train_flops_per_token(c, vocab_size=999, seq_len=32, task=task)
      np.testing.assert_allclose(got * tokens_per_step, reference_transformer_flops(3, 48, 160, T=32, B=4, **kwargs),
                                 rtol=1e-12, err_msg=task)

  def test_lstm_against_matmul_count(self):
    c = _model_config(name='lstm', num_layers=1, bidirectional=False)
    got = flops.train_flops_per_token(c, vocab_size=999, seq_len=32, task='classification')
    # 4 gates, each an input (48×48) and a recurrent (48×48) matmul per token; the head once per sequence.
    expected = 6 * (4 * 48 * (48 + 48) * 4 * 32 + 48 * 5 * 4)
    np.testing.assert_allclose(got * 4 * 32, expected, rtol=1e-12)


class FlopsClosedFormTest(parameterized.TestCase):

  @parameterized.parameters(('gru', 3), ('rnn', 1), ('lstm', 4))
  def test_stacked_bidirectional_rnn_closed_form(self, name, gates):
    c = _model_config(name=name, num_layers=2, d_model=8)
    got = flops.train_flops_per_token(c, vocab_size=999, seq_len=16, task='classification')
    # Layer 1 reads the 8-dim embedding, layer 2 the 16-dim concatenated directions; head 16 → 5 once per sequence.
    expected = 6 * 2 * gates * 8 * (8 + 8) + 6 * 2 * gates * 8 * (16 + 8) + 6 * 16 * 5 / 16
    self.assertAlmostEqual(got, expected)
    lm = flops.train_flops_per_token(c, vocab_size=100, seq_len=16, task='lm')  # an LM reads one direction
    self.assertAlmostEqual(lm, 2 * 6 * gates * 8 * (8 + 8) + 6 * 8 * 100)

  def test_bad_names_raise(self):
    with self.assertRaisesRegex(ValueError, "'mamba'.*transformer, rnn, gru, lstm"):
      flops.train_flops_per_token(_model_config(name='mamba'), vocab_size=9, seq_len=4, task='lm')


if __name__ == '__main__':
  absltest.main()
