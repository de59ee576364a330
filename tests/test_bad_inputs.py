"""The bad-input battery: each user mistake ends in one message naming the bad value and what is allowed.

No traceback, no hang, and nothing already in the workdir is destroyed. One test per case; README.md states the count.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import chex
import fixtures
import pytest

from lm_jax import main
from lm_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {'data.mqar.num_eval': 32, 'train.batch_size': 8, 'train.eval_batch_size': 16, 'train.num_steps': 4,
        'train.log_every_steps': 2, 'train.eval_every_steps': 4, 'train.checkpoint_every_steps': 2}


def tiny(**overrides):
  """A 4-step recall run, with `overrides` given as keyword arguments with '__' for '.' (model__d_model=64)."""
  return fixtures.recall({**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}})


def run_main(*args):
  return subprocess.run([sys.executable, '-m', 'lm_jax.main', *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120)


def snapshot(workdir):
  """Every file under workdir with its size and modification time."""
  return {os.path.join(root, name): (os.path.getsize(os.path.join(root, name)),
                                     os.path.getmtime(os.path.join(root, name)))
          for root, _, names in os.walk(workdir) for name in names}


class BadInputTest(chex.TestCase):

  def assert_user_error(self, config, workdir, *patterns, mode='train'):
    """main.run exits 1 with one message matching every regex in `patterns`; the workdir's files are untouched."""
    before = snapshot(workdir) if os.path.isdir(workdir) else None
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
      code = main.run(config, workdir, mode)
    message = stderr.getvalue()
    self.assertEqual(code, 1, message)
    self.assertNotIn('Traceback', message)
    for pattern in patterns:
      self.assertRegex(message, pattern)
    if before is not None:
      self.assertEqual({k: v for k, v in snapshot(workdir).items() if k in before}, before)
    return message

  def trained(self, config=None):
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(config or tiny(), workdir)
    return workdir

  def text_corpus(self, content, name='corpus.txt'):
    return self.create_tempdir().create_file(name, content=content).full_path

  # ------------------------------------------------------------------------------------------------ config

  def test_misspelled_key(self):
    result = run_main('--config', 'experiments/recall.py', '--workdir', self.create_tempdir().full_path,
                      '--config.optim.learning_rat=1')
    self.assertNotEqual(result.returncode, 0)
    self.assertEqual(result.stderr.strip(), "lm_jax.main: --config.optim.learning_rat=1: config.optim has no key "
                     "'learning_rat'; closest: 'learning_rate'.")

  def test_unknown_section(self):
    result = run_main('--config', 'experiments/recall.py', '--workdir', self.create_tempdir().full_path,
                      '--config.cluster.hosts=8')
    self.assertNotEqual(result.returncode, 0)
    self.assertRegex(result.stderr.strip(), r"^lm_jax.main: --config.cluster.hosts=8: config has no key 'cluster'; "
                     r"valid keys: data, .*, train\.$")

  def test_wrong_type(self):
    result = run_main('--config', 'experiments/recall.py', '--workdir', self.create_tempdir().full_path,
                      '--config.train.batch_size=sixteen')
    self.assertEqual(result.returncode, 1)
    self.assertIn("flag --config.train.batch_size=sixteen: invalid literal for int() with base 10: 'sixteen'",
                  result.stderr)
    self.assertNotIn('Traceback', result.stderr)

  def test_zero_size(self):
    self.assert_user_error(tiny(model__d_model=0), self.create_tempdir().full_path,
                           r'config\.model\.d_model=0 must be > 0')

  def test_negative_size(self):
    self.assert_user_error(tiny(train__batch_size=-8), self.create_tempdir().full_path,
                           r'config\.train\.batch_size=-8 must be > 0')

  def test_d_model_not_divisible_by_heads(self):
    self.assert_user_error(tiny(model__num_heads=3), self.create_tempdir().full_path,
                           r'config\.model\.d_model=32 must divide by config\.model\.num_heads=3')

  def test_batch_not_divisible_by_devices(self):
    self.assert_user_error(tiny(train__batch_size=9), self.create_tempdir().full_path,
                           r'config\.train\.batch_size=9 must divide by the batch shards \(mesh data × fsdp = 2\)')

  def test_missing_config_file(self):
    result = run_main('--config', 'experiments/no_such.py', '--workdir', self.create_tempdir().full_path)
    self.assertEqual(result.returncode, 1)
    self.assertIn("No such file or directory: 'experiments/no_such.py'", result.stderr)
    self.assertNotIn('Traceback', result.stderr)

  def test_unreadable_config_file(self):
    result = run_main('--config', 'experiments', '--workdir', self.create_tempdir().full_path)   # a directory
    self.assertEqual(result.returncode, 1)
    self.assertIn("'experiments'", result.stderr)
    self.assertNotIn('Traceback', result.stderr)

  def test_broken_config_file(self):
    path = self.create_tempdir().create_file('broken.py', content='def get_config(:\n').full_path
    result = run_main('--config', path, '--workdir', self.create_tempdir().full_path)
    self.assertEqual(result.returncode, 1)
    self.assertIn(f"the config file {path!r} failed to load: SyntaxError", result.stderr)
    self.assertNotIn('Traceback', result.stderr)

  # ------------------------------------------------------------------------------------------------ data

  def test_dataset_missing_offline(self):
    config = tiny(data__name='imdb_reviews', data__tfds_data_dir=self.create_tempdir().full_path,
                  data__download=False, model__task='classification')
    self.assert_user_error(config, self.create_tempdir().full_path, 'is not prepared in', 'data.tfds_data_dir')

  def test_glob_matching_nothing(self):
    config = tiny(data__name='text_files', data__paths='/nonexistent/*.txt', data__tokenizer='bytes')
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r"data\.paths pattern '/nonexistent/\*\.txt' matches no file")

  def test_empty_dataset(self):
    config = tiny(data__name='text_files', data__paths=self.text_corpus(''), data__tokenizer='bytes')
    self.assert_user_error(config, self.create_tempdir().full_path, r'0 document\(s\)', 'data.validation_fraction')

  @pytest.mark.slow   # tokenizes a 10 MB document and trains on it
  def test_empty_texts_bad_utf8_and_a_10mb_document_train(self):
    tmp = self.create_tempdir()
    words = ' '.join(['the cat sat on the mat'] * 20)
    body = '\n\n'.join([words] * 40 + ['', '   ']).encode() + b'\n\nbroken \xff\xfe bytes ' + words.encode()
    tmp.create_file('corpus.txt', content=body, mode='wb')
    tmp.create_file('huge.txt', content=('word ' * 2_000_000) + '\n')   # one 10 MB document
    config = tiny(data__name='text_files', data__paths=os.path.join(tmp.full_path, '*.txt'), data__tokenizer='bytes',
                  data__validation_fraction=0.2, model__task='lm', train__num_steps=2)
    state, results = train.train_and_evaluate(config, self.create_tempdir().full_path)
    self.assertEqual(int(state.step), 2)
    self.assertIn('loss', results['validation'])

  def test_label_out_of_range(self):
    path = self.text_corpus('\n'.join(json.dumps({'text': f'review {i}', 'label': i % 5}) for i in range(40)),
                            'reviews.jsonl')
    config = tiny(data__name='jsonl', data__paths=path, data__tokenizer='bytes', model__task='classification',
                  model__num_classes=2)
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r'labels 0\.\.4, more than config\.model\.num_classes=2')

  def test_negative_label(self):
    path = self.text_corpus('{"text": "good film", "label": 1}\n{"text": "bad film", "label": -1}\n', 'reviews.jsonl')
    config = tiny(data__name='jsonl', data__paths=path, data__tokenizer='bytes', model__task='classification')
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r"reviews\.jsonl:2: label -1 \(data\.label_column\) is neither a class name")

  def test_mixed_names_and_integer_labels(self):
    path = self.text_corpus('text,label\ngood film,1\nbad film,negative\n', 'reviews.csv')
    config = tiny(data__name='csv', data__paths=path, data__tokenizer='bytes', model__task='classification')
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r"reviews\.csv:3: label 'negative' and .*reviews\.csv:2: label 1 mix class names and "
                           'integer ids')

  def test_unknown_label_in_the_test_file(self):
    train = self.text_corpus('text,label\ngood film,pos\nbad film,neg\n', 'train.csv')
    test = self.text_corpus('text,label\nodd film,meh\n', 'test.csv')
    config = tiny(data__name='csv', data__paths=train, data__test_paths=test, data__validation_fraction=0.0,
                  data__tokenizer='bytes', model__task='classification')
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r"test\.csv:2: label 'meh' of the test split is not one of the classes of the training "
                           r"files \(data\.paths\): \['neg', 'pos'\]")

  def test_label_names_missing_a_label(self):
    path = self.text_corpus('text,label\ngood film,pos\nbad film,neg\n', 'reviews.csv')
    config = tiny(data__name='csv', data__paths=path, data__tokenizer='bytes', model__task='classification',
                  data__label_names=('pos',))
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r"reviews\.csv:3: label 'neg' of the train split is not one of the classes of "
                           r"data\.label_names: \['pos'\]")

  def test_test_file_without_the_label_column(self):
    train = self.text_corpus('text,label\ngood film,pos\nbad film,neg\n', 'train.csv')
    test = self.text_corpus('text\nodd film\n', 'test.csv')
    config = tiny(data__name='csv', data__paths=train, data__test_paths=test, data__validation_fraction=0.0,
                  data__tokenizer='bytes', model__task='classification')
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r"test\.csv: no column 'label'; the header has \['text'\]")

  def test_non_integer_label(self):
    path = self.text_corpus('{"text": "good film", "label": 1.5}\n', 'reviews.jsonl')
    config = tiny(data__name='jsonl', data__paths=path, data__tokenizer='bytes', model__task='classification')
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r'reviews\.jsonl:1: label 1\.5 \(data\.label_column\) is neither a class name')

  def test_csv_without_the_named_column(self):
    path = self.text_corpus('review,label\ngood film,1\n', 'reviews.csv')
    config = tiny(data__name='csv', data__paths=path, data__tokenizer='bytes', model__task='classification')
    self.assert_user_error(config, self.create_tempdir().full_path,
                           r"reviews\.csv: no column 'text'; the header has \['review', 'label'\]")

  # ------------------------------------------------------------------------------------------------ workdir

  def test_workdir_is_a_file(self):
    path = self.create_tempdir().create_file('notadir', content='keep me').full_path
    self.assert_user_error(tiny(), path, r"--workdir='.*notadir' is a file")
    with open(path) as f:
      self.assertEqual(f.read(), 'keep me')

  def test_workdir_is_read_only(self):
    workdir = self.create_tempdir().full_path
    real_access = os.access
    # Tests run as root here, for whom permission bits do not apply: the check itself is what is tested.
    with mock.patch.object(os, 'access', lambda p, m: False if p == workdir else real_access(p, m)):
      self.assert_user_error(tiny(), workdir, r"--workdir='.*' is not writable")

  def test_resume_with_another_model_shape_lists_the_params(self):
    workdir = self.trained()
    os.remove(os.path.join(workdir, 'config.json'))   # so that only the checkpoint can tell
    self.assert_user_error(tiny(model__mlp_dim=96), workdir, 'holds another model',
                           r'decoder/layers_0/mlp_in/kernel: checkpoint float32\[32, 64\], target float32\[32, 96\]')

  def test_resume_with_another_config(self):
    self.assert_user_error(tiny(model__mlp_dim=96), self.trained(), r'model\.mlp_dim: 64 -> 96', 'new --workdir')

  def test_init_from_nothing(self):
    self.assert_user_error(tiny(init_from='/nonexistent/run'), self.create_tempdir().full_path,
                           r"config\.init_from='/nonexistent/run': no tokenizer/ found")

  def test_init_from_incompatible_model(self):
    source = self.trained()
    self.assert_user_error(tiny(init_from=source, model__mlp_dim=96), self.create_tempdir().full_path,
                           r'init_from .*parameter\(s\) cannot be loaded', r'float32\[32, 64\]', 'init_from_reinit')

  @pytest.mark.slow   # trains, then resumes
  def test_corrupted_checkpoint(self):
    workdir = self.trained()
    for root, _, names in os.walk(os.path.join(workdir, 'checkpoints')):
      for name in names:
        if name == 'manifest.ocdbt':
          with open(os.path.join(root, name), 'r+b') as f:
            f.write(b'\x00garbage\xff' * 4)
    self.assert_user_error(tiny(), workdir, 'No checkpoint in .* could be restored', 'step 4', mode='evaluate')

  @pytest.mark.slow   # trains two runs
  def test_tokenizer_of_another_vocabulary(self):
    corpus = self.text_corpus('\n\n'.join(f'sentence number {i} about films and plots' for i in range(300)))
    text = dict(data__name='text_files', data__paths=corpus, data__tokenizer='sentencepiece', data__vocab_size=400)
    workdir = self.trained(tiny(**text))
    other = self.trained(tiny(**{**text, 'data__vocab_size': 300}))
    shutil.rmtree(os.path.join(workdir, 'tokenizer'))
    shutil.copytree(os.path.join(other, 'tokenizer'), os.path.join(workdir, 'tokenizer'))
    self.assert_user_error(tiny(**text, train__num_steps=8), workdir, 'holds another model',
                           r'token_embed/embedding: checkpoint float32\[\d+, 32\], target float32\[300, 32\]')

  def test_evaluate_on_an_empty_workdir(self):
    self.assert_user_error(tiny(), self.create_tempdir().full_path, r'No checkpoints in .* train first',
                           mode='evaluate')

  def test_unknown_optimizer(self):
    self.assert_user_error(tiny(optim__name='adam'), self.create_tempdir().full_path,
                           r"config\.optim\.name='adam' is not one of \('adamw', 'adafactor', 'lion', 'sgd'\)")


class SafeLoadingTest(chex.TestCase):

  def test_package_never_unpickles(self):
    forbidden = ('import pickle', 'pickle.load', 'allow_pickle=True', 'torch.load', 'import dill', 'cloudpickle')
    for root, _, names in os.walk(os.path.join(REPO, 'lm_jax')):
      for name in names:
        if name.endswith('.py'):
          with open(os.path.join(root, name), encoding='utf-8') as f:
            source = f.read()
          for word in forbidden:
            self.assertNotIn(word, source, f'{name} uses {word}')
