"""IMDB sentiment: the transformer encoder with 1, 2, 4 or 8 attention heads (same d_model, so same parameters).

  python -m lm_jax.ablate --sweep experiments/ablations/imdb_heads.py --workdir runs/ablations/imdb_heads
  python -m lm_jax.ablate --sweep experiments/ablations/imdb_heads.py:local --workdir runs/ablations/imdb_heads_local

experiments/imdb.py (or its `:local` variant) with model.num_heads changed, 3 seeds. Needs the prepared
imdb_reviews: `--override data.tfds_data_dir=DIR` points every run at it.
"""

from lm_jax import configs
from lm_jax import sweeps

SEEDS = (12345, 1, 2)


def get_sweep(variant: str = ''):
  suffix = ':local' if configs.parse_variant(variant, local=False).local else ''
  heads = {f'heads{h}': {'model.num_heads': h} for h in (1, 2, 4, 8)}
  return sweeps.grid('experiments/imdb.py' + suffix, heads, seeds=SEEDS)
