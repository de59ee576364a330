"""Fine-tune the Wikipedia-MLM-pretrained encoder on IMDB: the original recipe's BERT flow (lr 2e-5).

  python -m lm_jax.main --config experiments/wikipedia_mlm.py --workdir runs/wikipedia_mlm
  python -m lm_jax.main --config experiments/imdb_finetune.py --workdir runs/imdb_finetune

init_from loads every parameter of the pretraining run except the task head (init_from_reinit='head'), and the run
reuses that run's tokenizer, so token ids mean the same thing. The encoder and max_len come from wikipedia_mlm.py, the
data and schedule from imdb.py (both with the same variant), so neither is repeated here.
"""

from experiments import imdb
from experiments import wikipedia_mlm
from lm_jax import configs


def get_config(variant: str = ''):
  arg = configs.parse_variant(variant, local=False)
  c = imdb.get_config(variant)
  pretrained = wikipedia_mlm.get_config(variant)
  c.model = pretrained.model
  c.model.task = 'classification'
  c.data.max_len = pretrained.data.max_len
  c.data.vocab_size = pretrained.data.vocab_size
  c.init_from = 'runs/wikipedia_mlm_local' if arg.local else 'runs/wikipedia_mlm'
  c.init_from_reinit = 'head'
  c.optim.learning_rate = 2e-5
  return c
