"""lm_jax.load, lm_jax.predict and left-padded cached generation: a batch of prompts of different lengths continues
each as it would alone (transformer variants and an LSTM); a trained recall LM generates what an uncached greedy
reference generates, through the API and the CLI; the best checkpoint is chosen; bad workdirs and inputs get clear
errors without a traceback; `import lm_jax` stays light."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import parameterized
import chex
import fixtures
import jax
import jax.numpy as jnp
import model_helpers
import numpy as np
import pytest

import lm_jax
from lm_jax.interop import hf_bert
from lm_jax import inference
from lm_jax import models
from lm_jax import train
from lm_jax.models.generate import left_pad

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 29
MAX_LEN = 24


def predict_command(*args, stdin=None):
  return subprocess.run([sys.executable, '-m', 'lm_jax.predict', *args], cwd=REPO, capture_output=True, text=True,
                        input=stdin, timeout=300)


def lm(**overrides):
  config = fixtures.model(**{'task': 'lm', 'num_layers': 2, 'dropout': 0.0, **overrides})
  module = models.get_model(config, vocab_size=VOCAB, max_len=MAX_LEN)
  return module, model_helpers.random_params(module, scale=0.5)


class LeftPaddedGenerationTest(parameterized.TestCase):

  def test_left_pad_example(self):
    np.testing.assert_array_equal(left_pad([[5, 6, 7], [8]]), [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(left_pad([[5]], 3), [[0, 0, 5]])
    with self.assertRaisesRegex(ValueError, '0 tokens'):
      left_pad([[5], []])

  @parameterized.named_parameters(
      ('learned', dict()),
      ('sinusoidal_relative', dict(positions='sinusoidal', attention_bias='relative')),
      ('alibi_no_positions_post_ln', dict(positions='none', attention_bias='alibi', pre_norm=False)),
      ('lstm', dict(name='lstm')),
  )
  def test_batch_of_different_lengths_continues_each_prompt_as_alone(self, overrides):
    self.check_continues_each_prompt_as_alone(overrides)

  # Learned positions (as 'learned' above) in a bigger table, post-LN (as 'alibi_no_positions_post_ln'), types.
  @pytest.mark.slow
  def test_batch_of_different_lengths_continues_each_prompt_as_alone_bert_like(self):
    self.check_continues_each_prompt_as_alone(dict(pre_norm=False, type_vocab_size=2, layer_norm_eps=1e-12,
                                                   hidden_act='gelu_new', max_position_embeddings=40))

  def check_continues_each_prompt_as_alone(self, overrides):
    module, params = lm(**overrides)
    prompts = [model_helpers.random_ids(seed, (1, n), vocab=VOCAB)[0].tolist() for seed, n in enumerate((7, 2, 4, 1))]
    next_ids = jnp.asarray([5, 9, 13, 17], jnp.int32)

    @jax.jit
    def decode_logits(prompt_ids_BxP, next_B):
      """Cached decoding: the prompt's last logits, then those after feeding `next_B`."""
      prompt_logits, state = module.apply({'params': params}, prompt_ids_BxP, decode=True, mutable=['cache'])
      step_logits, _ = module.apply({'params': params, **state}, next_B[:, None], decode=True, mutable=['cache'])
      return prompt_logits[:, -1], step_logits[:, -1]

    batch = decode_logits(jnp.asarray(left_pad(prompts)), next_ids)
    for b, prompt in enumerate(prompts):
      alone = decode_logits(jnp.asarray([prompt]), next_ids[b:b + 1])
      for in_batch, by_itself in zip(batch, alone):
        np.testing.assert_allclose(in_batch[b], by_itself[0], rtol=1e-5, atol=1e-5)
    self.assertGreater(float(jnp.abs(batch[0][0] - batch[0][1]).max()), 1e-2)   # the rows do differ

  def test_generated_tokens_of_a_batch_are_those_of_each_prompt_alone(self):
    module, params = lm(attention_bias='relative')
    prompts = [model_helpers.random_ids(seed, (1, n), vocab=VOCAB)[0].tolist() for seed, n in enumerate((5, 2))]
    tokens = models.generate(module, params, left_pad(prompts), max_new_tokens=4, temperature=0)
    for row, prompt in zip(np.asarray(tokens), prompts):
      alone = models.generate(module, params, jnp.asarray([prompt]), max_new_tokens=4, temperature=0)
      np.testing.assert_array_equal(row[-4:], np.asarray(alone)[0, -4:])

  def test_right_padded_prompt_is_refused(self):
    module, params = lm()
    with self.assertRaisesRegex(ValueError, 'pad id 0 only on the left'):
      models.generate(module, params, jnp.asarray([[3, 4, 0]]), max_new_tokens=2, temperature=0)


