"""metrics.jsonl and TensorBoard events read back; the log line; peak FLOP/s lookup; FLOPs against the reference."""

import glob
import importlib.util
import json
import os
import struct
import types

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_collections
import numpy as np
from tensorboardX.proto import event_pb2

from lm_jax import metrics

_REFERENCE_FLOPS = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'reference', 'flops.py')


def _read_scalars(events_dir):
  """(tag, step, value) of every scalar in the TFRecord-framed event files: u64 length, u32 crc, data, u32 crc."""
  scalars = []
  for path in sorted(glob.glob(os.path.join(events_dir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return scalars


def _model_config(**overrides):
  c = ml_collections.ConfigDict(dict(name='transformer', task='classification', num_layers=3, d_model=48,
                                     mlp_dim=160, bidirectional=True, num_classes=5))
  c.update(overrides)
  return c


class MetricsWriterTest(absltest.TestCase):

  def test_jsonl_and_events_read_back_and_resume_appends(self):
    workdir = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    written = [(10, 'train', {'loss': rng.uniform(1, 3), 'accuracy': rng.uniform()}),
               (20, 'validation', {'loss': rng.uniform(1, 3), 'accuracy': rng.uniform()})]
    writer = metrics.MetricsWriter(workdir)
    for step, split, values in written[:1]:
      writer.write(step, split, values)
    writer.close()
    resumed = metrics.MetricsWriter(workdir)
    for step, split, values in written[1:]:
      resumed.write(np.int64(step), split, {k: np.float32(v) for k, v in values.items()})
    resumed.close()

    with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
      lines = [json.loads(line) for line in f]
    self.assertLen(lines, 2)
    for line, (step, split, values) in zip(lines, written):
      self.assertEqual((line.pop('step'), line.pop('split')), (step, split))
      self.assertEqual(set(line), set(values))
      for name, value in values.items():
        np.testing.assert_allclose(line[name], value, rtol=1e-6)

    scalars = _read_scalars(os.path.join(workdir, 'events'))
    expected = [(f'{split}/{name}', step, value) for step, split, values in written for name, value in values.items()]
    self.assertCountEqual([(tag, step) for tag, step, _ in scalars], [(tag, step) for tag, step, _ in expected])
    by_key = {(tag, step): value for tag, step, value in scalars}
    for tag, step, value in expected:
      np.testing.assert_allclose(by_key[tag, step], value, rtol=1e-6)


class LogLineTest(absltest.TestCase):

  def test_design_example(self):
    line = metrics.format_log_line(
        1200, 4200, {'loss': 0.41234, 'accuracy': 0.86071, 'lr': 1.9e-5, 'grad_norm': 0.8349},
        tokens_per_sec=5123.0, mfu=0.3108, eta_seconds=580.4)
    self.assertEqual(line, 'step 1200/4200 | loss 0.412 | acc 0.861 | lr 1.9e-05 | gnorm 0.83 | 5.1k tok/s | '
                           'MFU 31% | eta 9m40s')

  def test_absent_keys_and_unknown_mfu_are_left_out(self):
    line = metrics.format_log_line(7, 10, {'loss': 2.5, 'perplexity': 12.2}, tokens_per_sec=950.0, mfu=None,
                                   eta_seconds=3725)
    self.assertEqual(line, 'step 7/10 | loss 2.500 | 950 tok/s | eta 1h02m')
    line = metrics.format_log_line(1, 10, {}, tokens_per_sec=2.35e6, mfu=0.05, eta_seconds=None)
    self.assertEqual(line, 'step 1/10 | 2.4M tok/s | MFU 5%')
    line = metrics.format_log_line(1, 10, {'lr': 3e-4}, tokens_per_sec=12.0, mfu=None, eta_seconds=float('inf'))
    self.assertEqual(line, 'step 1/10 | lr 3.0e-04 | 12 tok/s')


class PeakFlopsTest(parameterized.TestCase):

  @parameterized.parameters(
      ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12), ('NVIDIA H100 80GB HBM3', 'float32', 495e12),
      ('NVIDIA H200', 'bfloat16', 989e12), ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
      ('NVIDIA A100-SXM4-40GB', 'float32', 156e12), ('Tesla V100-SXM2-16GB', 'float32', 15.7e12),
      ('Tesla V100-SXM2-16GB', 'bfloat16', None), ('TPU v4', 'float32', 275e12), ('TPU v5 lite', 'bfloat16', 197e12),
      ('TPU v5', 'bfloat16', 459e12), ('TPU v6 lite', 'bfloat16', 918e12), ('Some future chip', 'bfloat16', None))
  def test_table(self, kind, dtype, expected):
    self.assertEqual(metrics.peak_flops_per_device(types.SimpleNamespace(device_kind=kind), dtype), expected)

  def test_cpu_is_unknown_and_bad_dtype_raises(self):
    self.assertIsNone(metrics.peak_flops_per_device(jax.devices()[0], 'float32'))
    with self.assertRaisesRegex(ValueError, 'int8.*bfloat16'):
      metrics.peak_flops_per_device(jax.devices()[0], 'int8')

  def test_mfu(self):
    self.assertAlmostEqual(metrics.mfu(1000.0, 3e9, 1e13), 0.3)
    self.assertIsNone(metrics.mfu(1000.0, 3e9, None))


class FlopsAgainstReferenceTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    if not os.path.exists(_REFERENCE_FLOPS):
      self.skipTest(f'reference FLOP formulas not found at {_REFERENCE_FLOPS}')
    spec = importlib.util.spec_from_file_location('reference_flops', _REFERENCE_FLOPS)
    self.reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(self.reference)

  def test_transformer_against_reference(self):
    c, tokens_per_step = _model_config(), 4 * 32
    ref = self.reference.transformer_train_flops(3, 48, 160, T=32, B=4, n_classes=5)
    got = metrics.train_flops_per_token(c, vocab_size=999, seq_len=32, task='classification')
    np.testing.assert_allclose(got * tokens_per_step, ref['flops_train_step'], rtol=1e-12)
    ref = self.reference.transformer_train_flops(3, 48, 160, T=32, B=4, lm_vocab=999)
    got = metrics.train_flops_per_token(c, vocab_size=999, seq_len=32, task='mlm')
    np.testing.assert_allclose(got * tokens_per_step, ref['flops_train_step'], rtol=1e-12)
    # The reference counts the full T² for causal attention too; a causal LM does half of it.
    got = metrics.train_flops_per_token(c, vocab_size=999, seq_len=32, task='lm')
    np.testing.assert_allclose(got * tokens_per_step, ref['flops_train_step'] - ref['flops_attention'] / 2,
                               rtol=1e-12)

  def test_lstm_against_reference(self):
    c = _model_config(name='lstm', num_layers=1, bidirectional=False)
    ref = self.reference.lstm_train_flops(e=48, h=48, T=32, B=4, n_classes=5)
    got = metrics.train_flops_per_token(c, vocab_size=999, seq_len=32, task='classification')
    np.testing.assert_allclose(got * 4 * 32, ref['flops_train_step'], rtol=1e-12)



class FlopsClosedFormTest(parameterized.TestCase):

  @parameterized.parameters(('gru', 3), ('rnn', 1), ('lstm', 4))
  def test_stacked_bidirectional_rnn_closed_form(self, name, gates):
    c = _model_config(name=name, num_layers=2, d_model=8)
    got = metrics.train_flops_per_token(c, vocab_size=999, seq_len=16, task='classification')
    # Layer 1 reads the 8-dim embedding, layer 2 the 16-dim concatenated directions; head 16 → 5 once per sequence.
    expected = 6 * 2 * gates * 8 * (8 + 8) + 6 * 2 * gates * 8 * (16 + 8) + 6 * 16 * 5 / 16
    self.assertAlmostEqual(got, expected)
    lm = metrics.train_flops_per_token(c, vocab_size=100, seq_len=16, task='lm')  # an LM reads one direction
    self.assertAlmostEqual(lm, 2 * 6 * gates * 8 * (8 + 8) + 6 * 8 * 100)

  def test_bad_names_raise(self):
    with self.assertRaisesRegex(ValueError, "'mamba'.*transformer, rnn, gru, lstm"):
      metrics.train_flops_per_token(_model_config(name='mamba'), vocab_size=9, seq_len=4, task='lm')
    with self.assertRaisesRegex(ValueError, "'seq2seq'.*classification, lm, mlm"):
      metrics.train_flops_per_token(_model_config(), vocab_size=9, seq_len=4, task='seq2seq')


if __name__ == '__main__':
  absltest.main()
