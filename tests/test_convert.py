"""Hugging Face BERT → lm_jax (lm_jax.interop.hf_bert, lm_jax.tools.convert): random-weight BERTs built by `transformers` and
saved with save_pretrained convert, and lm_jax's logits match HF PyTorch's in float32 (classifier, MLM, trunk and
pooler); a converted BERT fine-tunes on the offline IMDB through experiments/imdb_bert.py and `lm_jax.predict`
labels texts with it. Needs torch and transformers: `pip install -e '.[test,interop]'`."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason="the BERT comparison needs torch: pip install -e '.[interop]'")
transformers = pytest.importorskip('transformers',
                                   reason="the BERT comparison needs transformers: pip install -e '.[interop]'")

import lm_jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from lm_jax import checkpoint  # pylint: disable=wrong-import-position
from lm_jax import configs  # pylint: disable=wrong-import-position
from lm_jax.interop import hf_bert  # pylint: disable=wrong-import-position
from lm_jax import models  # pylint: disable=wrong-import-position
from lm_jax import train  # pylint: disable=wrong-import-position
import fixtures  # pylint: disable=wrong-import-position
from test_data_imdb import prepare_offline  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The generated IMDB reviews' words (test_data_imdb.py), so the fine-tuning data is not all [UNK].
WORDS = ['good', 'bad', 'film', 'plot', 'acting', 'great', 'awful', 'scene', 'story', 'the', 'a', 'train', 'test',
         'neg', 'pos'] + [str(d) for d in range(10)] + [f'##{d}' for d in range(10)]
VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + WORDS + [f'w{i}' for i in range(20)]
SHAPES = {   # at least three shapes: depth, width, heads, activations, token types, LayerNorm epsilon
    'small': dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=40, hidden_act='gelu'),
    'three_heads': dict(num_hidden_layers=2, hidden_size=24, num_attention_heads=3, intermediate_size=40,
                        max_position_embeddings=64, type_vocab_size=3, hidden_act='gelu_new'),
    'deeper': dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                   max_position_embeddings=48, hidden_act='gelu_pytorch_tanh', layer_norm_eps=1e-5),
}


def save_random_bert(directory, model_class, seed=0, num_labels=3, **shape):
  """A `model_class` with random weights (no zero biases or unit LayerNorm scales), saved as save_pretrained does,
  with a vocab.txt beside it. Returns the model in eval mode."""
  config = transformers.BertConfig(vocab_size=len(VOCAB), num_labels=num_labels, **shape)
  torch.manual_seed(seed)
  model = model_class(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      param.copy_(torch.randn_like(param) * 0.2 + (1.0 if name.endswith('LayerNorm.weight') else 0.0))
  model.save_pretrained(directory)
  with open(os.path.join(directory, 'vocab.txt'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(VOCAB) + '\n')
  return model


def padded_batch(seed, type_vocab_size, lengths=(14, 9, 3, 1), length=14):
  """ids [CLS] + random tokens, padded with 0 after `lengths`; random token types on the real tokens."""
  rng = np.random.default_rng(seed)
  real = np.arange(length)[None] < np.asarray(lengths)[:, None]
  ids = np.where(real, rng.integers(5, len(VOCAB), (len(lengths), length)), 0)
  ids[:, 0] = VOCAB.index('[CLS]')
  types = np.where(real, rng.integers(0, type_vocab_size, ids.shape), 0)
  return ids, types, real


def hf_forward(model, ids, types, real):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(real.astype(np.int64)),
                 token_type_ids=torch.tensor(types))


@pytest.mark.slow   # builds BERTs in PyTorch and converts them (hf_bert's errors: test_predict.py, fast)
class HfBertEquivalenceTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path

  def convert(self, model_class, **shape):
    model = save_random_bert(os.path.join(self.tmp, 'hf'), model_class, **shape)
    hf_bert.convert(os.path.join(self.tmp, 'hf'), os.path.join(self.tmp, 'out'), fixtures.config())
    return model, os.path.join(self.tmp, 'out')

  @parameterized.named_parameters(
      *[(f'{name}_{task}', task, shape) for name, shape in SHAPES.items() for task in ('classification', 'mlm')])
  def test_logits_match_hugging_face(self, task, shape):
    model_class = {'classification': transformers.BertForSequenceClassification,
                   'mlm': transformers.BertForMaskedLM}[task]
    model, workdir = self.convert(model_class, **shape)
    run = lm_jax.load(workdir)
    self.assertEqual(run.task, task)
    self.assertEqual(run.config.model.pre_norm, False)
    ids, types, real = padded_batch(1, shape.get('type_vocab_size', 2))
    expected = hf_forward(model, ids, types, real).logits.numpy()
    logits = np.asarray(run.logits(ids, token_type_ids=types))
    if task == 'mlm':  # HF computes something at padding positions too; only real positions mean anything
      logits, expected = logits[real], expected[real]
    chex.assert_shape(logits, expected.shape)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    self.assertGreater(np.abs(expected).max(), 0.5)   # not a trivially small comparison
    # Without token types BERT uses type 0 everywhere: so does lm_jax.
    np.testing.assert_allclose(
        np.asarray(run.logits(ids))[real if task == 'mlm' else ...],
        hf_forward(model, ids, np.zeros_like(types), real).logits.numpy()[real if task == 'mlm' else ...],
        rtol=0, atol=1e-4)

  def test_pretraining_checkpoint_keeps_pooler_for_a_classifier(self):
    """BertForPreTraining (the hub's bert-base-uncased): MLM logits match, and its pooler reaches a classifier."""
    shape = SHAPES['three_heads']
    model, workdir = self.convert(transformers.BertForPreTraining, **shape)
    run = lm_jax.load(workdir)
    self.assertEqual((run.task, run.config.model.pooler), ('mlm', True))
    ids, types, real = padded_batch(2, 3)
    outputs = hf_forward(model, ids, types, real)
    np.testing.assert_allclose(np.asarray(run.logits(ids, token_type_ids=types))[real],
                               outputs.prediction_logits.numpy()[real], rtol=0, atol=1e-4)
    classifier = models.get_model(configs.override(run.config, {'model.task': 'classification'}).model,
                                  vocab_size=len(VOCAB), max_len=run.config.data.max_len)
    shapes = jax.eval_shape(classifier.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
    params = checkpoint.load_params(workdir, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                                    reinit='classifier_head')
    np.testing.assert_allclose(params['pooler']['kernel'], model.bert.pooler.dense.weight.detach().numpy().T)

  def test_bert_model_trunk_and_pooler_match_and_it_serves_as_init_from_only(self):
    model, workdir = self.convert(transformers.BertModel, **SHAPES['deeper'])
    with self.assertRaisesRegex(ValueError, "init_from_reinit='classifier_head'"):
      lm_jax.load(workdir)
    config = json.load(open(os.path.join(workdir, 'config.json'), encoding='utf-8'))
    module = models.get_model(ml_collections.ConfigDict(config['model']), vocab_size=len(VOCAB),
                              max_len=config['data']['max_len'])
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
    params = checkpoint.load_params(workdir, jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes),
                                    reinit='classifier_head')
    ids, types, real = padded_batch(3, 2)
    _, state = module.apply({'params': params}, ids, token_type_ids=types, mutable=['intermediates'],
                            capture_intermediates=lambda m, _: m.name in ('encoder', 'pooler'))
    outputs = hf_forward(model, ids, types, real)
    (hidden,) = state['intermediates']['encoder']['__call__']
    np.testing.assert_allclose(np.asarray(hidden)[real], outputs.last_hidden_state.numpy()[real], rtol=0, atol=1e-4)
    (pooler_in,) = state['intermediates']['pooler']['__call__']
    np.testing.assert_allclose(np.tanh(np.asarray(pooler_in)), outputs.pooler_output.numpy(), rtol=0, atol=1e-4)

  def test_converted_workdir_is_a_step_0_run(self):
    _, workdir = self.convert(transformers.BertForSequenceClassification, **SHAPES['small'])
    self.assertEqual(sorted(os.listdir(workdir)), ['checkpoints', 'config.json', 'tokenizer'])
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, 'checkpoints'))), ['0'])
    config = json.load(open(os.path.join(workdir, 'config.json'), encoding='utf-8'))
    self.assertEqual({k: config['model'][k] for k in ('task', 'num_classes', 'pre_norm', 'pooler', 'layer_norm_eps',
                                                       'type_vocab_size', 'max_position_embeddings')},
                     {'task': 'classification', 'num_classes': 3, 'pre_norm': False, 'pooler': True,
                      'layer_norm_eps': 1e-12, 'type_vocab_size': 2, 'max_position_embeddings': 40})
    self.assertEqual(config['data']['max_len'], 40)   # capped by BERT's position table
    self.assertEqual((config['data']['tokenizer'], lm_jax.load(workdir).tokenizer.kind), ('wordpiece', 'wordpiece'))
    with self.assertRaisesRegex(ValueError, 'already holds a run'):
      hf_bert.convert(os.path.join(self.tmp, 'hf'), workdir, fixtures.config())


