"""What a person reads: override errors naming the closest key, the console's line format, one text per line."""

import logging
import subprocess
import sys

from absl.testing import absltest

from lm_jax import configs
from lm_jax import defaults
from lm_jax import metrics
from lm_jax import inference
from lm_jax import process


class UnknownKeyTest(absltest.TestCase):

  def test_names_the_closest_key_or_the_valid_ones(self):
    config = defaults.get_config()
    self.assertIsNone(configs.unknown_key(config, 'optim.learning_rate'))
    self.assertEqual(configs.unknown_key(config, 'optim.learning_rat'),
                     "config.optim has no key 'learning_rat'; closest: 'learning_rate'")
    self.assertEqual(configs.unknown_key(config, 'modle.name'), "config has no key 'modle'; closest: 'model'")
    self.assertRegex(configs.unknown_key(config, 'zzz.data'), r"no key 'zzz'; valid keys: data, .*train$")
    self.assertEqual(configs.unknown_key(config, 'seed.x'), "config.seed is a value, not a section: it has no key 'x'")


class ConsoleLineTest(absltest.TestCase):

  def test_formatter_keeps_the_time_and_the_message(self):
    formatter = process.ConsoleFormatter()
    info = logging.LogRecord('lm_jax.train', logging.INFO, 'train.py', 1, 'step %d', (3,), None)
    warning = logging.LogRecord('lm_jax.train', logging.WARNING, 'train.py', 1, 'disk %s', ('full',), None)
    self.assertRegex(formatter.format(info), r'^\d\d:\d\d:\d\d step 3$')
    self.assertRegex(formatter.format(warning), r'^\d\d:\d\d:\d\d WARNING disk full$')

  def test_eval_line(self):
    line = metrics.format_eval_line('validation', 500, {'loss': 0.73349, 'accuracy': 0.75312, 'count': 10.0})
    self.assertEqual(line, 'validation step 500 | loss 0.7335 | acc 0.7531')
    line = metrics.format_eval_line('test', 9, {'loss': 2.0, 'perplexity': 7.389056, 'bits_per_byte': 1.23456})
    self.assertEqual(line, 'test step 9 | loss 2.0000 | ppl 7.389 | bpb 1.2346')


class OneTextPerLineTest(absltest.TestCase):

  def test_only_newlines_split(self):
    content = 'first\u2028still first\x85and\x0cthis\r\nsecond\x1cpart\nthird\r\n'
    self.assertEqual(inference.one_text_per_line(content),
                     ['first\u2028still first\x85and\x0cthis', 'second\x1cpart', 'third', ''])
    self.assertLen(content.splitlines(), 7)   # what the old reading gave: texts cut apart


if __name__ == '__main__':
  absltest.main()
