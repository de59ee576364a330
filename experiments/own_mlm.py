"""Masked-LM pretraining of a small encoder on your own text files: the first half of BERT's recipe.

  python -m lm_jax.main --config experiments/own_mlm.py --workdir runs/own_mlm --config.data.paths='corpus/*.txt'

data.paths: UTF-8 .txt files, documents separated by blank lines, packed into 128-token rows. Then fine-tune the
encoder on your labelled files with experiments/own_classifier.py (its docstring has the command). Measured on
real English text (GCIDE and fortunes, `python -m lm_jax.tools.offline_corpora`): docs/your_data.md.
"""

from experiments import base


def get_config():
  c = base.get_config()
  c.data.name = 'text_files'
  c.data.max_len = 128
  c.data.vocab_size = 8000
  c.data.validation_fraction = 0.01
  c.model.task = 'mlm'
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.train.batch_size = 32
  c.train.num_steps = 3000
  c.train.eval_every_steps = 500
  c.train.checkpoint_every_steps = 500
  c.train.max_eval_batches = 20
  c.train.best_metric = 'loss'
  c.train.best_mode = 'min'
  return c