@pytest.mark.slow   # converts, fine-tunes on IMDB, predicts through the CLI
class FineTuneAndPredictTest(chex.TestCase):
  """Done-when chain: a tiny HF BERT converts, fine-tunes offline on IMDB (experiments/imdb_bert.py), predicts."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.data_dir = os.path.join(cls.tmp.name, 'tfds')
    prepare_offline(cls.tmp.name, fixtures.data('imdb_reviews', tfds_data_dir=cls.data_dir),
                    os.path.join(cls.tmp.name, 'tok'))
    hf_dir, cls.bert = os.path.join(cls.tmp.name, 'hf'), os.path.join(cls.tmp.name, 'bert')
    save_random_bert(hf_dir, transformers.BertForPreTraining, **SHAPES['small'])
    subprocess.run([sys.executable, '-m', 'lm_jax.tools.convert', '--hf_bert', hf_dir, '--workdir', cls.bert], cwd=REPO,
                   check=True, capture_output=True, timeout=300)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_evaluate_mode_reads_a_converted_classifier(self):
    """`--mode=evaluate` on a converted BertForSequenceClassification, with imdb_bert.py's config (same model and
    data sections: the convert base config carries the same data overrides)."""
    hf_dir, workdir = os.path.join(self.tmp.name, 'hf_classifier'), os.path.join(self.tmp.name, 'bert_classifier')
    save_random_bert(hf_dir, transformers.BertForSequenceClassification, num_labels=2, **SHAPES['small'])
    data_overrides = {'data.tfds_data_dir': self.data_dir, 'data.download': False}
    hf_bert.convert(hf_dir, workdir, fixtures.config(data_overrides))
    config = configs.override(configs.load(f'experiments/imdb_bert.py:bert={workdir}'), data_overrides)
    results = train.evaluate_workdir(config, workdir)
    self.assertEqual(results['step'], 0)
    self.assertEqual(set(results), {'step', 'validation', 'test'})
    self.assertBetween(results['test']['accuracy'], 0.0, 1.0)

  def test_fine_tunes_on_imdb_then_predicts(self):
    config = configs.override(configs.load(f'experiments/imdb_bert.py:bert={self.bert},local'), {
        'data.tfds_data_dir': self.data_dir, 'data.download': False, 'data.max_len': 32, 'train.num_steps': 4,
        'train.batch_size': 8, 'train.eval_batch_size': 16, 'train.eval_every_steps': 2,
        'train.checkpoint_every_steps': 2, 'train.log_every_steps': 2, 'optim.warmup_steps': 1})
    self.assertEqual((config.optim.learning_rate, config.optim.eps, config.optim.weight_decay), (2e-5, 1e-8, 0.01))
    self.assertEqual((config.model.task, config.model.pooler, config.data.tokenizer),
                     ('classification', True, 'wordpiece'))
    workdir = os.path.join(self.tmp.name, 'imdb_bert')
    state, results = train.train_and_evaluate(config, workdir)
    self.assertEqual(int(state.step), 4)
    self.assertBetween(results['test']['accuracy'], 0.0, 1.0)
    # The encoder started from BERT's weights (and moved), the head was new.
    bert_params = lm_jax.load(self.bert).params
    start = np.asarray(bert_params['encoder']['token_embed']['embedding'])
    moved = np.abs(np.asarray(state.params['encoder']['token_embed']['embedding']) - start).max()
    self.assertBetween(moved, 1e-9, 1e-2)

    predict = subprocess.run([sys.executable, '-m', 'lm_jax.predict', '--workdir', workdir, '--text', 'a great film',
                              '--text', 'awful acting , bad plot'], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    self.assertEqual(predict.returncode, 0, predict.stderr[-3000:])
    lines = predict.stdout.strip().split('\n')
    self.assertLen(lines, 2)
    run = lm_jax.load(workdir)
    expected = run.classify(['a great film', 'awful acting , bad plot'])
    for line, label, probs, text in zip(lines, expected.labels, expected.probabilities,
                                        ['a great film', 'awful acting , bad plot']):
      printed_label, printed_probability, printed_text = line.split('\t')
      self.assertEqual((int(printed_label), printed_text), (int(label), text))
      self.assertAlmostEqual(float(printed_probability), float(probs[label]), places=4)
      self.assertGreaterEqual(float(printed_probability), 0.5)
