"""Every test sees two CPU devices, so data parallelism (1 vs 2 replicas) is exercised without accelerators."""

import os

# Must happen before jax is imported anywhere.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Tests never download: TFDS sees no real data dir and no GCS.
os.environ.setdefault('TFDS_DATA_DIR', os.path.join(os.environ.get('TMPDIR', '/tmp'), 'lm_jax_tests_tfds_absent'))
os.environ.setdefault('NO_GCE_CHECK', 'true')
# Implicit rank promotion ([B, T] + [T] broadcasting silently) hides shape bugs: tests make it an error.
os.environ['JAX_NUMPY_RANK_PROMOTION'] = 'raise'

# absl's TestCase helpers (create_tempdir, chex variants) read absl flags; pytest never parses them.
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.FLAGS.mark_as_parsed()
