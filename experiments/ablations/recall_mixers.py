r"""Transformer vs LSTM vs GRU vs Elman RNN on multi-query associative recall, as sequences and pairs grow (Zoology).

  python -m lm_jax.ablate --sweep experiments/ablations/recall_mixers.py --workdir runs/ablations/recall_mixers
  python -m lm_jax.ablate --sweep experiments/ablations/recall_mixers.py --workdir runs/ablations/recall_mixers \
      --dry_run   # parameters and state sizes, no training
  python -m lm_jax.ablate --sweep experiments/ablations/recall_mixers.py:full \
      --workdir runs/ablations/recall_mixers_full   # Zoology's sizes, for a GPU

The recipe (data, optimizer) is experiments/recall.py's; only the model, the length and the training length differ.
Lengths 64, 128, 256 carry 4, 8, 16 key-value pairs, every key queried once, as in Zoology's figure 2. All four
models have 2 layers and about the same number of parameters (within 2%; --dry_run lists them): the transformer
d_model 64 (2 heads, MLP 128, smeared keys as in recall.py, relative-position bias and no position table, so its
size does not depend on the length), LSTM 64, GRU 74, Elman RNN 122 hidden units. 4 models x 3 lengths x 3 seeds =
36 runs, sized for at most 60 minutes on 2 CPU cores (docs/ablations.md: the measured time).

`:full` uses Zoology's data sizes for a GPU: vocabulary 8192, 100k training and 3k test examples, batch 512
(256 at length 256), 64 epochs, d_model 128 (one point of Zoology's 64..512 sweep; the RNN widths keep the
parameter counts within 1%).
"""

from lm_jax import configs
from lm_jax import sweeps

SEEDS = (12345, 1, 2)
LENGTHS = ((64, 4), (128, 8), (256, 16))   # (sequence length, key-value pairs = queries), Zoology's figure 2
WIDTHS = {'transformer': 64, 'lstm': 64, 'gru': 74, 'rnn': 122}
WIDTHS_FULL = {'transformer': 128, 'lstm': 128, 'gru': 134, 'rnn': 150}


def mixers(widths: dict[str, int]) -> dict[str, dict]:
  transformer = {'model.num_heads': 2, 'model.mlp_dim': 2 * widths['transformer'], 'model.attention_bias': 'relative',
                 'model.smeared_keys': True}
  return {name: {'model.name': name, 'model.d_model': width, 'model.num_layers': 2, 'model.positions': 'none',
                 **(transformer if name == 'transformer' else {})}
          for name, width in widths.items()}


def lengths(full: bool) -> dict[str, dict]:
  """Local: 4096 tokens per batch at every length (batch 64, 32, 16). Full: Zoology's batches and 64 epochs."""
  out = {}
  for length, pairs in LENGTHS:
    batch = (256 if length >= 256 else 512) if full else 4096 // length
    out[f'T{length}'] = {'data.max_len': length, 'data.mqar.num_pairs': pairs, 'data.mqar.num_queries': pairs,
                         'train.batch_size': batch}
    if full:
      out[f'T{length}']['train.num_steps'] = 64 * 100_000 // batch
  return out


def get_sweep(variant: str = ''):
  arg = configs.parse_variant(variant, full=False)
  if arg.full:
    shared = {'data.vocab_size': 8192, 'data.mqar.num_train': 100_000, 'data.mqar.num_eval': 3000,
              'train.eval_batch_size': 500, 'train.eval_every_steps': 1000, 'train.checkpoint_every_steps': 1000,
              'train.log_every_steps': 100}
    return sweeps.grid('experiments/recall.py', mixers(WIDTHS_FULL), lengths(full=True), seeds=SEEDS,
                       overrides=shared)
  shared = {'train.num_steps': 1000, 'train.eval_every_steps': 250, 'train.checkpoint_every_steps': 250}
  return sweeps.grid('experiments/recall.py', mixers(WIDTHS), lengths(full=False), seeds=SEEDS, overrides=shared)
