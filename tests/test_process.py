"""lm_jax.process: after keep_freed_memory, a freed large block is reused without page faults, and
release_freed_memory returns it to the OS (glibc only)."""

import os
import subprocess
import sys

from absl.testing import absltest

# Allocates, fills and frees a 64 MiB buffer twice; prints the page faults of the second fill.
_SCRIPT = '''
import resource, sys
from lm_jax import process
if sys.argv[1] == 'keep':
  assert process.keep_freed_memory()
import numpy as np
def fill():
  x = np.empty(16 * 2 ** 20, np.float32)
  x.fill(1.0)
  del x
fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


# Keeps freed memory, fills and frees a 64 MiB buffer; prints private memory (RssAnon, KiB) before and after release.
_RELEASE_SCRIPT = '''
import re
from lm_jax import process
assert process.keep_freed_memory()
import numpy as np
private_kib = lambda: int(re.search(r'RssAnon:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))
x = np.empty(16 * 2 ** 20, np.float32)
x.fill(1.0)
del x
kept = private_kib()
assert process.release_freed_memory()
print(kept, private_kib())
'''


def second_fill_page_faults(mode: str) -> int:
  # 4 KiB pages: NumPy would ask for transparent huge pages, 512 times fewer faults.
  result = subprocess.run([sys.executable, '-c', _SCRIPT, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, 'NUMPY_MADVISE_HUGEPAGE': '0'})
  return int(result.stdout.strip())


class KeepFreedMemoryTest(absltest.TestCase):

  def test_a_freed_block_is_reused_without_page_faults(self):
    if not sys.platform.startswith('linux'):
      self.skipTest('mallopt is glibc\'s')
    # 64 MiB is 16k pages of 4 KiB: glibc's default mmaps the block afresh each time.
    self.assertGreater(second_fill_page_faults('default'), 1000)
    self.assertLess(second_fill_page_faults('keep'), 100)

  def test_release_returns_the_kept_block(self):
    if not sys.platform.startswith('linux'):
      self.skipTest('malloc_trim is glibc\'s')
    result = subprocess.run([sys.executable, '-c', _RELEASE_SCRIPT], capture_output=True, text=True, check=True,
                            env={**os.environ, 'NUMPY_MADVISE_HUGEPAGE': '0'})
    kept_kib, released_kib = map(int, result.stdout.split())
    self.assertGreater(kept_kib - released_kib, 48 * 1024)   # most of the 64 MiB block


if __name__ == '__main__':
  absltest.main()
