"""lm_jax.ablate on a tiny recall sweep (2 lengths x 2 seeds, plus a variant that fails), and the shipped sweeps.

One sweep directory is built once, as a user would: the first invocation is interrupted in the middle of a run,
the second completes the sweep (one variant raises), the third finds nothing to train.
"""

import csv
import json
import os
import tempfile
from unittest import mock

import chex
import fixtures
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lm_jax import checkpoint
from lm_jax import configs
from lm_jax import models
from lm_jax.sweeps import plots as sweep_plots
from lm_jax.sweeps import report as sweep_report
from lm_jax.sweeps import runner as sweep_runner
from lm_jax import sweeps
from lm_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECALL = os.path.join(REPO, 'experiments', 'recall.py')
TINY_SWEEP = f'''
from lm_jax.sweeps import Variant, grid

TINY = {{'model.num_layers': 1, 'model.d_model': 32, 'model.num_heads': 2, 'model.mlp_dim': 64,
         'train.batch_size': 16, 'train.num_steps': 10, 'train.log_every_steps': 5, 'train.eval_every_steps': 5,
         'train.checkpoint_every_steps': 5, 'optim.warmup_steps': 2}}
LENGTHS = {{'T16': {{'data.max_len': 16, 'data.mqar.num_pairs': 2, 'data.mqar.num_queries': 2}},
           'T32': {{'data.max_len': 32, 'data.mqar.num_pairs': 4, 'data.mqar.num_queries': 4}}}}


def get_sweep():
  runs = grid({RECALL!r}, LENGTHS, seeds=(0, 1), overrides=TINY)
  # 3 heads do not divide d_model 32: the model refuses to build.
  runs.insert(2, Variant('broken', {RECALL!r}, {{**TINY, **LENGTHS['T16'], 'model.num_heads': 3}}))
  return runs
'''
RUNS = ('T16_seed0', 'T32_seed0', 'broken', 'T16_seed1', 'T32_seed1')


def read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


