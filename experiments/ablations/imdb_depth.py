"""IMDB sentiment: the transformer encoder with 1, 2 or 4 layers.

  python -m lm_jax.ablate --sweep experiments/ablations/imdb_depth.py --workdir runs/ablations/imdb_depth
  python -m lm_jax.ablate --sweep experiments/ablations/imdb_depth.py:local --workdir runs/ablations/imdb_depth_local

experiments/imdb.py (or its `:local` variant) with model.num_layers changed, 3 seeds. Needs the prepared
imdb_reviews: `--override data.tfds_data_dir=DIR` points every run at it.
"""

from lm_jax import configs
from lm_jax import sweeps

SEEDS = (12345, 1, 2)


def get_sweep(variant: str = ''):
  suffix = ':local' if configs.parse_variant(variant, local=False).local else ''
  depths = {f'layers{n}': {'model.num_layers': n} for n in (1, 2, 4)}
  return sweeps.grid('experiments/imdb.py' + suffix, depths, seeds=SEEDS)
