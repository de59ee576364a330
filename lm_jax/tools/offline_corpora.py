"""Real English text that installs offline, as files lm_jax reads: a labelled set and a pretraining corpus.

  apt-get install fortunes dict-gcide
  python -m lm_jax.tools.offline_corpora --out data/offline

writes
  fortunes/{train,validation,test}.csv   text,label: the fortune-cookie quotes of the --categories of Debian's
                                         `fortunes` package, labelled by category, split 70/10/20 by a hash of
                                         the text (so every run splits them alike)
  pretrain/fortunes.txt                  every other fortune (the other categories, and the chosen categories'
                                         training quotes), one document per quote, blank-line separated
  pretrain/gcide.txt                     the entries of GCIDE (Webster's 1913 dictionary with WordNet glosses,
                                         `dict-gcide`), one document per entry, blank-line separated
The pretraining files hold no validation or test quote. Quotes repeated verbatim across categories are dropped.
"""

import argparse
import collections
import csv
import gzip
import hashlib
import os
import re

FORTUNES_DIR = '/usr/share/games/fortunes'
GCIDE = '/usr/share/dictd/gcide.dict.dz'
CATEGORIES = ('computers', 'politics', 'science', 'work', 'men-women')
_GCIDE_ENTRY = re.compile(r'\n\n(?=\S[^\n]*\\[^\n]*\\)')   # an entry starts with 'Word \pron\ ...'


def read_fortunes(category: str) -> list[str]:
  """The quotes of one fortunes file (separated by lines holding only '%'), stripped, non-empty."""
  path = os.path.join(FORTUNES_DIR, category)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: apt-get install fortunes')
  with open(path, encoding='utf-8', errors='replace') as f:
    return [q.strip() for q in re.split(r'^%$', f.read(), flags=re.MULTILINE) if q.strip()]


def _split_of(text: str) -> str:
  bucket = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10
  return 'train' if bucket < 7 else 'validation' if bucket == 7 else 'test'


def write_fortunes(out: str, categories: tuple[str, ...]) -> dict[str, collections.Counter]:
  """The labelled csv files and pretrain/fortunes.txt; returns the examples per split and class."""
  every = [name for name in sorted(os.listdir(FORTUNES_DIR))
           if not name.endswith(('.dat', '.u8')) and os.path.isfile(os.path.join(FORTUNES_DIR, name))]
  quotes = {name: read_fortunes(name) for name in every}
  seen = collections.Counter(q for qs in quotes.values() for q in set(qs))
  rows = {'train': [], 'validation': [], 'test': []}
  unlabelled = []
  for name, qs in quotes.items():
    for quote in dict.fromkeys(qs):
      if seen[quote] > 1:
        continue
      split = _split_of(quote)
      if name in categories:
        rows[split].append((quote, name))
      if name not in categories or split == 'train':
        unlabelled.append(quote)
  os.makedirs(os.path.join(out, 'fortunes'), exist_ok=True)
  for split, split_rows in rows.items():
    with open(os.path.join(out, 'fortunes', f'{split}.csv'), 'w', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(['text', 'label'])
      writer.writerows(split_rows)
  _write_documents(os.path.join(out, 'pretrain', 'fortunes.txt'), unlabelled)
  return {split: collections.Counter(label for _, label in split_rows) for split, split_rows in rows.items()}


def write_gcide(out: str) -> int:
  """pretrain/gcide.txt; returns the number of entries."""
  if not os.path.exists(GCIDE):
    raise FileNotFoundError(f'{GCIDE} is missing: apt-get install dict-gcide')
  with gzip.open(GCIDE, 'rt', encoding='utf-8', errors='replace') as f:
    text = f.read()
  entries = [e.strip() for e in _GCIDE_ENTRY.split(text)[1:] if len(e.strip()) > 40]   # [0]: the license header
  _write_documents(os.path.join(out, 'pretrain', 'gcide.txt'), entries)
  return len(entries)


def _write_documents(path: str, documents: list[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    # A blank line inside a document would split it: lm_jax's text_files reads blank-line separated documents.
    f.write('\n\n'.join(re.sub(r'\n\s*\n', '\n', d) for d in documents) + '\n')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='Output directory.')
  parser.add_argument('--categories', default=','.join(CATEGORIES), help='Comma-separated fortunes files to label.')
  args = parser.parse_args()
  counts = write_fortunes(args.out, tuple(c.strip() for c in args.categories.split(',') if c.strip()))
  for split, by_class in counts.items():
    print(f'fortunes {split}: {sum(by_class.values())} quotes, {dict(sorted(by_class.items()))}')
  print(f'gcide: {write_gcide(args.out)} entries')


if __name__ == '__main__':
  main()
