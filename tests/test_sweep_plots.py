"""sweeps/plots.py's recall-vs-state plot on made-up results: the state each run holds, the lines and the panels.

No training: each run is a RunResult built from its variant's real config (sweeps.resolve) and an accuracy chosen
here, so the expected means, stds and states are known exactly.
"""

import os

import chex
import numpy as np

from lm_jax import sweeps
from lm_jax.sweeps import plots as sweep_plots
from lm_jax.sweeps import report as sweep_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECALL = os.path.join(REPO, 'experiments', 'recall.py')
SHARED = {'model.num_layers': 2, 'model.num_heads': 2, 'model.positions': 'none', 'model.smeared_keys': False}
LENGTHS = {'T64': {'data.max_len': 64, 'data.mqar.num_pairs': 4, 'data.mqar.num_queries': 4},
           'T256': {'data.max_len': 256, 'data.mqar.num_pairs': 16, 'data.mqar.num_queries': 16}}


def config(**overrides):
  return sweeps.resolve(sweeps.Variant('x', RECALL, {**SHARED, **overrides}), '/unused')


def accuracy_of(variant) -> float:
  """A made-up accuracy that differs by model, width, length and seed (so a mix-up changes some number)."""
  return (len(variant.name) % 7) / 10 + variant.overrides['model.d_model'] / 1000 + variant.seed / 100


def fake_groups(variants):
  runs = []
  for variant in variants:
    accuracy = accuracy_of(variant)
    runs.append(sweep_report.RunResult(
        variant, sweeps.resolve(variant, '/unused'), {'step': 10, 'validation': {'accuracy': accuracy, 'loss': 1.0}},
        {}, None, [{'split': 'validation', 'step': 10, 'accuracy': accuracy}]))
  return sweep_report.group_runs(runs)


class HeldStateTest(chex.TestCase):

  def test_attention_holds_the_cache_of_the_tokens_it_keeps(self):
    # 2 layers, keys and values of d_model 64: 256 floats per token.
    full = dict(SHARED, **LENGTHS['T64'], **{'model.d_model': 64})
    for length, window, expected in ((64, 0, 256 * 64), (256, 0, 256 * 256), (256, 32, 256 * 32),
                                     (64, 32, 256 * 32), (64, 128, 256 * 64)):
      held = sweep_plots.held_state(config(**{**full, 'data.max_len': length, 'model.attention_window': window}))
      self.assertEqual(held, expected, (length, window))

  def test_griffin_holds_its_window_or_the_sequence_whichever_is_shorter(self):
    # 3 layers: 2 recurrent (h and 3 convolution inputs of d_model 32 each) and 1 multi-query attention layer
    # (one key/value head of 16): 2 * 4 * 32 + 2 * 16 per token kept.
    griffin = {'model.name': 'griffin', 'model.num_layers': 3, 'model.num_kv_heads': 1, 'model.d_model': 32}
    for length, window, kept in ((64, 0, 64), (256, 0, 256), (256, 32, 32), (64, 32, 32)):
      held = sweep_plots.held_state(config(**{**griffin, **LENGTHS['T64'], 'data.max_len': length,
                                              'model.attention_window': window}))
      self.assertEqual(held, 2 * 4 * 32 + 2 * 16 * kept, (length, window))

  def test_a_recurrent_state_does_not_grow_with_the_sequence(self):
    for name, d_model, expected in (('lstm', 64, 2 * 2 * 64), ('mamba', 32, 2 * 64 * (16 + 3)),
                                    ('rg_lru', 32, 2 * 4 * 32), ('linear_attention', 64, 2 * 2 * 32 * 33)):
      for length in (64, 256):
        held = sweep_plots.held_state(config(**{'model.name': name, 'model.d_model': d_model},
                                             **{**LENGTHS['T64'], 'data.max_len': length}))
        self.assertEqual(held, expected, (name, length))


class RecallVsStateTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.models = {'transformer': {'model.name': 'transformer'},
                   'window16': {'model.name': 'transformer', 'model.attention_window': 16},
                   'lstm': {'model.name': 'lstm'}}
    self.widths = {'d32': {'model.d_model': 32}, 'd64': {'model.d_model': 64}}
    self.variants = sweeps.grid(RECALL, self.models, self.widths, LENGTHS, seeds=(1, 2), overrides=SHARED)
    self.groups = fake_groups(self.variants)

  def test_one_line_per_model_one_point_per_width_one_panel_per_length(self):
    points = sweep_plots.state_points(self.groups)
    self.assertEqual(list(points), [64, 256])
    for length, lines in points.items():
      self.assertEqual(list(lines), ['transformer', 'window16', 'lstm'])
      for name, line in lines.items():
        expected = []
        for width in (32, 64):
          accuracies = [accuracy_of(v) for v in self.variants
                        if v.labels == (name, f'd{width}', f'T{length}')]
          self.assertLen(accuracies, 2)
          tokens = {'transformer': length, 'window16': 16, 'lstm': 0}[name]
          state = 2 * 2 * width * tokens if tokens else 2 * 2 * width
          expected.append((state, np.mean(accuracies), np.std(accuracies, ddof=1)))
        np.testing.assert_allclose(np.array(line), np.array(expected), rtol=1e-12, err_msg=f'{name} T{length}')

  def test_write_all_draws_recall_vs_state_for_a_width_sweep(self):
    directory = self.create_tempdir().full_path
    paths = sweep_plots.write_all(self.groups, directory, 'fake')
    self.assertEqual([os.path.basename(p) for p in paths],
                     ['learning_curves.png', 'final_accuracy.png', 'recall_vs_state.png'])
    with open(os.path.join(directory, 'recall_vs_state.png'), 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')

  def test_a_model_axis_that_sets_each_model_its_width_is_not_a_width_axis(self):
    # As recall_mixers.py: the model axis sets d_model, and each model has one width: lines stay the models, and
    # there is no state sweep (recall_vs_length instead).
    mixers = {'transformer': {'model.name': 'transformer', 'model.d_model': 64},
              'lstm': {'model.name': 'lstm', 'model.d_model': 64}, 'gru': {'model.name': 'gru', 'model.d_model': 74}}
    groups = fake_groups(sweeps.grid(RECALL, mixers, LENGTHS, seeds=(1,), overrides=SHARED))
    self.assertEqual(sweep_plots.series_names(groups, drop_width=True),
                     ['transformer', 'transformer', 'lstm', 'lstm', 'gru', 'gru'])
    paths = sweep_plots.write_all(groups, self.create_tempdir().full_path, 'fake')
    self.assertEqual(os.path.basename(paths[-1]), 'recall_vs_length.png')


class ShippedSweepTest(chex.TestCase):

  def test_recall_state_sweep_has_every_model_at_every_width_and_length(self):
    variants = sweeps.load(os.path.join(REPO, 'experiments/ablations/recall_state.py'))
    seeds = sorted({v.seed for v in variants})
    self.assertGreaterEqual(len(seeds), 3)
    groups = fake_groups(v for v in variants if v.seed == seeds[0])
    points = sweep_plots.state_points(groups)
    self.assertGreaterEqual(len(points), 2)
    for length, lines in points.items():
      self.assertEqual(set(lines), {'transformer', 'sliding_window', 'linear_attention', 'mamba', 'rg_lru',
                                    'griffin', 'lstm'}, length)
      self.assertEqual({len(line) for line in lines.values()}, {len({v.labels[1] for v in variants})}, length)
    for group in groups:
      config = group.runs[0].config
      if config.model.attention_window:   # a window that is shorter than every sequence: a fixed state
        self.assertLess(config.model.attention_window, config.data.max_len, group.name)
      if config.model.name == 'griffin':
        self.assertGreaterEqual(config.model.num_layers, 3, 'griffin needs 3 layers for an attention block')

  def test_full_variant_resolves_with_zoology_pairs(self):
    variants = sweeps.load(os.path.join(REPO, 'experiments/ablations/recall_state.py:full'))
    pairs = {}
    for variant in variants:
      config = sweeps.resolve(variant, '/unused')   # validated: every pair count fits the vocabulary
      pairs[config.data.max_len] = config.data.mqar.num_pairs
    self.assertEqual(pairs, {64: 4, 128: 8, 256: 16, 512: 64})
