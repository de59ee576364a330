"""The base of every experiment: lm_jax's default config, whose keys are each documented in lm_jax/defaults.py.

Not run directly: `python -m lm_jax.main --config experiments/<name>.py --workdir runs/<name>`.
"""

from lm_jax.defaults import get_config

__all__ = ['get_config']
