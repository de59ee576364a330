"""IMDB sentiment: transformer encoder (experiments/imdb.py) vs bidirectional LSTM (imdb_lstm.py), 3 seeds.

  python -m lm_jax.ablate --sweep experiments/ablations/imdb_mixer.py --workdir runs/ablations/imdb_mixer
  python -m lm_jax.ablate --sweep experiments/ablations/imdb_mixer.py:local --workdir runs/ablations/imdb_mixer_local

Each model with its own experiment's recipe (the LSTM's lr is 1e-3, the transformer's 3e-4); `:local` takes both
experiments' `:local` variant. Needs the prepared imdb_reviews: `--override data.tfds_data_dir=DIR` points every run
at it.
"""

from lm_jax import configs
from lm_jax import sweeps

SEEDS = (12345, 1, 2)
EXPERIMENTS = {'transformer': 'experiments/imdb.py', 'lstm': 'experiments/imdb_lstm.py'}


def get_sweep(variant: str = ''):
  suffix = ':local' if configs.parse_variant(variant, local=False).local else ''
  return [sweeps.Variant(name, path + suffix, seed=seed) for seed in SEEDS for name, path in EXPERIMENTS.items()]
