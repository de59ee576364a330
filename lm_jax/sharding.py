"""The device mesh and where every array of a run lives on it: parameters, optimizer state, batches.

A mesh has three named axes (config.mesh): `data` (replicas), `fsdp` (parameters and optimizer state split
ZeRO-3 style: each device holds 1/N, gathered where used) and `tensor` (Megatron style: attention heads, MLP hidden
units and the vocabulary split). Batches split over `data` × `fsdp`.

Two tables decide a parameter's sharding, as in MaxText and big_vision:
  PARAM_AXES      parameter path (regex) → a logical name per dimension ('embed', 'heads', 'mlp', ...)
  RULES           logical name → mesh axis
The models say nothing about devices: their math reads like the papers, and the names live here, in one place a
reader of the sharding can check against the parameter tree (`python -m lm_jax.tools.plan --config X --params`
prints it). An optimizer statistic has its parameter's path as a suffix (`opt_state/.../mu/decoder/...`), so it is
sharded like its parameter; one of another shape (Adafactor's factored row and column) is replicated.
"""

import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')   # the batch dimension of every batch array

# Logical name → mesh axis (None: every device holds the whole dimension).
RULES = {
    'embed': 'fsdp',      # the model width: every matrix has it, so FSDP splits every matrix
    'vocab': 'tensor',
    'heads': 'tensor',    # attention heads (query heads, and key/value heads for GQA)
    'mlp': 'tensor',      # MLP hidden units; the inner width of Mamba and RG-LRU
    'gates': 'tensor',    # an RNN cell's gate units (its 1, 3 or 4 gates side by side)
    'hidden': None,       # an RNN's recurrent input: each step needs all of it
    'classes': None,
}

# Parameter path (the '/'-joined suffix, matched with re.search) → one logical name (or None) per dimension. The
# first match wins. Every parameter of every registry model must match one (tests/test_sharding.py checks).
PARAM_AXES = (
    (r'(token|type|position)_embed/embedding$', ('vocab', 'embed')),   # position/type tables: 'vocab' is their rows
    (r'relative_bias$', (None, 'heads')),
    (r'attention/(query|key|value)/kernel$', ('embed', 'heads', None)),
    (r'attention/(query|key|value)/bias$', ('heads', None)),
    (r'attention/out/kernel$', ('heads', None, 'embed')),
    (r'attention/smear$', ('heads',)),
    (r'mlp_(in|gate)/kernel$', ('embed', 'mlp')),
    (r'mlp_(in|gate)/bias$', ('mlp',)),
    (r'mlp_out/kernel$', ('mlp', 'embed')),
    (r'(lm|mlm)_head/(output/)?bias$', ('vocab',)),
    (r'(lm|mlm)_head/(output/)?kernel$', ('embed', 'vocab')),
    (r'mlm_head/transform/kernel$', ('embed', None)),
    (r'classifier_head/.*kernel$', ('embed', 'classes')),
    (r'pooler/kernel$', ('embed', None)),
    # RNN cells: x·W + h·U + b, the gates side by side in the columns.
    (r'/W$', ('embed', 'gates')),
    (r'/U$', ('hidden', 'gates')),
    (r'/(b|bn)$', ('gates',)),
    # Mamba: in_proj to 2E (x and the gate), the SSM per inner channel, out_proj back.
    (r'mixer/in_proj/kernel$', ('embed', 'mlp')),
    (r'mixer/x_proj/kernel$', ('mlp', None)),
    (r'mixer/dt_proj/kernel$', (None, 'mlp')),
    (r'mixer/(A_log)$', ('mlp', None)),
    # RG-LRU: input and gate branches to the LRU width, block-diagonal gates per head.
    (r'mixer/(input|gate)_proj/kernel$', ('embed', 'mlp')),
    (r'mixer/(input|recurrence)_gate/kernel$', ('heads', None, None)),
    (r'mixer/(input|recurrence)_gate/bias$', ('heads', None)),
    (r'mixer/out_proj/kernel$', ('mlp', 'embed')),
    (r'mixer/conv_kernel$', (None, 'mlp')),
    (r'mixer/(D|conv_bias|a_param|dt_proj/bias|(input|gate)_proj/bias)$', ('mlp',)),
    # Norms and the biases of width d_model: small, replicated.
    (r'(scale|bias)$', (None,)),
)


