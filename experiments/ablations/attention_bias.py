"""Attention bias b on recall: none vs learned relative-position bias (T5) vs ALiBi, 3 seeds.

  python -m lm_jax.ablate --sweep experiments/ablations/attention_bias.py --workdir runs/ablations/attention_bias

experiments/recall.py unchanged except model.attention_bias (positions stay learned in all three, so only b
differs); 9 runs of that experiment's length.
"""

from lm_jax import sweeps

SEEDS = (12345, 1, 2)


def get_sweep():
  biases = {bias: {'model.attention_bias': bias} for bias in ('none', 'relative', 'alibi')}
  return sweeps.grid('experiments/recall.py', biases, seeds=SEEDS)