@pytest.mark.slow   # trains a recall LM, then generates through the API and the CLI
class TrainedLmTest(chex.TestCase):
  """A tiny recall LM trained for a few steps: lm_jax.load(...).generate returns text, as the CLI prints it."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.workdir = os.path.join(cls.tmp.name, 'recall')
    config = fixtures.recall({'train.num_steps': 6, 'train.eval_every_steps': 2, 'train.checkpoint_every_steps': 2,
                              'train.log_every_steps': 2, 'train.max_to_keep': 1})
    train.train_and_evaluate(config, cls.workdir)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def greedy_reference(self, run, prompt, new):
    """Uncached greedy decoding of one prompt: rerun the whole sequence for every token (right-padded to max_len,
    which a causal model never looks at: one compiled shape)."""
    ids = run.tokenizer.encode(prompt)
    for _ in range(new):
      padded = np.zeros((1, run.config.data.max_len), np.int32)
      padded[0, :len(ids)] = ids
      ids.append(int(np.argmax(np.asarray(run.logits(padded))[0, len(ids) - 1])))
    generated = ids[len(ids) - new:]
    if run.tokenizer.eos_id in generated:
      generated = generated[:generated.index(run.tokenizer.eos_id)]
    return run.tokenizer.decode(generated)

  def test_load_generates_the_greedy_reference(self):
    run = lm_jax.load(self.workdir)
    self.assertEqual((run.task, run.tokenizer.kind), ('lm', 'symbols'))
    self.assertTrue({'config', 'tokenizer', 'model', 'params'} <= set(vars(run)))
    prompts = ['k0 v1 k2 v3 k4 v5 k0', 'k7 v2 k7', 'k3 v3 k1 v9 k5 v0 k6 v6 k1 v9 k3']
    texts = run.generate(prompts, max_new_tokens=5, temperature=0, batch_size=2)
    self.assertLen(texts, 3)
    for prompt, text in zip(prompts, texts):
      self.assertIsInstance(text, str)
      self.assertEqual(text, self.greedy_reference(run, prompt, 5))
    sampled = run.generate(prompts, max_new_tokens=5, temperature=1.0, seed=3)
    self.assertEqual(sampled, run.generate(prompts, max_new_tokens=5, temperature=1.0, seed=3))
    with self.assertRaisesRegex(ValueError, 'classify'):
      run.classify(['k0'])

  def test_cli_reads_stdin_and_prints_json(self):
    result = predict_command('--workdir', self.workdir, '--json', '--max_new_tokens', '3', '--temperature', '0',
                             stdin='k0 v1 k0\n\nk2 v2 k3 v1 k2\n')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    printed = [json.loads(line) for line in result.stdout.strip().split('\n')]
    run = lm_jax.load(self.workdir)
    expected = run.generate(['k0 v1 k0', 'k2 v2 k3 v1 k2'], max_new_tokens=3, temperature=0)
    self.assertEqual(printed, [{'prompt': p, 'continuation': c}
                               for p, c in zip(['k0 v1 k0', 'k2 v2 k3 v1 k2'], expected)])

  def test_best_step_by_default_else_the_one_asked_for(self):
    with open(os.path.join(self.workdir, 'metrics.jsonl'), encoding='utf-8') as f:
      validation = {m['step']: m['accuracy'] for m in map(json.loads, f) if m['split'] == 'validation'}
    saved = sorted(int(n) for n in os.listdir(os.path.join(self.workdir, 'checkpoints')))
    self.assertIn(6, saved)   # the latest is always kept
    best = lm_jax.load(self.workdir).step
    self.assertIn(best, saved)
    self.assertEqual(validation[best], max(validation[s] for s in saved))
    self.assertEqual(lm_jax.load(self.workdir, step=6).step, 6)
    with self.assertRaisesRegex(ValueError, r'no checkpoint of step 5; saved steps: \['):
      lm_jax.load(self.workdir, step=5)

  def test_empty_or_checkpointless_workdir_fails_cleanly(self):
    empty = os.path.join(self.tmp.name, 'empty')
    os.makedirs(empty)
    result = predict_command('--workdir', empty, '--text', 'k0')
    self.assertNotEqual(result.returncode, 0)
    self.assertIn('lm_jax.predict:', result.stderr)
    self.assertIn('has no config.json', result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    no_checkpoint = os.path.join(self.tmp.name, 'no_checkpoint')
    os.makedirs(no_checkpoint)
    for name in ('config.json', 'tokenizer'):
      os.symlink(os.path.join(self.workdir, name), os.path.join(no_checkpoint, name))
    with self.assertRaisesRegex(FileNotFoundError, 'has no checkpoint'):
      inference.load(no_checkpoint)


class ConvertErrorsTest(parameterized.TestCase):

  def test_pytorch_bin_is_refused_with_how_to_convert(self):
    hf_dir = self.create_tempdir()
    hf_dir.create_file('config.json', json.dumps({'model_type': 'bert', 'hidden_act': 'gelu'}))
    hf_dir.create_file('vocab.txt', '[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n')
    hf_dir.create_file('pytorch_model.bin', 'not read')
    with self.assertRaisesRegex(ValueError, r'pickle.*safe_serialization=True'):
      hf_bert.convert(hf_dir.full_path, os.path.join(self.create_tempdir().full_path, 'out'), fixtures.config())

  @parameterized.named_parameters(
      ('model_type', {'model_type': 'gpt2', 'hidden_act': 'gelu'}, "model_type='gpt2'"),
      ('activation', {'model_type': 'bert', 'hidden_act': 'swish'}, "hidden_act='swish'"),
      ('positions', {'model_type': 'bert', 'hidden_act': 'gelu', 'position_embedding_type': 'relative_key'},
       'relative_key'),
  )
  def test_unsupported_config_is_named(self, hf_config, message):
    hf_dir = self.create_tempdir()
    hf_dir.create_file('config.json', json.dumps(hf_config))
    with self.assertRaisesRegex(ValueError, message):
      hf_bert.convert(hf_dir.full_path, os.path.join(self.create_tempdir().full_path, 'out'), fixtures.config())


class ImportTest(chex.TestCase):

  def test_import_lm_jax_does_not_load_jax(self):
    result = subprocess.run([sys.executable, '-c', 'import sys, lm_jax; print(sorted({"jax", "flax", "tensorflow_'
                             'datasets"} & set(sys.modules)))'], cwd=REPO, capture_output=True, text=True, timeout=60)
    self.assertEqual(result.stdout.strip(), '[]', result.stderr)