def axis_sizes(mesh_config, num_devices: int) -> dict[str, int]:
  """{'data': d, 'fsdp': f, 'tensor': t} from config.mesh, whose one -1 takes the devices the others leave."""
  sizes = {axis: int(mesh_config[axis]) for axis in AXES}
  unknown = [axis for axis, size in sizes.items() if size == -1]
  if len(unknown) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(f'config.mesh={sizes}: each axis is a size >= 1, and at most one is -1 (the remaining devices).')
  known = math.prod(size for size in sizes.values() if size != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(f'config.mesh={sizes}: {num_devices} devices do not divide by the other axes ({known}).')
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f'config.mesh={sizes} spans {math.prod(sizes.values())} devices, but there are {num_devices}: '
                     'make the product equal, or set one axis to -1.')
  return sizes


def make_mesh(mesh_config=None, devices=None) -> jax.sharding.Mesh:
  """The ('data', 'fsdp', 'tensor') mesh of `devices` (default: every device of every process).

  `tensor` is the fastest-varying axis, so a tensor-parallel group is a host's neighbouring devices; without a
  mesh_config every device is on `data`.
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = axis_sizes(mesh_config or {'data': -1, 'fsdp': 1, 'tensor': 1}, len(devices))
  grid = np.asarray(devices).reshape([sizes[axis] for axis in AXES])
  return jax.sharding.Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def data_parallel_only(mesh) -> bool:
  """Whether every device holds whole parameters: the replicated data-parallel step (steps.make_train_step)."""
  return mesh.shape['fsdp'] == 1 and mesh.shape['tensor'] == 1


def check_model(model_config, mesh) -> None:
  """Refuses what a mesh with fsdp or tensor axes cannot run: the RNNs' CPU schedule (model.fast_rnn) splits each
  step into independent batch slices, and with a sharded batch each slice's collectives may run in another order on
  each CPU device, which deadlocks XLA:CPU's rendezvous. The plain scan (fast_rnn=False) computes the same."""
  if (not data_parallel_only(mesh) and model_config.name in ('rnn', 'lstm', 'gru')
      and model_config.get('fast_rnn', False)):
    raise ValueError(f'model.fast_rnn=True is the data-parallel step\'s CPU schedule; on mesh {dict(mesh.shape)} set '
                     'model.fast_rnn=False (the plain scan: the same results).')


def batch_spec() -> P:
  return P(BATCH_AXES)


def data_shards(mesh) -> int:
  """How many parts the batch is split into: data × fsdp."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def path_str(key_path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in key_path)


def logical_axes(path: str, ndim: int) -> tuple:
  """The logical name of each dimension of the parameter at `path`; raises naming it if no entry matches."""
  for pattern, names in PARAM_AXES:
    if re.search(pattern, path):
      return names
  raise ValueError(f'Parameter {path!r} ({ndim}-D) has no entry in lm_jax/sharding.py PARAM_AXES: add one, naming '
                   f'the logical axis of each dimension ({", ".join(sorted(RULES))} or None).')


def param_spec(path: str, shape: tuple[int, ...], mesh) -> P:
  """The PartitionSpec of one array: its logical axes through RULES, checked to divide by the mesh axes."""
  names = logical_axes(path, len(shape))
  if re.search(r'(^|/)layers/', path) and len(names) + 1 == len(shape):
    names = (None, *names)   # model.scan_layers: the layers stacked on a leading axis, which stays whole
  if len(names) != len(shape):
    return P()   # an optimizer statistic of another shape than its parameter (Adafactor's factored moments)
  spec = []
  for dim, (size, name) in enumerate(zip(shape, names)):
    axis = RULES[name] if name else None
    if axis is not None and mesh.shape[axis] > 1:
      if size % mesh.shape[axis]:
        raise ValueError(f'Parameter {path!r} of shape {tuple(shape)}: dimension {dim} ({name!r}, size {size}) does '
                         f'not divide by mesh axis {axis!r} of size {mesh.shape[axis]}. Choose a mesh.{axis} that '
                         f'divides {size}, or change the model size.')
      spec.append(axis)
    else:
      spec.append(None)
  return P(*spec)


def state_shardings(abstract_state: Any, mesh) -> Any:
  """NamedShardings for every leaf of a train state (or a param tree): scalars (step, rng, counts) replicated,
  parameters and their optimizer statistics by `param_spec`."""

  def sharding(key_path, leaf):
    shape = getattr(leaf, 'shape', ())
    if len(shape) == 0:
      return NamedSharding(mesh, P())
    path = path_str(key_path)
    if path == 'rng' or path.endswith('/rng'):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, param_spec(path, shape, mesh))

  return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def bytes_per_device(abstract_tree: Any, shardings: Any) -> int:
  """The bytes one device holds of a tree placed with `shardings` (the largest shard of each leaf)."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total
