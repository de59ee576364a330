"""Fine-tune the Wikipedia-MLM-pretrained encoder on IMDB: the seed's BERT flow (lr 2e-5, as in the seed).

  python -m lm_jax.main --config experiments/wikipedia_mlm.py --workdir runs/wikipedia_mlm
  python -m lm_jax.main --config experiments/imdb_finetune.py --workdir runs/imdb_finetune

init_from loads every parameter of the pretraining run except the task head (init_from_reinit='head'), and the run
reuses that run's tokenizer, so token ids mean the same thing. The encoder shape must match wikipedia_mlm.py.
"""

from experiments import imdb
from experiments import wikipedia_mlm


def get_config(variant: str = ''):
  c = imdb.get_config()
  pretrained = wikipedia_mlm.get_config(variant)
  c.model = pretrained.model
  c.model.task = 'classification'
  c.data.max_len = pretrained.data.max_len
  c.data.vocab_size = pretrained.data.vocab_size
  c.init_from = 'runs/wikipedia_mlm_local' if variant == 'local' else 'runs/wikipedia_mlm'
  c.init_from_reinit = 'head'
  c.optim.learning_rate = 2e-5
  if variant == 'local':
    c.data.max_documents = 4000
    c.optim.warmup_steps = 100
    c.train.num_epochs = 1
    c.train.eval_every_steps = 100
    c.train.checkpoint_every_steps = 100
  return c
