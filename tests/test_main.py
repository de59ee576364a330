"""The main command's flag handling: bad configs fail before anything is built, naming the key."""

import os
import subprocess
import sys

import chex
import fixtures
import pytest

from lm_jax import configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
  return subprocess.run([sys.executable, '-m', 'lm_jax.main', '--config', 'experiments/imdb.py', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.slow   # the main command in subprocesses
class MainFlagsTest(chex.TestCase):

  def test_misspelled_key_fails_naming_it(self):
    result = run_main('--workdir', self.create_tempdir().full_path, '--config.optim.learning_rat=1')
    self.assertNotEqual(result.returncode, 0)
    self.assertIn('learning_rat', result.stderr)
    self.assertIn('learning_rate', result.stderr)  # "Did you mean ..."

  def test_wrong_type_fails_naming_value_and_type(self):
    result = run_main('--workdir', self.create_tempdir().full_path, '--config.train.batch_size=sixteen')
    self.assertEqual(result.returncode, 1)
    self.assertIn("flag --config.train.batch_size=sixteen: invalid literal for int() with base 10: 'sixteen'",
                  result.stderr)

  def test_bad_choice_fails_naming_value_and_allowed(self):
    result = run_main('--workdir', self.create_tempdir().full_path, '--config.optim.schedule=exp')
    self.assertEqual(result.returncode, 1)
    self.assertNotIn('Traceback', result.stderr)
    self.assertIn("config.optim.schedule='exp'", result.stderr)
    self.assertIn('cosine', result.stderr)


class ValidateTest(chex.TestCase):

  def test_base_config_is_valid(self):
    configs.validate(fixtures.config())

  def test_rejects_bad_values(self):
    for key, value, message in [('train.batch_size', 0, 'must be > 0'), ('model.dtype', 'float16', 'bfloat16'),
                                ('data.validation_fraction', 1.5, r'\[0, 1\)')]:
      config = fixtures.config({key: value})
      with self.assertRaisesRegex(ValueError, message):
        configs.validate(config)
