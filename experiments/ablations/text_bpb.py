r"""Bits per byte on real English text: GPT- and Llama-style decoders, Mamba, Hawk (rg_lru) and an LSTM.

  python -m lm_jax.tools.offline_corpora --out runs/offline      # needs: apt-get install fortunes dict-gcide
  python -m lm_jax.ablate --sweep experiments/ablations/text_bpb.py --workdir runs/ablations/text_bpb --dry_run
  python -m lm_jax.ablate --sweep experiments/ablations/text_bpb.py --workdir runs/ablations/text_bpb

The text is Debian's fortune-cookie quotes (runs/offline/pretrain/fortunes.txt, 13,931 quotes, 2.3 MB), read as
bytes (the byte tokenizer: nothing learned outside the model, and the byte n-gram baseline of lm_jax/baseline.py
counts exactly the bytes the models predict); 5% of the quotes, carved with a fixed seed, are the validation text.
Every model sees the same 500k bytes (250 steps of 8 rows of 256 bytes, less than a quarter of the training text)
with one recipe (AdamW, lr 2e-3, 25 warmup steps, linear decay, weight decay 0.1, no dropout), and has 0.79-0.86M
parameters (within 9% of the transformer's; --dry_run lists them):

  transformer  GPT-style: 4 layers, d_model 128, 4 heads, GELU MLP 512, learned positions, LayerNorm, tied head
  llama        experiments/llama.py's changes to it: RoPE, 2 key/value heads, SwiGLU MLP 341, RMSNorm, no biases,
               an untied head (not its smeared keys, which are for recall)
  mamba        8 layers (two per transformer layer, as Gu & Dao match them), d_model 120, state 16
  rg_lru       Hawk: 4 layers, d_model 128, GELU MLP 512
  lstm         2 layers, 224 units

The size is set by Mamba: on XLA:CPU its step costs about ten times the others' CPU time per token. The ten runs
took 2,860 CPU seconds (about 24 minutes of 2 cores), three quarters of it Mamba's; the results and the byte n-gram
beside them: docs/models.md#bits-per-byte-on-english-text.
"""

from lm_jax import sweeps

SEEDS = (0, 1)
TEXT = 'runs/offline/pretrain/fortunes.txt'   # --override data.paths=... for another place or corpus

_DECODER = {'model.num_layers': 4, 'model.d_model': 128, 'model.num_heads': 4, 'model.mlp_dim': 512}
MODELS = {
    'transformer': {'model.name': 'transformer', **_DECODER},
    'llama': {'model.name': 'transformer', **_DECODER, 'model.positions': 'rope', 'model.num_kv_heads': 2,
              'model.mlp': 'swiglu', 'model.mlp_dim': 2 * 512 // 3, 'model.norm': 'rmsnorm',
              'model.use_bias': False, 'model.tie_embeddings': False},
    'mamba': {'model.name': 'mamba', 'model.num_layers': 8, 'model.d_model': 120},
    'rg_lru': {'model.name': 'rg_lru', **_DECODER},
    'lstm': {'model.name': 'lstm', 'model.num_layers': 2, 'model.d_model': 224},
}
RECIPE = {
    'data.name': 'text_files', 'data.paths': TEXT, 'data.tokenizer': 'bytes', 'data.max_len': 256,
    'data.validation_fraction': 0.05, 'model.task': 'lm', 'model.dropout': 0.0,
    'optim.learning_rate': 2e-3, 'optim.warmup_steps': 25, 'optim.weight_decay': 0.1,
    'train.batch_size': 8, 'train.eval_batch_size': 32, 'train.num_steps': 250, 'train.eval_every_steps': 250,
    'train.checkpoint_every_steps': 250, 'train.log_every_steps': 25,
    'train.best_metric': 'loss', 'train.best_mode': 'min',
}


def get_sweep(variant: str = ''):
  del variant
  return sweeps.grid('experiments/base.py', MODELS, seeds=SEEDS, overrides=RECIPE)
