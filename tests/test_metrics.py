"""metrics.jsonl and TensorBoard events read back, truncated on resume; the log line; the device peak table and MFU."""

import glob
import json
import os
import struct
import types

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from tensorboardX.proto import event_pb2

from lm_jax import metrics


def _events(events_dir):
  """Every event of the TFRecord-framed event files, in file order: u64 length, u32 crc, data, u32 crc."""
  for path in sorted(glob.glob(os.path.join(events_dir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      yield event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4


def _read_scalars(events_dir):
  """(tag, step, value) of every scalar written."""
  return [(v.tag, event.step, v.simple_value) for event in _events(events_dir) for v in event.summary.value]


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


  def test_resume_drops_lines_after_the_checkpoint_and_purges_events(self):
    workdir = self.create_tempdir().full_path
    writer = metrics.MetricsWriter(workdir)
    for step in (10, 20, 30):
      writer.write(step, 'train', {'loss': 1.0 / step})
    self.assertEqual(writer.lines, 3)
    writer.close()
    # The checkpoint at step 20 recorded 2 lines; the line of step 30 is logged again by the resumed run.
    resumed = metrics.MetricsWriter(workdir, keep_lines=2, resume_step=20)
    self.assertEqual(resumed.lines, 2)
    resumed.write(30, 'train', {'loss': 0.5})
    resumed.close()
    with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
      lines = [json.loads(line) for line in f]
    self.assertEqual([(l['step'], l['loss']) for l in lines], [(10, 0.1), (20, 0.05), (30, 0.5)])
    purges = [event.step for event in _events(os.path.join(workdir, 'events'))
              if event.HasField('session_log') and event.session_log.status == event.session_log.START]
    self.assertEqual(purges, [21])   # TensorBoard drops the first run's events from step 21 on


class LogLineTest(absltest.TestCase):

  def test_design_example(self):
    line = metrics.format_log_line(
        1200, 4200, {'loss': 0.41234, 'accuracy': 0.86071, 'lr': 1.9e-5, 'grad_norm': 0.8349,
                     'tokens_per_sec': 5123.0}, mfu=0.3108, eta_seconds=580.4)
    self.assertEqual(line, 'step 1200/4200 | loss 0.412 | acc 0.861 | lr 1.9e-05 | gnorm 0.83 | 5.1k tok/s | '
                           'MFU 31% | eta 9m40s')

  def test_absent_keys_and_unknown_mfu_are_left_out(self):
    line = metrics.format_log_line(7, 10, {'loss': 2.5, 'perplexity': 12.2, 'tokens_per_sec': 950.0}, mfu=None,
                                   eta_seconds=3725)
    self.assertEqual(line, 'step 7/10 | loss 2.500 | 950 tok/s | eta 1h02m')
    line = metrics.format_log_line(1, 10, {'tokens_per_sec': 2.35e6}, mfu=0.05, eta_seconds=None)
    self.assertEqual(line, 'step 1/10 | 2.4M tok/s | MFU 5%')
    line = metrics.format_log_line(1, 10, {'lr': 3e-4, 'tokens_per_sec': 12.0}, mfu=None, eta_seconds=float('inf'))
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
