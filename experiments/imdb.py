"""IMDB sentiment: a BERT-style transformer encoder classifier trained from scratch.

  python -m lm_jax.main --config experiments/imdb.py --workdir runs/imdb
  python -m lm_jax.main --config experiments/imdb.py:local --workdir runs/imdb_local   # small, for 2 CPU cores

Optimizer and schedule follow the original recipe (AdamW, eps 1e-8, weight decay 0.01, 500 warmup steps, 3 epochs,
batch 16, eval batch 64). Its lr 2e-5 is for fine-tuning a pretrained BERT (see imdb_bert.py); an encoder trained from
scratch barely moves at 2e-5 in 3 epochs, so it gets 3e-4, the usual peak for a small pre-LN transformer.
"""

from experiments import base
from lm_jax import configs


def get_config(variant: str = ''):
  arg = configs.parse_variant(variant, local=False)
  c = base.get_config()
  c.data.name = 'imdb_reviews'
  c.data.max_len = 256
  c.model.name = 'transformer'
  c.model.task = 'classification'
  c.model.num_classes = 2             # negative, positive
  c.optim.learning_rate = 3e-4
  if arg.local:
    c.data.max_len = 128
    c.data.max_documents = 4000
    c.data.vocab_size = 4000
    c.model.num_layers = 2
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.mlp_dim = 512
    c.optim.warmup_steps = 100
    c.train.num_epochs = 1
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100
  return c
