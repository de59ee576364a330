"""A Llama-style decoder on multi-query associative recall: recall.py's task and recipe, today's layers.

  python -m lm_jax.main --config experiments/llama.py --workdir runs/llama
  python -m lm_jax.main --config experiments/llama.py:local --workdir runs/llama_local   # small, for 2 CPU cores

What differs from recall.py's decoder is what Llama (Touvron et al., 2023) changed in GPT's: rotary positions in
place of a position bias, grouped-query attention (2 key/value heads for 4 query heads), a SwiGLU MLP (its width
2/3 of a GELU MLP's, so the parameters match), RMSNorm, no biases, an untied output head. The smeared keys stay:
recall needs them to learn in a 2-layer model (recall.py).
"""

from experiments import recall
from lm_jax import configs


def get_config(variant: str = ''):
  arg = configs.parse_variant(variant, local=False)
  c = recall.get_config()
  c.model.positions = 'rope'
  c.model.attention_bias = 'none'
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp = 'swiglu'
  c.model.mlp_dim = 2 * recall.get_config().model.mlp_dim // 3
  c.model.norm = 'rmsnorm'
  c.model.use_bias = False
  c.model.tie_embeddings = False
  if arg.local:
    c.data.max_len = 32
    c.data.mqar.num_pairs = 4
    c.data.mqar.num_queries = 4
    c.data.mqar.num_eval = 200
    c.model.d_model = 64
    c.model.mlp_dim = 128
    c.train.batch_size = 16
    c.train.eval_batch_size = 100
    c.train.num_steps = 200
    c.train.eval_every_steps = 50
    c.train.checkpoint_every_steps = 100
    c.train.log_every_steps = 10
  return c
