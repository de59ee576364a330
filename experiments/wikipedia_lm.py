"""GPT-style decoder language model on English Wikipedia (packed 256-token sequences, causal).

  python -m lm_jax.main --config experiments/wikipedia_lm.py --workdir runs/wikipedia_lm
  python -m lm_jax.main --config experiments/wikipedia_lm.py:local --workdir runs/wikipedia_lm_local

Reports loss, perplexity and bits per byte on the validation split. lr 3e-4 with 2k warmup and cosine decay: the
usual recipe for a small decoder.
"""

from experiments import wikipedia_mlm
from lm_jax import configs


def get_config(variant: str = ''):
  arg = configs.parse_variant(variant, local=False)
  c = wikipedia_mlm.get_config(variant)
  c.model.task = 'lm'
  c.optim.learning_rate = 3e-4
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 100 if arg.local else 2000
  return c
