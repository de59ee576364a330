"""Labels by name and your own splits: class names map to ids the same way in every split, validation and test
files come from data.validation_paths and data.test_paths, and a run keeps its class names in labels.json."""

import csv
import json
import os

from absl.testing import absltest
import numpy as np

from lm_jax import workdir as workdir_lib
from lm_jax.data import labels
from lm_jax.data import text_files
from lm_jax.data import pipeline
from tests import fixtures


def _raw(values, path='f.csv'):
  raw = labels.RawLabels([path])
  for i, value in enumerate(values):
    raw.add(value, 0, i + 2)
  return raw


class AssignIdsTest(absltest.TestCase):

  def test_names_sorted_and_shared_by_every_split(self):
    ids, names = labels.assign_ids({'train': _raw(['pos', 'neg', 'neutral', 'pos']), 'test': _raw(['neutral', 'neg'])})
    self.assertEqual(names, ('neg', 'neutral', 'pos'))
    np.testing.assert_array_equal(ids['train'], [2, 0, 1, 2])
    np.testing.assert_array_equal(ids['test'], [1, 0])

  def test_given_names_set_the_order(self):
    ids, names = labels.assign_ids({'train': _raw(['pos', 'neg'])}, ('pos', 'neutral', 'neg'))
    self.assertEqual(names, ('pos', 'neutral', 'neg'))
    np.testing.assert_array_equal(ids['train'], [0, 2])

  def test_integer_labels_are_the_ids_and_names_may_name_them(self):
    ids, names = labels.assign_ids({'train': _raw([1, 0, 2])})
    self.assertIsNone(names)
    np.testing.assert_array_equal(ids['train'], [1, 0, 2])
    _, names = labels.assign_ids({'train': _raw([1, 0, 2])}, ('a', 'b', 'c'))
    self.assertEqual(names, ('a', 'b', 'c'))
    with self.assertRaisesRegex(ValueError, r"f.csv:4: label 2 has no name in data.label_names=\['a', 'b'\]"):
      labels.assign_ids({'train': _raw([1, 0, 2])}, ('a', 'b'))

  def test_a_test_label_that_training_lacks_names_file_and_line(self):
    with self.assertRaisesRegex(ValueError, r"test.csv:3: label 'angry' of the test split is not one of the classes "
                                r"of the training files \(data.paths\): \['neg', 'pos'\]"):
      labels.assign_ids({'train': _raw(['pos', 'neg']), 'test': _raw(['pos', 'angry'], 'test.csv')})

  def test_names_list_missing_a_label(self):
    with self.assertRaisesRegex(ValueError, r"f.csv:3: label 'neutral' of the train split is not one of the classes "
                                r"of data.label_names"):
      labels.assign_ids({'train': _raw(['pos', 'neutral'])}, ('neg', 'pos'))

  def test_mixed_kinds_and_bad_values(self):
    with self.assertRaisesRegex(ValueError, r"v.csv:2: label 1 and f.csv:2: label 'pos' mix class names and integer"):
      labels.assign_ids({'train': _raw(['pos']), 'validation': _raw([1], 'v.csv')})
    self.assertEqual(labels.raw_label(' 7 ', 'w'), 7)
    self.assertEqual(labels.raw_label(' pos ', 'w'), 'pos')
    for bad, message in ((-1, 'neither a class name'), (1.5, 'neither a class name'), (True, 'neither'),
                         ('  ', 'is empty'), ('2147483648', 'too large')):
      with self.assertRaisesRegex(ValueError, f'w: .*{message}'):
        labels.raw_label(bad, 'w')
    with self.assertRaisesRegex(ValueError, 'names a class twice'):
      labels.assign_ids({'train': _raw(['a'])}, ('a', 'a'))


def _write_csv(path, rows, columns=('text', 'sentiment')):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)
  return path


class OwnSplitsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    self.rows = {split: [(f'{split} text {i} ' + 'x' * int(rng.integers(1, 9)), str(rng.choice(['good', 'bad', 'meh'])))
                         for i in range(n)] for split, n in (('train', 30), ('validation', 7), ('test', 5))}
    self.paths = {split: _write_csv(os.path.join(self.root, f'{split}.csv'), rows) for split, rows in self.rows.items()}

  def data(self, **overrides):
    cfg = fixtures.data('csv', paths=self.paths['train'], label_column='sentiment', **overrides)
    tokenizer_dir = os.path.join(self.create_tempdir().full_path, 'tokenizer')
    return pipeline.text_data(text_files.read_csv(cfg, 'classification'), cfg, task='classification', seed=0,
                              tokenizer_dir=tokenizer_dir)

  def test_given_files_are_the_splits_and_nothing_is_carved(self):
    data = self.data(validation_paths=self.paths['validation'], test_paths=self.paths['test'])
    self.assertEqual(data.eval_splits, ('validation', 'test'))
    self.assertEqual(data.label_names, ('bad', 'good', 'meh'))
    for split, rows in self.rows.items():
      self.assertEqual(data.num_examples(split), len(rows))   # train keeps all 30: no validation carved out
      want = [data.label_names.index(label) for _, label in rows]
      np.testing.assert_array_equal(data.rows(split).arrays['label'], want)
    self.assertEqual(data.num_labels(), 3)

  def test_without_files_validation_is_carved_and_there_is_no_test(self):
    data = self.data()
    self.assertEqual(data.eval_splits, ('validation',))
    self.assertEqual(data.num_examples('train') + data.num_examples('validation'), 30)

  def test_names_survive_the_token_cache(self):
    first = self.data(test_paths=self.paths['test'])
    self.assertEqual(first.label_names, ('bad', 'good', 'meh'))
    again = self.data(test_paths=self.paths['test'])   # same files: read from the cache, no file is scanned
    self.assertEqual(again.label_names, ('bad', 'good', 'meh'))
    np.testing.assert_array_equal(again.rows('test').arrays['label'], first.rows('test').arrays['label'])

  def test_a_test_file_without_the_label_column(self):
    path = _write_csv(os.path.join(self.root, 'unlabelled.csv'), [('a text',)], columns=('text',))
    with self.assertRaisesRegex(ValueError, r"unlabelled.csv: no column 'sentiment'; the header has \['text'\]"):
      self.data(test_paths=path).rows('test')


class LabelsFileTest(absltest.TestCase):

  def test_saved_and_checked_on_resume_and_init_from(self):
    run = self.create_tempdir().full_path
    config = fixtures.config()
    workdir_lib.check_and_save_label_names(config, run, ('bad', 'good'))
    self.assertEqual(workdir_lib.read_label_names(run), ('bad', 'good'))
    with open(os.path.join(run, 'labels.json'), encoding='utf-8') as f:
      self.assertEqual(json.load(f), ['bad', 'good'])
    workdir_lib.check_and_save_label_names(config, run, ('bad', 'good'))   # the same classes resume
    with self.assertRaisesRegex(ValueError, r"labels.json holds the classes \['bad', 'good'\], but the data has "
                                r"\['bad', 'good', 'meh'\]"):
      workdir_lib.check_and_save_label_names(config, run, ('bad', 'good', 'meh'))
    os.makedirs(os.path.join(run, 'checkpoints', '10'))
    other = self.create_tempdir().full_path
    from_run = fixtures.config({'init_from': os.path.join(run, 'checkpoints', '10')})
    with self.assertRaisesRegex(ValueError, r"classifies \['bad', 'good'\], but the data has \['no', 'yes'\]: set "
                                'config.init_from_reinit=classifier_head'):
      workdir_lib.check_and_save_label_names(from_run, other, ('no', 'yes'))
    renewed = fixtures.config({'init_from': run, 'init_from_reinit': 'classifier_head'})
    workdir_lib.check_and_save_label_names(renewed, other, ('no', 'yes'))
    self.assertEqual(workdir_lib.read_label_names(other), ('no', 'yes'))


if __name__ == '__main__':
  absltest.main()
