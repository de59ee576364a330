"""The 8-device checks of tests/test_sharding.py, run as `python tests/sharded_runs.py TMPDIR OUT.json` in a process
with 8 forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=8); writes what it measured to OUT.

- losses: 20 steps of the tiny MQAR run (fixtures.RECALL, the real data pipeline and train loop) for a transformer
  and an LSTM on meshes data=8, fsdp=8, fsdp=4 × data=2 and tensor=2 × data=4 (the caller compares them);
- held_fraction: with fsdp=8, the share of each sharded parameter one device holds;
- resume: a run trained 10 steps on fsdp=4 (4 devices), restored on data=2 (2 devices): are the params bit-exact;
  its validation loss on 1 device against the 2-device one.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fixtures  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from lm_jax import train  # noqa: E402

MESHES = {'data=8': {'data': 8}, 'fsdp=8': {'data': 1, 'fsdp': 8}, 'fsdp=4,data=2': {'data': 2, 'fsdp': 4},
          'tensor=2,data=4': {'data': 4, 'tensor': 2}}
RECURRENT = {'model.positions': 'none', 'model.smeared_keys': False, 'model.attention_bias': 'none',
             'model.fast_rnn': False}   # sharding.check_model: the CPU schedule is for data-only meshes


def config(name, mesh, **overrides):
  mesh_keys = {f'mesh.{axis}': mesh.get(axis, 1) for axis in ('data', 'fsdp', 'tensor')}
  return fixtures.recall({**fixtures.RECALL, 'model.name': name, 'train.log_every_steps': 1, **mesh_keys,
                          **(RECURRENT if name != 'transformer' else {}), **overrides})


def train_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [line['loss'] for line in map(json.loads, f) if line['split'] == 'train']


def main(tmp, out):
  assert jax.device_count() == 8, jax.devices()
  report = {'losses': {}, 'held_fraction': {}}
  for name in ('transformer', 'lstm'):
    report['losses'][name] = {}
    for label, mesh in MESHES.items():
      workdir = os.path.join(tmp, f'{name}_{label}')
      state, _ = train.train_and_evaluate(config(name, mesh), workdir)
      report['losses'][name][label] = train_losses(workdir)
      if label == 'fsdp=8':
        for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
          if 'fsdp' in jax.tree.leaves(tuple(leaf.sharding.spec)):
            shard = leaf.addressable_shards[0].data
            report['held_fraction'][f'{name}:{jax.tree_util.keystr(path)}'] = shard.size / leaf.size

  # Train on fsdp=4 over 4 devices, resume on data=2 over 2, evaluate on 1.
  workdir = os.path.join(tmp, 'resume')
  trained, _ = train.train_and_evaluate(config('transformer', {'data': 1, 'fsdp': 4}, **{'train.num_steps': 10}),
                                        workdir, devices=jax.devices()[:4])
  on_two = train.prepare_run(config('transformer', {'data': 2}, **{'train.num_steps': 10}), workdir,
                             devices=jax.devices()[:2])
  _, restored, _ = on_two.ckpt.restore(on_two.state)
  on_two.ckpt.close()
  exact = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                       jax.device_get(trained.params), jax.device_get(restored.params))
  on_one = train.prepare_run(config('transformer', {'data': 1}, **{'train.num_steps': 10}), workdir,
                             devices=jax.devices()[:1])
  _, restored_one, _ = on_one.ckpt.restore(on_one.state)
  on_one.ckpt.close()
  report['resume'] = {'bit_exact': all(jax.tree.leaves(exact)),
                      'loss': train.evaluate(on_two, restored.params, 'validation')['loss'],
                      'one_device_loss': train.evaluate(on_one, restored_one.params, 'validation')['loss']}
  with open(out, 'w') as f:
    json.dump(report, f, indent=1)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
