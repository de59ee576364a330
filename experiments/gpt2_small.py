"""GPT-2 small (124M parameters; Radford et al., 2019) on English Wikipedia, sized for one 80 GB GPU.

  python -m lm_jax.tools.plan --config experiments/gpt2_small.py --memory_gb 80     # memory per device, no step run
  python -m lm_jax.main --config experiments/gpt2_small.py --workdir runs/gpt2_small

GPT-2's shapes: 12 layers, d_model 768, 12 heads, MLP 3072, 1024 learned positions, tied embeddings, GELU (tanh),
pre-LN; a 50,304-piece sentencepiece vocabulary (GPT-2's 50,257 rounded up to a multiple of 128). bfloat16 compute,
float32 params and AdamW (lr 6e-4, warmup 2000, cosine, weight decay 0.1, β2 0.95, nanoGPT's recipe), batch 64 × 1024
tokens. Chunked attention, layers scanned (compile time flat in depth) and fully rematerialized: dense attention
keeps each layer's [64, 12, 1024, 1024] probabilities for the backward pass and does not fit 80 GB
(`python -m lm_jax.tools.plan` prints both; docs/scale.md has the numbers). On a GPU,
--config.model.attention=cudnn runs the fused kernel instead.
"""

from experiments import wikipedia_lm


def get_config():
  c = wikipedia_lm.get_config()
  c.data.max_len = 1024
  c.data.vocab_size = 50304
  c.model.num_layers = 12
  c.model.d_model = 768
  c.model.num_heads = 12
  c.model.mlp_dim = 3072
  c.model.hidden_act = 'gelu_new'
  c.model.dropout = 0.0
  c.model.dtype = 'bfloat16'
  c.model.attention = 'chunked'     # online softmax: no [T, T] score matrix per head (cudnn: the fused GPU kernel)
  c.model.scan_layers = True
  c.model.remat = 'full'
  c.optim.learning_rate = 6e-4
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.1
  c.optim.warmup_steps = 2000
  c.optim.schedule = 'cosine'
  c.train.batch_size = 64
  c.train.eval_batch_size = 64
  c.train.num_steps = 100_000
  c.train.eval_every_steps = 2000
  c.train.checkpoint_every_steps = 2000
  c.train.log_every_steps = 50
  return c
