r"""IMDB sentiment from scratch vs from a masked-LM pretrained encoder (init_from), 3 seeds each.

  python -m lm_jax.ablate --sweep experiments/ablations/imdb_pretraining.py --workdir runs/ablations/imdb_pretraining
  python -m lm_jax.ablate --sweep experiments/ablations/imdb_pretraining.py:local \
      --workdir runs/ablations/imdb_pretraining_local

The first run, `mlm`, pretrains experiments/imdb.py's encoder as a masked LM on the IMDB reviews, the 50k
unlabelled ones included. Then per seed: `scratch` is experiments/imdb.py as it is; `pretrained` is the same run
started from the `mlm` run's weights (its task head fresh) and tokenizer. Everything else, the learning rate
included, is the same, so the difference is the initialization. Needs the prepared imdb_reviews:
`--override data.tfds_data_dir=DIR` points every run at it.
"""

from lm_jax import configs
from lm_jax import sweeps

SEEDS = (12345, 1, 2)
MLM = {'model.task': 'mlm', 'data.use_unsupervised': True, 'train.best_metric': 'loss', 'train.best_mode': 'min'}


def get_sweep(variant: str = ''):
  local = configs.parse_variant(variant, local=False).local
  config = 'experiments/imdb.py' + (':local' if local else '')
  runs = [sweeps.Variant('mlm', config, {**MLM, 'train.num_steps': 500 if local else 10_000})]
  for seed in SEEDS:
    runs.append(sweeps.Variant('scratch', config, seed=seed))
    runs.append(sweeps.Variant('pretrained', config, {'init_from_reinit': 'head'}, seed=seed, init_from='mlm'))
  return runs
