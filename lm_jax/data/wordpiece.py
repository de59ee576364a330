"""BERT's WordPiece tokenizer over a vocab.txt (e.g. bert-base-uncased), for runs that import BERT weights.

Text is split as BERT's BasicTokenizer does (drop control characters and U+FFFD, lowercase and strip accents when
`lowercase`, split on whitespace, punctuation and CJK characters), then each word is cut greedily into the longest
vocabulary pieces ('##' marks a continuation); a word with no cut, or over 100 characters, is [UNK].
Ids are the line numbers of vocab.txt: [PAD] 0, and for BERT's vocabularies [UNK] 100, [CLS] 101, [SEP] 102,
[MASK] 103. Decoding joins words with single spaces, so decode(encode(x)) is x after the basic tokenisation:

  decode(encode('Héllo,  World!')) == 'hello , world !'   (lowercase=True)
"""

import functools
import os
import unicodedata
from typing import Sequence

import numpy as np

_MAX_WORD_CHARS = 100
_SPECIAL_NAMES = {'pad_id': '[PAD]', 'unk_id': '[UNK]', 'cls_id': '[CLS]', 'sep_id': '[SEP]', 'mask_id': '[MASK]'}
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_dropped(c: str) -> bool:
  return c in '\x00\ufffd' or unicodedata.category(c) in ('Cc', 'Cf')


def _stands_alone(c: str) -> bool:
  """Punctuation (ASCII symbols count, as in BERT) and CJK ideographs become words of their own."""
  cp = ord(c)
  return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
          or unicodedata.category(c).startswith('P') or any(lo <= cp <= hi for lo, hi in _CJK_RANGES))


class WordPieceTokenizer:
  """WordPiece over a BERT vocab.txt; see the module docstring."""
  kind = 'wordpiece'
  _FILE = 'vocab.txt'

  def __init__(self, vocab: Sequence[str], lowercase: bool):
    self._vocab = list(vocab)
    self._ids = {t: i for i, t in enumerate(self._vocab)}
    self.lowercase = bool(lowercase)
    self.vocab_size = len(self._vocab)
    missing = [t for t in _SPECIAL_NAMES.values() if t not in self._ids]
    if missing:
      raise ValueError(f'WordPiece vocab lacks the special tokens {missing}.')
    for attr, token in _SPECIAL_NAMES.items():
      setattr(self, attr, self._ids[token])
    if self.pad_id != 0:
      raise ValueError(f'WordPiece vocab has [PAD] at id {self.pad_id}; lm_jax pads with id 0.')
    self.bos_id, self.eos_id = self.cls_id, self.sep_id
    # Bounded: a large corpus has millions of distinct whitespace-separated strings.
    self._word_ids = functools.lru_cache(maxsize=1 << 20)(self._word_ids_uncached)

  @classmethod
  def from_vocab_file(cls, path: str, lowercase: bool) -> 'WordPieceTokenizer':
    if not path:
      raise ValueError('data.tokenizer=wordpiece needs data.wordpiece_vocab: the path to a BERT vocab.txt.')
    if not os.path.exists(os.path.expanduser(path)):
      raise FileNotFoundError(f'data.wordpiece_vocab={path!r} does not exist.')
    with open(os.path.expanduser(path), encoding='utf-8') as f:
      return cls([line.rstrip('\r\n') for line in f], lowercase)

  @classmethod
  def load(cls, directory: str, meta: dict) -> 'WordPieceTokenizer':
    return cls.from_vocab_file(os.path.join(directory, cls._FILE), meta['lowercase'])

  def _words(self, token: str) -> list[str]:
    """BERT's basic tokenisation of one whitespace-free string."""
    text = ''.join(c for c in token if not _is_dropped(c))
    if self.lowercase:
      text = ''.join(c for c in unicodedata.normalize('NFD', text.lower()) if unicodedata.category(c) != 'Mn')
    words, current = [], []
    for c in text:
      if _stands_alone(c):
        words += [''.join(current), c] if current else [c]
        current = []
      else:
        current.append(c)
    return words + [''.join(current)] if current else words

  def _pieces(self, word: str) -> list[int]:
    if len(word) > _MAX_WORD_CHARS:
      return [self.unk_id]
    ids, start = [], 0
    while start < len(word):
      for end in range(len(word), start, -1):
        piece = word[start:end] if start == 0 else '##' + word[start:end]
        if piece in self._ids:
          ids.append(self._ids[piece])
          start = end
          break
      else:
        return [self.unk_id]
    return ids

  def _word_ids_uncached(self, token: str) -> tuple[int, ...]:
    return tuple(i for word in self._words(token) for i in self._pieces(word))

  def encode(self, text: str) -> list[int]:
    return [i for token in text.split() for i in self._word_ids(token)]

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.array(self.encode(t), np.int32) for t in texts]

  def decode(self, ids) -> str:
    words = []
    for i in ids:
      token = self._vocab[int(i)]
      if int(i) == self.pad_id:
        continue
      if token.startswith('##') and words:
        words[-1] += token[2:]
      else:
        words.append(token)
    return ' '.join(words)

  def token_bytes(self) -> np.ndarray:
    """Word-initial pieces count the space before them; [bracketed] tokens ([PAD], [unused7], ...) count 0."""
    def size(t: str) -> int:
      if t.startswith('[') and t.endswith(']') and len(t) > 2:
        return 0
      return len(t[2:].encode()) if t.startswith('##') else len(t.encode()) + 1
    return np.array([size(t) for t in self._vocab], np.int32)

  def meta(self) -> dict:
    """What tokenizer.json holds besides vocab.txt."""
    return {'kind': self.kind, 'lowercase': self.lowercase}

  def files(self) -> dict[str, bytes]:
    return {self._FILE: '\n'.join(self._vocab).encode() + b'\n'}
