"""A ~1B-parameter Llama-style decoder on English Wikipedia: one 80 GB GPU, or 8 devices with parameters sharded.

  python -m lm_jax.tools.plan --config experiments/decoder_1b.py --memory_gb 80               # one GPU
  python -m lm_jax.tools.plan --config experiments/decoder_1b.py:fsdp --devices 8 --memory_gb 80   # 8 devices, FSDP
  python -m lm_jax.main --config experiments/decoder_1b.py:fsdp --workdir runs/decoder_1b

Llama 3.2 1B's trunk (Touvron et al., 2023; Meta, 2024): 16 layers, d_model 2048, 32 heads with 8 key/value heads
(GQA), SwiGLU MLP 8192, RMSNorm, rotary positions (θ 500000), no biases, tied embeddings; a 32,000-piece
sentencepiece vocabulary: 1.04B parameters. 2048-token rows, bfloat16 compute, float32 params and AdamW (16 GB of
parameters and moments). Layers scanned and fully rematerialized (only each layer's input is kept for the backward
pass). `:fsdp` shards parameters and optimizer state over every device (mesh.fsdp = -1) and splits the batch over
them as well.
"""

from experiments import wikipedia_lm
from lm_jax import configs


def get_config(variant: str = ''):
  arg = configs.parse_variant(variant, fsdp=False)
  c = wikipedia_lm.get_config()
  c.data.max_len = 2048
  c.data.vocab_size = 32000
  c.model.num_layers = 16
  c.model.d_model = 2048
  c.model.num_heads = 32
  c.model.num_kv_heads = 8
  c.model.mlp = 'swiglu'
  c.model.mlp_dim = 8192
  c.model.norm = 'rmsnorm'
  c.model.positions = 'rope'
  c.model.rope_theta = 500000.0
  c.model.use_bias = False
  c.model.dropout = 0.0
  c.model.dtype = 'bfloat16'
  c.model.scan_layers = True
  c.model.remat = 'full'
  c.optim.learning_rate = 3e-4
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.1
  c.optim.warmup_steps = 2000
  c.optim.schedule = 'cosine'
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.num_steps = 100_000
  c.train.eval_every_steps = 2000
  c.train.checkpoint_every_steps = 1000
  c.train.log_every_steps = 20
  if arg.fsdp:
    c.mesh.data = 1
    c.mesh.fsdp = -1
  return c
