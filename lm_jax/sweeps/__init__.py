"""Ablation sweeps (`python -m lm_jax.ablate`): sweep files list `Variant`s, usually built by `grid`.

    variants  the sweep file's vocabulary: Variant, grid, load, resolve, and model sizes for the table
    runner    runs every variant as an ordinary training run, resumable, then writes the table and plots
    report    mean ± std per variant over seeds: results.csv and results.md
    plots     one PNG per grid axis, and accuracy against recurrent state size
"""

from lm_jax.sweeps.variants import Variant, count_params, grid, load, parse_overrides, resolve

__all__ = ['Variant', 'count_params', 'grid', 'load', 'parse_overrides', 'resolve']
