"""What every command (main, ablate, predict, convert, attention_maps, data.prepare) does first."""

import logging

from absl import app
from absl import logging as absl_logging

from lm_jax import hostmem


def start(argv, *, process_index: int = 0) -> None:
  """Refuses stray arguments; shows lm_jax's progress at INFO (process 0 only), other libraries from WARNING up;
  keeps freed host memory in the process (`hostmem`: before JAX starts its threads)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  hostmem.keep_freed_memory()
  absl_logging.set_verbosity(absl_logging.WARNING)   # Orbax alone logs every file it writes at INFO
  logging.getLogger('lm_jax').setLevel(logging.INFO if process_index == 0 else logging.WARNING)
