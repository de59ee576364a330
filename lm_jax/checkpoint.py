"""Orbax checkpoints of a run, and the params of another run for `init_from`.

Layout (one Orbax CheckpointManager): `DIR/<step>/state` (the train-state pytree: params, opt_state, step, rng),
`DIR/<step>/loop_state` (JSON: the data iterator's position, the open log window, the metrics.jsonl length) and, for
steps saved with metrics, `DIR/<step>/metrics`.
Kept: the latest `max_to_keep` steps plus the best step by `metrics[best_metric]`, so resume always finds the latest.

A step that was finalized but is damaged later (files missing or corrupt) fails only when it is read: `restore`
then warns and falls back to the step before it. Damaged steps are deleted at the next `save`, which supersedes them.
"""

import contextlib
import logging
import os
import re
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

BEST_MODES = ('max', 'min')
log = logging.getLogger(__name__)


class Checkpointer:
  """Saves and restores `(step, state, loop_state)`; keeps the latest `max_to_keep` steps and the best one."""

  def __init__(self, directory: str, *, max_to_keep: int, best_metric: str, best_mode: str):
    if best_mode not in BEST_MODES:
      raise ValueError(f'best_mode={best_mode!r}; allowed: {", ".join(BEST_MODES)}.')
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep={max_to_keep}; must be >= 1 (the latest step is always kept).')
    self._best_metric = best_metric
    self._damaged: set[int] = set()

    def best_value(metrics):
      return metrics[best_metric]

    self._manager = ocp.CheckpointManager(
        epath.Path(directory).absolute(),
        item_handlers={'state': ocp.StandardCheckpointHandler(), 'loop_state': ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            create=True,
            best_fn=best_value,  # makes the manager store each step's metrics
            best_mode=best_mode,
            # Orbax's max_to_keep with best_fn would keep the best N and could delete the latest step: keep both.
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy([
                ocp.checkpoint_managers.LatestN(n=max_to_keep),
                ocp.checkpoint_managers.BestN(get_metric_fn=best_value, reverse=best_mode == 'min', n=1,
                                              keep_checkpoints_without_metrics=False),
            ]),
        ),
    )

  @property
  def directory(self) -> epath.Path:
    return self._manager.directory

  def save(self, step: int, state: Any, *, loop_state: dict, metrics: dict[str, float] | None = None,
           force: bool = False) -> bool:
    """Saves `state` and `loop_state` at `step` (asynchronously); returns False if `step` is already saved.

    `metrics` (e.g. the validation metrics at this step) must then hold `best_metric`; only steps saved with metrics
    compete for "best". `force` saves even when the manager's save policy would skip the step.
    """
    if metrics is not None:
      if self._best_metric not in metrics:
        raise ValueError(f'save(step={step}): metrics {sorted(metrics)} lack best_metric {self._best_metric!r}.')
      metrics = {name: float(value) for name, value in metrics.items()}
    self._delete_damaged()
    if step in self._manager.all_steps():
      log.info('checkpoint: step %d is already saved in %s; not saving it again.', step, self.directory)
      return False
    latest = self._manager.latest_step()
    if latest is not None and step < latest:
      raise ValueError(f'save(step={step}): {self.directory} already holds the later step {latest}.')
    with self._write_errors(step):
      return self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop_state=ocp.args.JsonSave(loop_state)),
          metrics=metrics,
          force=force,
      )

  @contextlib.contextmanager
  def _write_errors(self, step: int | None):
    """A failed write (disk full, directory made read-only) becomes an OSError that says what is still safe."""
    try:
      yield
    except OSError as e:
      kept = sorted(set(self._manager.all_steps()) - {step})
      raise OSError(e.errno, f'Could not write checkpoint {"" if step is None else f"step {step} "}to '
                    f'{self.directory} ({e.strerror or e}). Earlier checkpoints are untouched (steps {kept}): free '
                    'space or fix permissions, then rerun the same command to resume.') from e

  def latest_step(self) -> int | None:
    """The latest saved step not found damaged by `restore`; None if there is none."""
    return max((s for s in self._manager.all_steps() if s not in self._damaged), default=None)

  def best_step(self) -> int | None:
    """The kept step with the best `best_metric` among steps saved with metrics; None if there is none."""
    return self._manager.best_step()

  def restore(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """`(step, state, loop_state)` of the latest readable step, or None if nothing was saved.

    `abstract_state` gives the structure, dtypes and shardings (e.g. `jax.eval_shape` of the state with shardings,
    or a concrete state); leaves without a sharding come back with the one they were saved with. A damaged step
    is logged as a warning and the previous step is tried; if no step can be read, the errors are raised.
    """
    self.wait_until_finished()
    errors = {}
    for step in sorted(set(self._manager.all_steps()) - self._damaged, reverse=True):
      self._check_params_match(step, abstract_state)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), loop_state=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-exception-caught  # any read failure means a damaged step
        log.warning('checkpoint: step %d in %s is damaged (%s: %s); falling back to the previous step.', step,
                  self.directory, type(e).__name__, e)
        errors[step] = f'{type(e).__name__}: {e}'
        continue
      # Only now are the failed steps known to be damaged rather than unreadable with this abstract_state (when
      # every step fails, the state structure has likely changed: nothing must be deleted).
      self._damaged.update(errors)
      return step, restored.state, restored.loop_state
    if errors:
      raise ValueError(f'No checkpoint in {self.directory} could be restored:\n'
                       + '\n'.join(f'step {step}: {error}' for step, error in errors.items()))
    return None

  def _check_params_match(self, step: int, abstract_state: Any) -> None:
    """Raises ValueError listing every param whose path, shape or dtype differs from the checkpoint's.

    A checkpoint of another model (another shape, or a tokenizer with another vocabulary) is not damaged: falling
    back to earlier steps would not help, and nothing may be deleted. Unreadable metadata is left to `restore`.
    """
    params = abstract_state.get('params') if isinstance(abstract_state, dict) else abstract_state.params
    if params is None:   # not a train state: nothing to compare
      return
    try:
      with contextlib.closing(ocp.PyTreeCheckpointHandler()) as handler:
        saved = _flatten(handler.metadata(self.directory / str(step) / 'state').tree['params'])
    except Exception:  # pylint: disable=broad-exception-caught  # damaged metadata: restore reports it
      return
    target = _flatten(params)
    if problems := _mismatches(saved, target, set()):
      problems += [f'{p}: in the checkpoint only' for p in sorted(set(saved) - set(target))]
      raise ValueError(f'The checkpoint at step {step} in {self.directory} holds another model: {len(problems)} '
                       'parameter(s) differ from the model this config and tokenizer build:\n  '
                       + '\n  '.join(problems))

  def _delete_damaged(self) -> None:
    for step in sorted(self._damaged):
      log.warning('checkpoint: deleting damaged step %d in %s.', step, self.directory)
      self._manager.delete(step)
    self._damaged.clear()

  def wait_until_finished(self) -> None:
    with self._write_errors(None):
      self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def open_checkpointer(config, workdir: str) -> Checkpointer:
  """The Checkpointer of a run: WORKDIR/checkpoints, kept and ranked as config.train says."""
  return Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=config.train.max_to_keep,
                      best_metric=config.train.best_metric, best_mode=config.train.best_mode)