@pytest.mark.slow   # trains a sweep of five runs, twice
class TinySweepTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.sweep = os.path.join(cls.tmp.name, 'tiny.py')
    with open(cls.sweep, 'w', encoding='utf-8') as f:
      f.write(TINY_SWEEP)
    cls.workdir = os.path.join(cls.tmp.name, 'sweep')

    # 1. Interrupted (as by Ctrl-C) right after the second run saved its step-5 checkpoint.
    save = checkpoint.Checkpointer.save

    def save_then_interrupt(self, step, *args, **kwargs):
      saved = save(self, step, *args, **kwargs)
      if 'T32_seed0' in str(self.directory) and step == 5:
        raise KeyboardInterrupt
      return saved

    with mock.patch.object(checkpoint.Checkpointer, 'save', save_then_interrupt):
      try:
        sweep_runner.run_sweep(cls.sweep, cls.workdir)
        cls.interrupted = False
      except KeyboardInterrupt:
        cls.interrupted = True
    cls.after_interrupt = {run: os.path.exists(os.path.join(cls.workdir, run, 'results.json')) for run in RUNS}

    # 2. The same command completes the sweep; 'broken' fails.
    cls.failures = sweep_runner.run_sweep(cls.sweep, cls.workdir)
    cls.metrics_after_completion = {run: read(os.path.join(cls.workdir, run, 'metrics.jsonl'))
                                    for run in RUNS if run != 'broken'}

    # 3. Again: nothing left to train.
    with mock.patch.object(train, 'train_and_evaluate', wraps=train.train_and_evaluate) as trained:
      cls.failures_on_rerun = sweep_runner.run_sweep(cls.sweep, cls.workdir)
    cls.trained_on_rerun = [os.path.basename(call.args[1]) for call in trained.call_args_list]

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def run_dir(self, run):
    return os.path.join(self.workdir, run)

  def results(self, run):
    with open(os.path.join(self.run_dir(run), 'results.json'), encoding='utf-8') as f:
      return json.load(f)

  def table(self):
    with open(os.path.join(self.workdir, 'results.csv'), newline='', encoding='utf-8') as f:
      return {row['variant']: row for row in csv.DictReader(f)}

  def test_every_run_is_present_and_finished(self):
    for run in RUNS:
      if run == 'broken':
        continue
      self.assertEqual(self.results(run)['step'], 10, run)
      for name in ('config.json', 'checkpoints', 'metrics.jsonl', 'tokenizer', sweep_report.INFO_FILE):
        self.assertTrue(os.path.exists(os.path.join(self.run_dir(run), name)), (run, name))
    self.assertEqual(list(self.table()), ['T16', 'T32', 'broken'])

  def test_table_means_and_stds_are_those_of_the_runs(self):
    table = self.table()
    for variant in ('T16', 'T32'):
      row = table[variant]
      per_seed = [self.results(f'{variant}_seed{seed}') for seed in (0, 1)]
      self.assertEqual((row['n'], row['failed'], row['seeds']), ('2', '0', '0 1'))
      for name in ('loss', 'accuracy', 'perplexity', 'bits_per_byte'):
        values = [r['validation'][name] for r in per_seed]
        mean = sum(values) / 2
        std = (sum((v - mean) ** 2 for v in values) / (2 - 1)) ** 0.5   # sample std, ddof=1
        self.assertAlmostEqual(float(row[f'validation/{name}_mean']), mean, places=12)
        self.assertAlmostEqual(float(row[f'validation/{name}_std']), std, places=12)
      self.assertGreater(std, 0)   # the seeds differ: a std of 0 would not test ddof
      info = [json.loads(read(os.path.join(self.run_dir(f'{variant}_seed{s}'), sweep_report.INFO_FILE)))
              for s in (0, 1)]
      self.assertEqual(int(row['params']), info[0]['params'])
      self.assertAlmostEqual(float(row['wall_s']), (info[0]['wall_s'] + info[1]['wall_s']) / 2, places=9)
      length = int(variant[1:])
      self.assertEqual(int(row['tokens_seen']), 10 * 16 * length)
    markdown = read(os.path.join(self.workdir, 'results.md'))
    self.assertIn('sample standard deviation (ddof=1)', markdown)
    t16 = [self.results(f'T16_seed{s}')['validation']['accuracy'] for s in (0, 1)]
    self.assertIn(f'{np.mean(t16):.4g} ± {np.std(t16, ddof=1):.2g}', markdown)

  def test_plots_are_written(self):
    for name in ('learning_curves.png', 'final_accuracy.png', 'recall_vs_length.png'):
      path = os.path.join(self.workdir, 'plots', name)
      with open(path, 'rb') as f:
        self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n', name)
      self.assertGreater(os.path.getsize(path), 10_000, name)
    self.assertIn('![recall_vs_length.png](plots/recall_vs_length.png)', read(os.path.join(self.workdir, 'results.md')))

  def test_interrupted_sweep_completes_on_rerun(self):
    self.assertTrue(self.interrupted)
    self.assertEqual(self.after_interrupt, dict.fromkeys(RUNS, False) | {'T16_seed0': True})
    lines = [json.loads(line) for line in read(os.path.join(self.run_dir('T32_seed0'), 'metrics.jsonl')).split('\n')
             if line]
    # Resumed from its step-5 checkpoint, not restarted: each step was trained and logged once.
    self.assertEqual([l['step'] for l in lines if l['split'] == 'train'], [5, 10])
    info = json.loads(read(os.path.join(self.run_dir('T32_seed0'), sweep_report.INFO_FILE)))
    self.assertEqual(info['attempts'], 2)

  def test_failed_variant_is_reported_and_the_others_finish(self):
    self.assertEqual(list(self.failures), ['broken'])
    self.assertIn('num_heads=3', self.failures['broken'])
    self.assertIn('Traceback', read(os.path.join(self.run_dir('broken'), sweep_report.ERROR_FILE)))
    self.assertEqual(self.table()['broken']['failed'], '1')
    markdown = read(os.path.join(self.workdir, 'results.md'))
    self.assertIn('Failed runs (1', markdown)
    self.assertIn('`broken`: ValueError: config.model.d_model=32 must divide by config.model.num_heads=3', markdown)

  def test_rerun_trains_nothing(self):
    # Finished runs are not trained again; the failed one is tried again and fails again (its config is refused
    # before any training starts).
    self.assertEqual(self.trained_on_rerun, [])
    self.assertEqual(list(self.failures_on_rerun), ['broken'])
    for run, text in self.metrics_after_completion.items():
      self.assertEqual(read(os.path.join(self.run_dir(run), 'metrics.jsonl')), text, run)

  def test_dry_run_counts_the_parameters_the_runs_trained(self):
    lines = sweep_runner.dry_run(self.sweep, self.workdir, only='seed0')
    self.assertEqual([l['run'] for l in lines], ['T16_seed0', 'T32_seed0'])
    for line in lines:
      info = json.loads(read(os.path.join(self.run_dir(line['run']), sweep_report.INFO_FILE)))
      self.assertEqual(line['params'], info['params'])
      self.assertEqual(line['state'], f'{2 * 1 * 32} per token')


