"""Every test sees two CPU devices, so data parallelism (1 vs 2 replicas) is exercised without accelerators.

`pytest -q -m "not slow"` leaves out the tests marked slow (end-to-end training, the CLI in subprocesses,
preemption kills, multi-host, sweeps, the Hugging Face comparison); `pytest -q` runs them all.
"""

import os
import shutil
import tempfile

# Compiling, not running, is where the suite's time goes: thousands of tiny programs. XLA:CPU's legacy fusion
# emitters and no LLVM optimization compile them several times faster and compute the same HLO. Placed first, so that flags already in XLA_FLAGS win (XLA takes a flag's last value). Both
# flags exist in jaxlib 0.10 (setup.cfg pins <0.11); XLA aborts on a flag it does not know.
_FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
# Must happen before jax is imported anywhere.
os.environ['XLA_FLAGS'] = ' '.join(
    [_FAST_COMPILE, os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=2']).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Tests never download: TFDS sees no real data dir and no GCS.
os.environ.setdefault('TFDS_DATA_DIR', os.path.join(os.environ.get('TMPDIR', '/tmp'), 'lm_jax_tests_tfds_absent'))
os.environ.setdefault('NO_GCE_CHECK', 'true')
# Implicit rank promotion ([B, T] + [T] broadcasting silently) hides shape bugs: tests make it an error.
os.environ['JAX_NUMPY_RANK_PROMOTION'] = 'raise'
# One persistent compilation cache for the session, which the subprocesses the tests start inherit: the many tiny
# runs compile the same programs.
_OWN_COMPILE_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_COMPILE_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='lm_jax_tests_compile_cache_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

# absl's TestCase helpers (create_tempdir, chex variants) read absl flags; pytest never parses them.
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.FLAGS.mark_as_parsed()


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_COMPILE_CACHE:
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
