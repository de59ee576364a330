r"""A job's memory per device before paying for the machines: compiles the real train step ahead of time, runs nothing.

  python -m lm_jax.tools.plan --config experiments/gpt2_small.py --memory_gb 80
  python -m lm_jax.tools.plan --config experiments/decoder_1b.py --devices 8 --memory_gb 80
  python -m lm_jax.tools.plan --config experiments/decoder_1b.py --devices 8 --config.mesh.fsdp=1 --config.mesh.data=-1

As MaxText's train_compile.py: the model, optimizer, mesh (config.mesh) and batch of the config, as abstract arrays
with their shardings, through `steps.make_train_step(...).lower(...).compile()`. `--devices N` forces N host (CPU)
devices, so a laptop plans a job of N accelerators; the numbers are then XLA:CPU's (its fusion and buffer reuse differ
from a GPU's or TPU's: take temporaries as an estimate, parameters and optimizer state as exact). Prints per device:
parameter, optimizer-state and batch bytes (from the shardings: exact), the compiled step's temporaries, FLOPs per
step (the model-FLOP count of lm_jax.models, forward and backward), and whether the sum fits --memory_gb. Exits 1 when it does not, 2 when the config cannot be placed at all.
The vocabulary is config.data.vocab_size unless --vocab_size says otherwise (a wordpiece or bytes tokenizer's own).
"""

import os
import sys


def _force_host_devices(argv) -> None:
  """--devices N must reach XLA before jax starts."""
  for i, arg in enumerate(argv):
    value = arg.split('=', 1)[1] if arg.startswith('--devices=') else (argv[i + 1] if arg == '--devices' else None)
    if value:
      os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                                 f' --xla_force_host_platform_device_count={int(value)}').strip()
      os.environ.setdefault('JAX_PLATFORMS', 'cpu')


if __name__ == '__main__':
  _force_host_devices(sys.argv)

# pylint: disable=wrong-import-position
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lm_jax import models  # noqa: E402
from lm_jax import optim  # noqa: E402
from lm_jax import sharding  # noqa: E402
from lm_jax import steps  # noqa: E402
from lm_jax import train  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined when it runs (importing `plan` defines none: `--config` is lm_jax.main's too)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config: experiments/NAME.py[:variant].',
                                  lock_config=True)
  flags.DEFINE_integer('devices', None, 'Plan for this many devices, forced on the host CPU (default: the devices '
                       'here).')
  flags.DEFINE_float('memory_gb', None, 'Device memory (GiB) the job must fit; exit 1 if it does not.')
  flags.DEFINE_integer('vocab_size', None, 'Vocabulary size (default: config.data.vocab_size).')
  flags.DEFINE_bool('json', False, 'Print one JSON line instead of the table.')

GIB = 2 ** 30


def abstract_batch(task: str, batch: int, seq: int, mesh) -> dict:
  """The batch contract's arrays as shapes with the batch sharding (docs/data.md)."""
  spec = steps.batch_sharding(mesh)
  ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=spec)
  if task == 'classification':
    return {'inputs': ids, 'label': jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=spec),
            'weights': jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=spec)}
  return {'inputs': ids, 'targets': ids, 'weights': jax.ShapeDtypeStruct((batch, seq), jnp.float32, sharding=spec)}


def plan(config, vocab_size: int, devices=None) -> dict:
  """Per-device bytes and FLOPs of one train step of `config` on `devices` (default: all), compiled, not run."""
  mesh = train.make_mesh(devices, config.mesh)
  train.check_batch_sizes(config, mesh)
  sharding.check_model(config.model, mesh)
  seq = config.data.max_len
  model = models.get_model(config.model, vocab_size=vocab_size, max_len=seq)
  optimizer = optim.make_optimizer(config.optim, max(config.train.num_steps, 1))
  dummy = jnp.ones((1, seq), jnp.int32)

  def fresh_state():
    params = model.init(jax.random.PRNGKey(0), dummy)['params']
    return steps.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params),
                            rng=jax.random.PRNGKey(0))

  shapes = jax.eval_shape(fresh_state)
  shardings = sharding.state_shardings(shapes, mesh)
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  batch = abstract_batch(config.model.task, config.train.batch_size, seq, mesh)
  step = steps.make_train_step(model, optimizer, mesh, config.optim.grad_accum_steps, state_shardings=shardings,
                               mlm_predictions=train.mlm_predictions(config))   # the step training compiles
  start = time.perf_counter()
  compiled = step.lower(state, batch, True).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  # Model FLOPs (lm_jax.models.train_flops_per_token), not XLA's cost analysis: that counts a scanned layer once.
  flops = models.train_flops_per_token(config.model, vocab_size=vocab_size, seq_len=seq) * config.train.batch_size * seq
  out = {
      'config_model': config.model.name, 'devices': mesh.size, 'mesh': dict(mesh.shape),
      'params': models.count_params(shapes.params),
      'param_bytes': sharding.bytes_per_device(shapes.params, shardings.params),
      'opt_state_bytes': sharding.bytes_per_device(shapes.opt_state, shardings.opt_state),
      'batch_bytes': sum(sharding.bytes_per_device(a, a.sharding) for a in batch.values()),
      'temp_bytes': int(memory.temp_size_in_bytes),
      'flops_per_step_per_device': flops / mesh.size,
      'compile_s': round(compile_s, 2), 'backend': jax.default_backend(),
  }
  out['total_bytes'] = out['param_bytes'] + out['opt_state_bytes'] + out['batch_bytes'] + out['temp_bytes']
  return out


def table(result: dict, memory_gb) -> str:
  gib = lambda n: f'{n / GIB:9.3f} GiB'
  lines = [f"{result['config_model']}: {result['params']:,} parameters on {result['devices']} {result['backend']} "
           f"device(s), mesh {result['mesh']}; compiled in {result['compile_s']} s",
           'per device:',
           f"  parameters      {gib(result['param_bytes'])}",
           f"  optimizer state {gib(result['opt_state_bytes'])}",
           f"  batch           {gib(result['batch_bytes'])}",
           f"  temporaries     {gib(result['temp_bytes'])}   (the compiled step's, gradients included)",
           f"  total           {gib(result['total_bytes'])}",
           f"  FLOPs per step  {result['flops_per_step_per_device']:.3e}   (model FLOPs, training)"]
  if memory_gb:
    verdict = 'fits' if result['total_bytes'] <= memory_gb * GIB else 'does NOT fit'
    lines.append(f'{verdict} in {memory_gb:g} GiB')
  return '\n'.join(lines)


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.devices and jax.device_count() != FLAGS.devices:
    raise app.UsageError(f'--devices={FLAGS.devices}, but jax sees {jax.device_count()} devices: run as '
                         '`python -m lm_jax.tools.plan` (the flag must reach XLA before jax starts).')
  try:
    result = plan(config, FLAGS.vocab_size or config.data.vocab_size)
  except ValueError as e:   # a mesh that does not divide the model or the batch
    print(f'cannot place this job: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result) if FLAGS.json else table(result, FLAGS.memory_gb))
  if FLAGS.memory_gb and result['total_bytes'] > FLAGS.memory_gb * GIB:
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
