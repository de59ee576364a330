"""Multi-query associative recall (MQAR, Zoology): can a model answer a key with the value paired to it earlier?

  python -m lm_jax.main --config experiments/recall.py --workdir runs/recall
  python -m lm_jax.main --config experiments/recall.py --workdir runs/recall_lstm --config.model.name=lstm

Synthetic and offline (see lm_jax/data/mqar.py for a worked example): the research task for transformer-vs-RNN
comparisons. Training examples are fresh (generated from (seed, index), none repeated), validation is 1000 fixed
held-out examples, and the answers after queries are hidden, as in Zoology.

Smeared keys (Olsson et al., 2022) are what make this recipe learn: each key mixes in the previous token's key, so a
query matches the value that followed its key in one layer. Without them the 2-layer decoder must first grow a
previous-token head, and it sat at loss ~ln 8 (17%: some value of the pairs) through every run of 1000-2500 steps;
see docs/ablations.md.
"""

from experiments import base
from lm_jax import configs


def get_config(variant: str = ''):
  configs.parse_variant(variant)   # no variants: this experiment is already local
  c = base.get_config()
  c.data.name = 'mqar'
  c.data.vocab_size = 128
  c.data.max_len = 64
  c.data.mqar.num_pairs = 8
  c.data.mqar.num_queries = 8
  c.data.mqar.num_eval = 1000
  c.model.task = 'lm'
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 2
  c.model.mlp_dim = 256
  c.model.attention_bias = 'relative'
  c.model.smeared_keys = True
  c.model.dropout = 0.0
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.1
  c.train.batch_size = 64
  c.train.eval_batch_size = 250
  c.train.num_steps = 1000            # 64k examples; >= 99% at the first evaluation (step 100) on seeds 12345, 1, 2
  c.train.eval_every_steps = 100
  c.train.checkpoint_every_steps = 250
  c.train.log_every_steps = 50
  return c
