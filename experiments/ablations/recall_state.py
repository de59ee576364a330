r"""MQAR recall against state size (Zoology's figure 2): seven sequence mixers, each at three widths and two lengths.

  python -m lm_jax.ablate --sweep experiments/ablations/recall_state.py --workdir runs/ablations/recall_state
  python -m lm_jax.ablate --sweep experiments/ablations/recall_state.py --workdir runs/ablations/recall_state \
      --dry_run   # parameters and state sizes, no training
  python -m lm_jax.ablate --sweep experiments/ablations/recall_state.py:full \
      --workdir runs/ablations/recall_state_full   # Zoology's sizes, for a GPU

The recipe (data, optimizer, smeared keys) is experiments/recall.py's. Each model runs at d_model 16, 32 and 64
(MLP 2·d_model where the model has one) on lengths 64 and 128 with 4 and 8 key-value pairs, every key queried
(Zoology's pairs per length); plots/recall_vs_state.png draws accuracy against the state each run holds after the
sequence (lm_jax.sweeps.plots.held_state), one panel per length. 7 models x 3 widths x 2 lengths x 3 seeds = 126
runs of 800 steps of 2048 tokens, sized for about an hour on 2 CPU cores (docs/ablations.md: the measured time).

  transformer        2 layers, 2 heads, relative-position bias and smeared keys (recall.py's: without them a 2-layer
                     decoder must first grow a previous-token head); its state is the KV cache of all T tokens
  sliding_window     the same with attention_window 32, shorter than every sequence: the cache of 32 tokens
  linear_attention   2 layers of elu+1 linear attention (Katharopoulos et al.) with an MLP; no convolution and no
                     positions, so nothing gives a value its key (Zoology's Based adds a short convolution for this)
  mamba              2 Mamba layers (state_dim 16, E = 2·d_model, no MLP)
  rg_lru             Hawk: 2 RG-LRU blocks with an MLP
  griffin            3 blocks, recurrent, recurrent, then multi-query local attention over 32 keys (griffin needs 3
                     layers for one attention block); smeared keys off: the recurrent blocks' convolution has already
                     given each token its predecessor
  lstm               2 layers

The short causal convolution (width 4) of mamba, rg_lru and griffin plays the part of smeared keys: each value
position sees the key before it. Sizes are set by the budget: on 2 CPU cores Mamba's scan over [batch, T, 2·d, 16]
costs 5-10x the transformer per token, and at length 256 (16 pairs) the transformer had not learned the task after
600 steps of this size (d_model 16 and 32: 5% and 7%), so a longer length would only measure under-training.

`:full` uses Zoology's figure 2 sizes for a GPU: vocabulary 8192, d_model 64-512, lengths 64-512 with 4-64 pairs,
100k training examples, Zoology's batches, 64 epochs (recall_mixers.py:full's data settings).
"""

from lm_jax import configs
from lm_jax import sweeps

SEEDS = (12345, 1, 2)
LENGTHS = ((64, 4), (128, 8))   # (sequence length, key-value pairs = queries), Zoology's pairs per length
LENGTHS_FULL = ((64, 4), (128, 8), (256, 16), (512, 64))
WIDTHS = (16, 32, 64)
WIDTHS_FULL = (64, 128, 256, 512)
WINDOW = 32                     # sliding_window's and griffin's attention window: shorter than every sequence
STEPS = 800
TOKENS = 2048                   # per training batch, at every length


def mixers() -> dict[str, dict]:
  attention = {'model.name': 'transformer', 'model.attention_bias': 'relative', 'model.smeared_keys': True}
  convolved = {'model.smeared_keys': False}
  return {
      'transformer': attention,
      'sliding_window': {**attention, 'model.attention_window': WINDOW},
      'linear_attention': {'model.name': 'linear_attention', **convolved},
      'mamba': {'model.name': 'mamba', **convolved},
      'rg_lru': {'model.name': 'rg_lru', **convolved},
      'griffin': {'model.name': 'griffin', 'model.num_layers': 3, 'model.num_kv_heads': 1,
                  'model.attention_window': WINDOW, **convolved},
      'lstm': {'model.name': 'lstm', **convolved},
  }


def widths(values) -> dict[str, dict]:
  return {f'd{w}': {'model.d_model': w, 'model.mlp_dim': 2 * w} for w in values}


def lengths(full: bool) -> dict[str, dict]:
  """Local: 2048 tokens per batch (and 8192 per evaluation batch). Full: Zoology's batches and 64 epochs."""
  out = {}
  for length, pairs in LENGTHS_FULL if full else LENGTHS:
    batch = {64: 512, 128: 512, 256: 256, 512: 128}[length] if full else TOKENS // length
    out[f'T{length}'] = {'data.max_len': length, 'data.mqar.num_pairs': pairs, 'data.mqar.num_queries': pairs,
                         'train.batch_size': batch, 'train.eval_batch_size': batch if full else 4 * batch}
    if full:
      out[f'T{length}']['train.num_steps'] = 64 * 100_000 // batch
  return out


def get_sweep(variant: str = ''):
  arg = configs.parse_variant(variant, full=False)
  shared = {'model.num_layers': 2, 'model.num_heads': 2, 'model.positions': 'none'}
  if arg.full:
    shared.update({'data.vocab_size': 8192, 'data.mqar.num_train': 100_000, 'data.mqar.num_eval': 3000,
                   'train.eval_every_steps': 1000, 'train.checkpoint_every_steps': 1000,
                   'train.log_every_steps': 100})
    return sweeps.grid('experiments/recall.py', mixers(), widths(WIDTHS_FULL), lengths(full=True), seeds=SEEDS,
                       overrides=shared)
  shared.update({'train.num_steps': STEPS, 'optim.warmup_steps': 50, 'data.mqar.num_eval': 500,
                 'train.eval_every_steps': STEPS // 4, 'train.checkpoint_every_steps': STEPS // 4})
  return sweeps.grid('experiments/recall.py', mixers(), widths(WIDTHS), lengths(full=False), seeds=SEEDS,
                     overrides=shared)