def _path_str(key_path) -> str:
  """'/'-joined names of a jax key path: (DictKey('dense'), DictKey('kernel')) -> 'dense/kernel'."""
  return jax.tree_util.keystr(key_path, simple=True, separator='/')


def _flatten(tree) -> dict[str, Any]:
  return {_path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _nest(flat: dict[str, Any]) -> dict:
  """Inverse of `_flatten` for nested dicts: {'a/b': x} -> {'a': {'b': x}}."""
  tree = {}
  for path, leaf in flat.items():
    *parents, name = path.split('/')
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = leaf
  return tree


def _step_dir(path: epath.Path) -> epath.Path:
  """A step directory as given, else the latest step of PATH/checkpoints (a workdir) or of PATH itself."""
  if (path / 'state').is_dir():
    return path
  root = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
  latest = ocp.path.step.latest_step_metadata(root, ocp.path.step.standard_name_format()) if root.is_dir() else None
  if latest is None:
    raise ValueError(f'init_from={str(path)!r} is neither a checkpoint step directory (with state/) nor a workdir or '
                     'checkpoint directory holding saved steps.')
  log.info('init_from: using the latest step %d of %s (not the best one: steps are chosen by recency).',
               latest.step, root)
  return latest.path


def _mismatches(saved: dict[str, Any], target: dict[str, Any], fresh: set[str]) -> list[str]:
  """Target paths (not in `fresh`) that are missing in `saved` or differ in shape or dtype, one line each."""
  problems = []
  for p in sorted(set(target) - fresh):
    if p not in saved:
      problems.append(f'{p}: missing in the checkpoint')
    elif (tuple(saved[p].shape), saved[p].dtype) != (tuple(target[p].shape), target[p].dtype):
      problems.append(f'{p}: checkpoint {saved[p].dtype}{list(saved[p].shape)}, '
                      f'target {target[p].dtype}{list(target[p].shape)}')
  return problems


def load_params(path: str, target_params: Any, *, reinit: str = '') -> Any:
  """`target_params` with every leaf replaced by the checkpoint's `params` leaf of the same '/'-joined path.

  `path` is a workdir, its checkpoints directory, or one step directory. Leaves whose path matches the regex
  `reinit` (re.search) keep their target values; checkpoint leaves the target lacks (e.g. an MLM head under a
  classifier) are ignored with a log line. Any other missing leaf or shape/dtype mismatch is a ValueError that
  lists them all. Only the params subtree is read (partial restore): no optimizer structure is needed. Loaded
  leaves get the target leaves' shardings.
  """
  step_dir = _step_dir(epath.Path(path))
  target = _flatten(target_params)
  fresh = {p for p in target if reinit and re.search(reinit, p)}
  if reinit and not fresh:
    raise ValueError(f'init_from_reinit={reinit!r} matches no parameter path; paths: {sorted(target)}.')
  with contextlib.closing(ocp.PyTreeCheckpointHandler()) as handler:
    saved_tree = handler.metadata(step_dir / 'state').tree
    if 'params' not in saved_tree:
      raise ValueError(f'init_from: {step_dir}/state has no params subtree; its top-level keys: {sorted(saved_tree)}.')
    saved = _flatten(saved_tree['params'])
    if _scanned(saved) != _scanned(target):   # saved with the other model.scan_layers: convert the layout
      item = {'params': jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved_tree['params'])}
      restored = handler.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
          item=item, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item),
          partial_restore=True))
      saved = convert_layer_layout(_flatten(restored['params']), scanned=_scanned(target),
                                   group=_group_size(target))
      log.info('init_from %s: converted the layers to model.scan_layers=%s.', step_dir, _scanned(target))
      if problems := _mismatches(saved, target, fresh):
        raise ValueError(f'init_from {step_dir}: {len(problems)} parameter(s) cannot be loaded:\n  '
                         + '\n  '.join(problems))
      return jax.tree_util.tree_map_with_path(
          lambda kp, leaf: leaf if _path_str(kp) in fresh else saved[_path_str(kp)], target_params)
    if problems := _mismatches(saved, target, fresh):
      raise ValueError(f'init_from {step_dir}: {len(problems)} parameter(s) cannot be loaded; list them (a regex over '
                       "'/'-joined paths) in init_from_reinit to keep them freshly initialized:\n  "
                       + '\n  '.join(problems))
    if ignored := sorted(set(saved) - set(target)):
      log.info('init_from %s: ignoring checkpoint params absent from the model: %s', step_dir, ignored)
    if fresh:
      log.info('init_from %s: keeping freshly initialized params: %s', step_dir, sorted(fresh))
    if fresh == set(target):
      return target_params
    item = {'params': _nest({p: leaf for p, leaf in target.items() if p not in fresh})}
    restored = handler.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  loaded = _flatten(restored['params'])
  return jax.tree_util.tree_map_with_path(lambda kp, leaf: loaded.get(_path_str(kp), leaf), target_params)


