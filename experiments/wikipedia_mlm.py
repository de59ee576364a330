"""BERT-style masked-LM pretraining of the transformer encoder on English Wikipedia (packed 256-token sequences).

  python -m lm_jax.main --config experiments/wikipedia_mlm.py --workdir runs/wikipedia_mlm
  python -m lm_jax.main --config experiments/wikipedia_mlm.py:local --workdir runs/wikipedia_mlm_local

Needs a prepared TFDS `wikipedia` in data.tfds_data_dir (building it needs apache-beam and the dumps). Fine-tune the
result on IMDB with experiments/imdb_finetune.py. lr 1e-4 and warmup 10k follow BERT's pretraining recipe.
"""

from experiments import base
from lm_jax import configs


def get_config(variant: str = ''):
  arg = configs.parse_variant(variant, local=False)
  c = base.get_config()
  c.data.name = 'wikipedia'
  c.data.tfds_name = 'wikipedia/20230601.en'
  c.data.max_len = 256
  c.data.vocab_size = 30000
  c.data.validation_fraction = 0.01
  c.model.task = 'mlm'
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 10000
  c.train.batch_size = 128
  c.train.eval_batch_size = 128
  c.train.num_steps = 100000
  c.train.eval_every_steps = 5000
  c.train.checkpoint_every_steps = 5000
  c.train.max_eval_batches = 50
  c.train.best_metric = 'loss'
  c.train.best_mode = 'min'
  if arg.local:
    c.data.max_documents = 2000
    c.data.vocab_size = 8000
    c.optim.warmup_steps = 100
    c.train.batch_size = 16
    c.train.num_steps = 500
    c.train.eval_every_steps = 250
    c.train.checkpoint_every_steps = 250
  return c
