"""Process setup shared by every command: argument check, logging levels, how host memory is kept, and how
SIGTERM and SIGINT become a request to stop.

Host memory: XLA:CPU allocates each execution's temporary buffer with malloc. glibc serves blocks that large with a
fresh mmap and returns them with munmap on free, so without the settings below every train step first-touches tens
of thousands of new pages again. With one malloc arena, no mmap and no trimming, the freed block is reused by the
next step. (One arena matters: another thread's arena holds at most 64 MiB and falls back to mmap above that.)
`release_freed_memory` hands back what compiling and the first steps freed, once they are over.
"""

import ctypes
import ctypes.util
import logging
import signal
import threading

from absl import app
from absl import logging as absl_logging

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP_FREED = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1))
log = logging.getLogger(__name__)


def start(argv, *, process_index: int = 0) -> None:
  """What every command does first: refuses stray arguments; shows lm_jax's progress at INFO (process 0 only),
  other libraries from WARNING up, as short console lines; keeps freed host memory in the process (before JAX
  starts its threads)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  keep_freed_memory()
  debugging = absl_logging.get_verbosity() >= absl_logging.DEBUG   # --verbosity=1: absl's full lines, all libraries
  if not debugging:
    absl_logging.set_verbosity(absl_logging.WARNING)   # Orbax alone logs every file it writes at INFO
    absl_logging.get_absl_handler().setFormatter(ConsoleFormatter())
  logging.getLogger('lm_jax').setLevel(logging.INFO if process_index == 0 else logging.WARNING)


class ConsoleFormatter(logging.Formatter):
  """`14:02:11 step 20/20 | loss 2.886 | ...`: the time and the message; the level only when above INFO.

  absl's own lines (level, date, thread id, file:line) stay for debugging (`--verbosity=1`).
  """

  def __init__(self):
    super().__init__('%(asctime)s %(message)s', datefmt='%H:%M:%S')

  def format(self, record: logging.LogRecord) -> str:
    line = super().format(record)
    if record.levelno > logging.INFO:
      time_stamp, _, message = line.partition(' ')
      line = f'{time_stamp} {record.levelname} {message}'
    return line


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

  What compiling and the first steps freed would otherwise stay resident for the whole run. The step's own buffers
  come back at the next step, page-faulted in once.
  """
  malloc_trim = _glibc_function('malloc_trim')
  return malloc_trim is not None and malloc_trim(0) in (0, 1)


class StopSignals:
  """Turns SIGTERM and SIGINT into a request to stop after the current step (main thread only)."""

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received:  # a second signal: stop now, as without a handler
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    log.warning('%s received: finishing the current step, then saving a checkpoint.', self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