# ---------------------------------------------------------------------------------------------------- layer layouts
# model.scan_layers=False names the layers .../layers_0/..., .../layers_1/...; True stacks them as .../layers/...
# on a leading axis (a repeating pattern of U blocks, Griffin's, as .../layers/blocks_i/..., layer n = g·U + i).
_UNSTACKED = re.compile(r'^(.*?)layers_(\d+)/(.*)$')
_STACKED = re.compile(r'^(.*?)layers/(?:blocks_(\d+)/)?(.*)$')


def _scanned(flat: dict[str, Any]) -> bool:
  return any(_STACKED.match(p) for p in flat)


def _group_size(flat: dict[str, Any]) -> int:
  """Blocks per scanned layer: 1, or the number of blocks_i under layers/."""
  return 1 + max((int(m.group(2)) for p in flat if (m := _STACKED.match(p)) and m.group(2)), default=0)


def convert_layer_layout(flat: dict[str, np.ndarray], *, scanned: bool, group: int = 1) -> dict[str, np.ndarray]:
  """Params ('/'-joined paths → arrays) in the other layout: stacked when `scanned`, one entry per layer if not.

  `group`: blocks per scanned layer (stacking; unstacking reads it from the paths).
  """
  out, stacks = {}, {}
  if scanned:
    for path, value in flat.items():
      if not (m := _UNSTACKED.match(path)):
        out[path] = value
        continue
      repeat, block = divmod(int(m.group(2)), group)
      key = f'{m.group(1)}layers/' + (f'blocks_{block}/' if group > 1 else '') + m.group(3)
      stacks.setdefault(key, {})[repeat] = value
    out.update({key: np.stack([parts[i] for i in range(len(parts))]) for key, parts in stacks.items()})
    return out
  group = _group_size(flat)
  for path, value in flat.items():
    if not (m := _STACKED.match(path)):
      out[path] = value
      continue
    block = int(m.group(2) or 0)
    for repeat, layer_value in enumerate(value):
      out[f'{m.group(1)}layers_{repeat * group + block}/{m.group(3)}'] = layer_value
  return out
