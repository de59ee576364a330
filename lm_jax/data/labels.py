"""Class labels of your own files: class names or integer ids, mapped to ids the same way in every split.

A label is a class name ('positive', 'neutral', ...) or a non-negative integer (an int, or its decimal string);
the labels of one dataset are all of one kind. Names become ids in sorted order, or in the order of
data.label_names when given:

    train labels ['pos', 'neg', 'neutral', 'pos'] → names ('neg', 'neutral', 'pos'), ids [2, 0, 1, 2]

Integer labels are the ids themselves; data.label_names then names them (it must cover every id). The class set is
the training files': a validation or test label that training does not have is an error naming it, its file and
line. The names are saved in the token cache beside the ids, and a run saves them as WORKDIR/labels.json.
"""

import array
from typing import Sequence

import numpy as np

MAX_ID = 2**31 - 1   # the token cache holds int32 labels


class RawLabels:
  """The labels of one split as its files hold them, compactly (a 4-byte code per record, not a Python object): each
  record's index into `distinct`, and where the record is (file and line), for errors."""

  def __init__(self, files: Sequence[str]):
    self.files = list(files)
    self.distinct: list[int | str] = []
    self._code: dict[int | str, int] = {}
    self._codes, self._file_of, self._lines = array.array('i'), array.array('i'), array.array('q')

  def add(self, value: int | str, file_number: int, line: int) -> None:
    """Records the label `value` (from `raw_label`) of the next record, at `line` of file `file_number`."""
    code = self._code.setdefault(value, len(self.distinct))
    if code == len(self.distinct):
      self.distinct.append(value)
    self._codes.append(code)
    self._file_of.append(file_number)
    self._lines.append(line)

  def __len__(self) -> int:
    return len(self._codes)

  @property
  def codes(self) -> np.ndarray:
    return np.frombuffer(self._codes, np.int32)

  def value(self, i: int) -> int | str:
    return self.distinct[self._codes[i]]

  def where(self, i: int) -> str:
    return f'{self.files[self._file_of[i]]}:{self._lines[i]}'

  def first_of(self, values) -> int:
    """The index of the first record whose label is one of `values`."""
    wanted = [self._code[v] for v in values]
    return int(np.flatnonzero(np.isin(self.codes, wanted))[0])


def raw_label(value, where: str) -> int | str:
  """An int for an integer label (an int >= 0 or its decimal string), the stripped text for a class name.

    raw_label('3', w) == 3;  raw_label(' pos ', w) == 'pos';  raw_label(-1, w), raw_label(1.5, w) → ValueError
  """
  if isinstance(value, str):
    text = value.strip()
    if text.isascii() and text.isdigit():   # '²'.isdigit() too, hence isascii
      label = int(text)
    elif text:
      return text
    else:
      raise ValueError(f'{where}: the label (data.label_column) is empty.')
  elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
    label = value
  else:
    raise ValueError(f'{where}: label {value!r} (data.label_column) is neither a class name (a string) nor a '
                     'non-negative integer.')
  if label > MAX_ID:
    raise ValueError(f'{where}: label {value!r} (data.label_column) is too large: the token cache holds int32.')
  return label


def _check_one_kind(splits: dict[str, RawLabels]) -> bool:
  """True when every label is a name, False when every label is an integer; ValueError naming a mixed pair."""
  first = next(((raw, 0) for raw in splits.values() if len(raw)), None)
  if first is None:
    return False
  named = isinstance(first[0].value(0), str)
  for raw in splits.values():
    other = [v for v in raw.distinct if isinstance(v, str) != named]
    if other:
      i = raw.first_of(other)
      raise ValueError(f'{raw.where(i)}: label {raw.value(i)!r} and {first[0].where(0)}: label {first[0].value(0)!r} '
                       'mix class names and integer ids (data.label_column): use one kind for every label.')
  return named


def assign_ids(splits: dict[str, RawLabels], label_names: Sequence[str] = ()
               ) -> tuple[dict[str, np.ndarray], tuple[str, ...] | None]:
  """({split: int32 ids}, class names or None) for the raw labels of every split; see the module docstring.

  `splits` holds 'train' first; `label_names` is data.label_names (empty: names in sorted order).
  """
  label_names = tuple(label_names)
  if len(set(label_names)) != len(label_names):
    raise ValueError(f'data.label_names={list(label_names)} names a class twice.')
  named = _check_one_kind(splits)
  if not named:
    for raw in splits.values():
      unnamed = [v for v in raw.distinct if label_names and v >= len(label_names)]
      if unnamed:
        i = raw.first_of(unnamed)
        raise ValueError(f'{raw.where(i)}: label {raw.value(i)} has no name in data.label_names={list(label_names)} '
                         f'(ids 0..{len(label_names) - 1}).')
    ids = {split: np.asarray(raw.distinct, np.int32)[raw.codes] if len(raw) else np.zeros(0, np.int32)
           for split, raw in splits.items()}
    return ids, label_names or None
  names = label_names or tuple(sorted(splits['train'].distinct))
  index = {name: i for i, name in enumerate(names)}
  ids = {}
  for split, raw in splits.items():
    unknown = [v for v in raw.distinct if v not in index]
    if unknown:
      i = raw.first_of(unknown)
      source = 'data.label_names' if label_names else 'the training files (data.paths)'
      raise ValueError(f'{raw.where(i)}: label {raw.value(i)!r} of the {split} split is not one of the classes of '
                       f'{source}: {list(names)}.')
    ids[split] = np.asarray([index[v] for v in raw.distinct] or [0], np.int32)[raw.codes]
  return ids, names
