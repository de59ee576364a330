"""Host memory: freed buffers stay in the process, so a train step does not page-fault its memory in again.

XLA:CPU allocates each execution's temporary buffer with malloc (86 MB for the lstm bench step, more for the
transformers). glibc serves blocks that large with a fresh mmap and returns them with munmap on free, so every
step first-touches ~20k new pages: in the lstm bench case 21k page faults and ~35 ms of system time per ~0.12 s
step (2-core CPU). With one malloc arena, no mmap and no trimming, the freed block is reused by the next step.
(One arena matters: another thread's arena holds at most 64 MiB and falls back to mmap above that.)
"""

import ctypes
import ctypes.util
import logging

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP_FREED = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1))
log = logging.getLogger(__name__)


def _glibc_function(name: str):
  """glibc's `name` from the C library, or None where the C library is not glibc."""
  try:
    return getattr(ctypes.CDLL(ctypes.util.find_library('c')), name)
  except (OSError, AttributeError, TypeError):
    return None


def keep_freed_memory() -> bool:
  """Sets glibc malloc to keep freed memory (see the module doc); False where malloc is not glibc's.

  Call it before the first JAX computation: threads that already allocated keep their own arena.
  """
  mallopt = _glibc_function('mallopt')
  if mallopt is None:
    return False
  applied = all(mallopt(param, value) == 1 for param, value in KEEP_FREED)
  if not applied:
    log.warning('mallopt refused the settings %s: train steps may page-fault their buffers in each step.',
                KEEP_FREED)
  return applied


def release_freed_memory() -> bool:
  """Returns the freed memory kept so far to the OS (glibc's malloc_trim); False where malloc is not glibc's.

  What compiling and the first steps freed would otherwise stay resident for the whole run (`bench.token_cache`'s
  1.5M-parameter decoder: 1.04 GB of private memory after its first steps, 0.69 GB once trimmed). The step's own
  buffers come back at the next step, page-faulted in once.
  """
  malloc_trim = _glibc_function('malloc_trim')
  return malloc_trim is not None and malloc_trim(0) in (0, 1)
