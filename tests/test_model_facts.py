"""What each model family says of itself (lm_jax.models): FLOPs per token against a matmul count written out
independently, and the state size zoology plots recall against."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_collections
import numpy as np

from lm_jax import models


def _model_config(**overrides):
  c = ml_collections.ConfigDict(dict(name='transformer', task='classification', num_layers=3, d_model=48,
                                     mlp_dim=160, bidirectional=True, num_classes=5))
  c.update(overrides)
  return c


def _with_task(model_config, task):
  c = ml_collections.ConfigDict(model_config.to_dict())
  c.task = task
  return c



def reference_transformer_flops(L, d, d_ff, T, B, lm_vocab=None, n_classes=None, causal=False):
  """Per training step, counted matmul by matmul (forward 2·m·n·k, backward twice that), embeddings free."""
  tokens = B * T
  per_token_matmuls = L * (3 * d * d + d * d + d * d_ff + d_ff * d)   # Q, K, V, O projections and the MLP
  attention = L * B * (T * T * d + T * T * d) * (0.5 if causal else 1.0)   # QKᵀ and AV, full T² unless causal
  head = tokens * d * lm_vocab if lm_vocab else B * (d * d + d * n_classes)   # LM head | pooler + classifier
  return 3 * 2 * (tokens * per_token_matmuls + attention + head)


class TransformerAndLstmFlopsTest(absltest.TestCase):

  def test_transformer_against_matmul_count(self):
    c, tokens_per_step = _model_config(), 4 * 32
    for task, kwargs in (('classification', dict(n_classes=5)), ('mlm', dict(lm_vocab=999)),
                         ('lm', dict(lm_vocab=999, causal=True))):
      got = models.train_flops_per_token(_with_task(c, task), vocab_size=999, seq_len=32)
      np.testing.assert_allclose(got * tokens_per_step, reference_transformer_flops(3, 48, 160, T=32, B=4, **kwargs),
                                 rtol=1e-12, err_msg=task)

  def test_lstm_against_matmul_count(self):
    c = _model_config(name='lstm', num_layers=1, bidirectional=False)
    got = models.train_flops_per_token(_with_task(c, 'classification'), vocab_size=999, seq_len=32)
    # 4 gates, each an input (48×48) and a recurrent (48×48) matmul per token; the head once per sequence.
    expected = 6 * (4 * 48 * (48 + 48) * 4 * 32 + 48 * 5 * 4)
    np.testing.assert_allclose(got * 4 * 32, expected, rtol=1e-12)


class FlopsClosedFormTest(parameterized.TestCase):

  @parameterized.parameters(('gru', 3), ('rnn', 1), ('lstm', 4))
  def test_stacked_bidirectional_rnn_closed_form(self, name, gates):
    c = _model_config(name=name, num_layers=2, d_model=8)
    got = models.train_flops_per_token(_with_task(c, 'classification'), vocab_size=999, seq_len=16)
    # Layer 1 reads the 8-dim embedding, layer 2 the 16-dim concatenated directions; head 16 → 5 once per sequence.
    expected = 6 * 2 * gates * 8 * (8 + 8) + 6 * 2 * gates * 8 * (16 + 8) + 6 * 16 * 5 / 16
    self.assertAlmostEqual(got, expected)
    lm = models.train_flops_per_token(_with_task(c, 'lm'), vocab_size=100, seq_len=16)  # an LM reads one direction
    self.assertAlmostEqual(lm, 2 * 6 * gates * 8 * (8 + 8) + 6 * 8 * 100)

  def test_bad_names_raise(self):
    with self.assertRaisesRegex(ValueError, "'hyena'.*transformer.*rnn.*lstm.*gru.*mamba"):
      models.train_flops_per_token(_model_config(name='hyena'), vocab_size=9, seq_len=4)


class StateSizeTest(parameterized.TestCase):

  @parameterized.parameters(
      ('transformer', 'lm', 2 * 3 * 48, 'per token'),              # keys and values per layer
      ('transformer', 'classification', 2 * 3 * 48, 'per token'),
      ('rnn', 'lm', 3 * 48, 'per sequence'),                       # h per layer, forward only
      ('gru', 'classification', 2 * 3 * 48, 'per sequence'),       # h per layer and direction
      ('lstm', 'lm', 2 * 3 * 48, 'per sequence'),                  # h and c per layer
      ('lstm', 'classification', 2 * 2 * 3 * 48, 'per sequence'))  # h and c per layer and direction
  def test_state_size(self, name, task, floats, unit):
    self.assertEqual(models.state_size(_model_config(name=name, task=task)), (floats, unit))

  def test_tasks(self):
    self.assertEqual(models.tasks('lstm'), ('classification', 'lm'))
    self.assertIn('mlm', models.tasks('transformer'))


if __name__ == '__main__':
  absltest.main()