class SweepFilesTest(chex.TestCase):

  def test_grid_names_seeds_and_overrides(self):
    variants = sweeps.grid('x.py', {'a': {'model.d_model': 8}, 'b': {'model.d_model': 16}},
                           {'L1': {'model.num_layers': 1}}, seeds=(3, 4), overrides={'seed': 0, 'model.d_model': 4})
    self.assertEqual([v.run_name for v in variants], ['a-L1_seed3', 'b-L1_seed3', 'a-L1_seed4', 'b-L1_seed4'])
    self.assertEqual(dict(variants[1].overrides), {'seed': 0, 'model.d_model': 16, 'model.num_layers': 1})
    self.assertEqual(variants[1].labels, ('b', 'L1'))
    with self.assertRaisesRegex(ValueError, r"both set \['model.d_model'\]"):
      sweeps.grid('x.py', {'a': {'model.d_model': 8}}, {'b': {'model.d_model': 16}})
    with self.assertRaisesRegex(ValueError, 'names a directory'):
      sweeps.Variant('a/b', 'x.py')

  def test_init_from_must_name_an_earlier_run_and_becomes_its_directory(self):
    tmp = self.create_tempdir()
    path = tmp.create_file('s.py', content=(
        'from lm_jax.sweeps import Variant\n'
        'def get_sweep(variant=""):\n'
        f'  runs = [Variant("mlm", {RECALL!r}), Variant("ft", {RECALL!r}, init_from="mlm", seed=1)]\n'
        '  return runs[::-1] if variant == "reversed" else runs\n')).full_path
    mlm, finetune = sweeps.load(path)
    self.assertEqual(sweeps.resolve(finetune, '/sweeps/x').init_from, '/sweeps/x/mlm')
    self.assertEqual(sweeps.resolve(finetune, '/sweeps/x').seed, 1)
    self.assertEqual(sweeps.resolve(mlm, '/sweeps/x', ['train.num_steps=7', 'data.download=false']).train.num_steps, 7)
    with self.assertRaisesRegex(ValueError, "init_from='mlm', which is not the run name of an earlier variant"):
      sweeps.load(path + ':reversed')
    with self.assertRaisesRegex(ValueError, "--override train.num_steps='many' is not a int"):
      sweeps.resolve(mlm, '/x', ['train.num_steps=many'])

  def test_state_size_is_the_decode_cache(self):
    """The formula against the 'cache' collection the models allocate for decoding (per token / per sequence)."""
    config = configs.load(RECALL)
    batch, length = 3, 8
    for name, width in (('transformer', 16), ('lstm', 12), ('gru', 10), ('rnn', 14)):
      model_config = configs.override(config, {'model.name': name, 'model.d_model': width, 'model.num_layers': 2,
                                               'model.positions': 'none' if name != 'transformer' else 'learned'})
      model = models.get_model(model_config.model, vocab_size=32, max_len=length)
      ids = jnp.ones((batch, length), jnp.int32)
      params = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)['params']
      _, cache = jax.eval_shape(lambda p, i, m=model: m.apply({'params': p}, i, decode=True, mutable=['cache']),
                                params, ids)
      floats = sum(leaf.size for leaf in jax.tree.leaves(cache) if jnp.issubdtype(leaf.dtype, jnp.floating))
      expected, unit = models.state_size(model_config.model)
      self.assertEqual(floats / (batch * length if unit == 'per token' else batch), expected, name)

  def test_recall_mixers_parameters_agree_within_ten_percent(self):
    for spec in ('experiments/ablations/recall_mixers.py', 'experiments/ablations/recall_mixers.py:full'):
      lines = sweep_runner.dry_run(os.path.join(REPO, spec), '/tmp/unused', only='seed12345')
      self.assertLen(lines, 12)
      for length in ('T64', 'T128', 'T256'):
        params = {l['run'].split('-')[0]: l['params'] for l in lines if f'-{length}_' in l['run']}
        self.assertEqual(set(params), {'transformer', 'lstm', 'gru', 'rnn'})
        self.assertLess(max(params.values()) / min(params.values()), 1.1, (spec, length, params))
    self.assertLen(sweeps.load(os.path.join(REPO, 'experiments/ablations/recall_mixers.py')), 36)

  def test_shipped_sweeps_list_their_runs(self):
    expected = {
        'attention_bias.py': ['none', 'relative', 'alibi'],
        'imdb_mixer.py': ['transformer', 'lstm'],
        'imdb_heads.py': ['heads1', 'heads2', 'heads4', 'heads8'],
        'imdb_depth.py': ['layers1', 'layers2', 'layers4'],
        'imdb_pretraining.py': ['mlm', 'scratch', 'pretrained'],
    }
    for name, variants in expected.items():
      lines = sweep_runner.dry_run(os.path.join(REPO, 'experiments/ablations', name), '/tmp/unused')
      self.assertEqual(list(dict.fromkeys(l['run'].split('_seed')[0] for l in lines)), variants, name)
      self.assertTrue(all(l['params'] > 0 for l in lines), name)
    heads = sweep_runner.dry_run(os.path.join(REPO, 'experiments/ablations/imdb_heads.py'), '/tmp/unused',
                                 only='seed1$')
    self.assertLen({l['params'] for l in heads}, 1)   # heads split d_model: same parameters


