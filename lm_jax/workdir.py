"""What a run's directory holds besides checkpoints and metrics, and the checks that keep it one run:

    WORKDIR/config.json   the resolved config; a resume must have the same model and data sections
    WORKDIR/tokenizer/    the tokenizer of the run (or of the run it was initialized from)
    WORKDIR/labels.json   the class names of a classifier trained on named labels, in id order
"""

import json
import os
import re
import shutil

import jax

from lm_jax import defaults

# Config sections that fix the parameters and the tokenizer: a workdir cannot be resumed with other values.
FROZEN_SECTIONS = ('model', 'data')
# Keys whose value 0 means "follow the data" (model.num_classes): the saved config holds the resolved value.
_FOLLOWS_DATA = (('model', 'num_classes'),)
# Keys of the frozen sections that change how a step runs, not what it computes: a resume may change them.
_HOW_NOT_WHAT = (('model', 'remat'),)
LABELS_FILE = 'labels.json'


def prepare(config, workdir: str) -> None:
  """Creates the workdir; refuses a file, an unwritable directory, or a workdir of another model or data."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir={workdir!r} is a file; give a directory (it is created if missing).')
  os.makedirs(workdir, exist_ok=True)
  if not os.access(workdir, os.W_OK):
    raise PermissionError(f'--workdir={workdir!r} is not writable.')
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    current = json.loads(config.to_json())
    # A key added to lm_jax since the run was saved has its default value there.
    default = json.loads(defaults.get_config().to_json())
    was = lambda section, key: saved.get(section, {}).get(key, default[section].get(key))
    changed = [f'{section}.{key}: {was(section, key)!r} -> {value!r}'
               for section in FROZEN_SECTIONS for key, value in current[section].items()
               if was(section, key) != value and not ((section, key) in _FOLLOWS_DATA and value == 0)
               and (section, key) not in _HOW_NOT_WHAT]
    if changed:
      layout = (' (init_from converts the layers between the model.scan_layers layouts)'
                if any(c.startswith('model.scan_layers') for c in changed) else '')
      raise ValueError(f'{workdir} holds a run of another model or data ({"; ".join(changed)}). Use a new --workdir, '
                       f'or set config.init_from to start from its weights{layout}.')


def save_config(config, workdir: str) -> None:
  """WORKDIR/config.json: the resolved config of the run, written once its checkpoint (if any) has restored."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(json.loads(config.to_json()), f, indent=2)


def run_file(init_from: str, name: str) -> str | None:
  """`name` in the run directory of `init_from` (a workdir, or a checkpoint step inside one), or None."""
  candidates = [os.path.join(init_from, *['..'] * up, name) for up in range(3)]
  return next((os.path.normpath(c) for c in candidates if os.path.exists(c)), None)


def inherit_tokenizer(init_from: str, workdir: str) -> None:
  """A run initialized from another reads token ids as that run wrote them: it takes over that run's tokenizer.

  init_from is a workdir or a checkpoint step directory inside one (WORKDIR/checkpoints/STEP).
  """
  own = os.path.join(workdir, 'tokenizer')
  source = run_file(init_from, 'tokenizer')
  if source is None or not os.path.isdir(source):
    raise FileNotFoundError(f'config.init_from={init_from!r}: no tokenizer/ found in it or its parent run directory; '
                            'init_from must be a workdir of lm_jax.main or a checkpoint step inside one.')
  if not os.path.exists(own):
    shutil.copytree(source, own)


def read_label_names(run_dir: str) -> tuple[str, ...] | None:
  """The class names a run saved (WORKDIR/labels.json), or None."""
  path = os.path.join(run_dir, LABELS_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return tuple(json.load(f))


def check_and_save_label_names(config, workdir: str, names: tuple[str, ...] | None) -> None:
  """Saves the data's class names as WORKDIR/labels.json; refuses names that differ from the ones a resumed run
  saved, or from those of the classifier `init_from` loads the head of (unless init_from_reinit renews the head)."""
  saved = read_label_names(workdir)
  if saved is not None and saved != names:
    raise ValueError(f'{workdir}/{LABELS_FILE} holds the classes {list(saved)}, but the data has '
                     f'{list(names) if names else "integer labels"}: use a new --workdir for other labels.')
  if config.init_from:
    source = run_file(config.init_from, LABELS_FILE)
    loaded = read_label_names(os.path.dirname(source)) if source else None
    head_reloaded = not (config.init_from_reinit and re.search(config.init_from_reinit, 'classifier_head/kernel'))
    if loaded is not None and loaded != names and head_reloaded:
      raise ValueError(f'config.init_from={config.init_from!r} classifies {list(loaded)}, but the data has '
                       f'{list(names) if names else "integer labels"}: set config.init_from_reinit=classifier_head '
                       'to train a new head.')
  if names is not None and jax.process_index() == 0:
    with open(os.path.join(workdir, LABELS_FILE), 'w', encoding='utf-8') as f:
      json.dump(list(names), f, indent=1)