class SeriesTest(chex.TestCase):

  def test_length_axis_is_dropped_from_line_names(self):
    def group(labels, name, length):
      config = ml_collections.ConfigDict({'data': {'name': 'mqar', 'max_len': length}, 'model': {'name': name}})
      variant = sweeps.Variant('-'.join(labels) or f'{name}{length}', 'x.py', labels=labels)
      return sweep_report.Group(variant.name, (sweep_report.RunResult(variant, config, {'step': 1}, {}, None, []),))
    groups = [group((m, f'T{t}'), m, t) for m in ('transformer', 'lstm') for t in (64, 128)]
    self.assertEqual(sweep_plots.series_names(groups), ['transformer', 'transformer', 'lstm', 'lstm'])
    unlabelled = [group((), 'gru', 64), group((), 'gru', 128)]
    self.assertEqual(sweep_plots.series_names(unlabelled), ['gru', 'gru'])


@pytest.mark.slow   # prepares IMDB and trains two sweeps
class ImdbSweepsTest(chex.TestCase):
  """The IMDB sweeps on the generated imdb_reviews the other tests prepare offline, shrunk by --override."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    from test_data_imdb import prepare_offline  # pylint: disable=g-import-not-at-top
    cls.tmp = tempfile.TemporaryDirectory()
    data_dir = os.path.join(cls.tmp.name, 'tfds')
    prepare_offline(cls.tmp.name, fixtures.data('imdb_reviews', tfds_data_dir=data_dir, vocab_size=300),
                    os.path.join(cls.tmp.name, 'tok'))
    cls.overrides = [f'data.tfds_data_dir={data_dir}', 'data.download=false', 'data.vocab_size=300',
                     'data.max_len=64', 'model.num_layers=1', 'model.d_model=32', 'model.num_heads=2',
                     'model.mlp_dim=64', 'train.num_steps=4', 'train.log_every_steps=2', 'train.eval_every_steps=2',
                     'train.checkpoint_every_steps=4', 'train.eval_batch_size=16']

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_pretraining_sweep_starts_the_classifier_from_the_mlm_run(self):
    workdir = os.path.join(self.tmp.name, 'pretraining')
    failures = sweep_runner.run_sweep(os.path.join(REPO, 'experiments/ablations/imdb_pretraining.py:local'),
                                      workdir, only='^mlm$|seed12345$', overrides=self.overrides)
    self.assertEqual(failures, {})
    runs = {run: json.loads(read(os.path.join(workdir, run, 'config.json')))
            for run in ('mlm', 'scratch_seed12345', 'pretrained_seed12345')}
    self.assertEqual(runs['mlm']['model']['task'], 'mlm')
    self.assertEqual(runs['pretrained_seed12345']['init_from'], os.path.join(workdir, 'mlm'))
    self.assertEqual(runs['scratch_seed12345']['init_from'], '')
    # The pretrained classifier reads ids with the MLM run's tokenizer.
    model_bytes = lambda run: open(os.path.join(workdir, run, 'tokenizer', 'spm.model'), 'rb').read()
    self.assertEqual(model_bytes('pretrained_seed12345'), model_bytes('mlm'))
    with open(os.path.join(workdir, 'results.csv'), newline='', encoding='utf-8') as f:
      table = {row['variant']: row for row in csv.DictReader(f)}
    self.assertEqual(list(table), ['mlm', 'scratch', 'pretrained'])
    for variant in ('scratch', 'pretrained'):
      self.assertBetween(float(table[variant]['test/accuracy_mean']), 0.0, 1.0)
    # One final-metric figure per task: the MLM's loss, the classifiers' accuracy.
    self.assertCountEqual(os.listdir(os.path.join(workdir, 'plots')),
                          ['learning_curves.png', 'final_loss_mlm.png', 'final_accuracy_classification.png'])

  def test_mixer_sweep_runs_both_models(self):
    workdir = os.path.join(self.tmp.name, 'mixer')
    failures = sweep_runner.run_sweep(os.path.join(REPO, 'experiments/ablations/imdb_mixer.py:local'), workdir,
                                      only='seed12345$', overrides=self.overrides)
    self.assertEqual(failures, {})
    for run, name in (('transformer_seed12345', 'transformer'), ('lstm_seed12345', 'lstm')):
      self.assertEqual(json.loads(read(os.path.join(workdir, run, 'config.json')))['model']['name'], name)
      self.assertEqual(json.loads(read(os.path.join(workdir, run, 'results.json')))['step'], 4)
