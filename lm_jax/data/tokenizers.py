"""Tokenizers: SentencePiece trained on the training split, BERT WordPiece, raw bytes, and named symbols (mqar).

Every tokenizer has `vocab_size`, `pad_id == 0` and all of `unk_id bos_id eos_id sep_id cls_id mask_id`;
`encode(text) -> list[int]` (no special ids added), `encode_batch(texts) -> list of int32 arrays` (the token
cache's bulk path: no Python int per token), `decode(ids) -> str`,
`token_bytes() -> int32 [vocab_size]`: the UTF-8 length of each token's text, 0 for special tokens, so that
bits per byte = sum(nll) / ln 2 / sum(token_bytes[targets]); and `files()`, `meta()`: what `save` writes.

Fixed special ids (the pipeline separates packed documents with eos and frames classification inputs as
cls, tokens, sep):

                 pad  unk  bos  eos  cls  mask  sep    regular tokens
  sentencepiece   0    1    2    3    4    5    =eos   6 ... (byte-fallback pieces <0x00>..<0xFF> first)
  bytes           0    1    2    3    4    5    =eos   byte b -> b + 6 (vocab_size 262)
  symbols         0    1    2    3    4    5    =eos   6 ... (mqar keys and values)
  wordpiece       0   100  =cls =sep  101  103   102   BERT's vocab.txt ids ([PAD] [UNK] [CLS] [SEP] [MASK])

SentencePiece is a unigram model with byte fallback (never produces unk) and NFKC normalisation; cls and mask are
control symbols, so the text '<mask>' is ordinary text, never the mask id. A tokenizer is saved into the run's
tokenizer directory (tokenizer.json + its model file) and loaded from there on resume, evaluation and prediction.
A trained SentencePiece model is also kept in the token cache (see `get`), so that every run over the same data
gets the same model without training it again; `fingerprint` names a tokenizer by the bytes it saves.
"""

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import sentencepiece as spm

from lm_jax.data import wordpiece

log = logging.getLogger(__name__)

SPECIAL_PIECES = ('<pad>', '<unk>', '<s>', '</s>', '<cls>', '<mask>')
_MAX_TRAIN_CHARS = 1 << 14   # per document for sentencepiece training, within its 64 KiB sentence limit
# SentencePiece's trained model depends on its thread count (each thread sums the statistics of its share of the
# sentences): a fixed count gives every machine the same model from the same texts.
_TRAIN_THREADS = 16


META_FILE = 'tokenizer.json'   # names the kind; written last, so a directory holding it is complete


class _FixedSpecials:
  pad_id, unk_id, bos_id, eos_id, cls_id, mask_id = range(6)
  sep_id = eos_id
  num_specials = 6

  def meta(self) -> dict:
    """What tokenizer.json holds besides the model files."""
    return {'kind': self.kind}


class SentencePieceTokenizer(_FixedSpecials):
  """SentencePiece unigram model; see the module docstring for its ids."""
  kind = 'sentencepiece'
  _FILE = 'spm.model'

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.vocab_size()
    pieces = tuple(self._sp.id_to_piece(i) for i in range(self.num_specials))
    if pieces != SPECIAL_PIECES:
      raise ValueError(f'SentencePiece model has special pieces {pieces}, expected {SPECIAL_PIECES} at ids 0..5.')
    self.encode_threads = os.cpu_count() or 1   # token cache workers set 1: they are the parallelism

  @classmethod
  def train(cls, texts: Sequence[str], vocab_size: int) -> 'SentencePieceTokenizer':
    if not texts:
      raise ValueError('No non-empty training documents to train SentencePiece on.')
    log.info('Training a SentencePiece model (vocab %d) on %d documents (%.1f MB).', vocab_size, len(texts),
             sum(map(len, texts)) / 1e6)
    start = time.perf_counter()
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter([t[:_MAX_TRAIN_CHARS] for t in texts]), model_writer=model,
          vocab_size=vocab_size, model_type='unigram', pad_id=0, unk_id=1, bos_id=2, eos_id=3,
          control_symbols=list(SPECIAL_PIECES[4:]), byte_fallback=True, hard_vocab_limit=False,
          max_sentence_length=4 * _MAX_TRAIN_CHARS, num_threads=_TRAIN_THREADS, minloglevel=2)
    except RuntimeError as e:
      raise ValueError(f'SentencePiece training with data.vocab_size={vocab_size} failed: {e}') from e
    tok = cls(model.getvalue())
    log.info('Trained SentencePiece in %.1fs.', time.perf_counter() - start)
    if tok.vocab_size < vocab_size:
      log.warning('SentencePiece: the corpus supports only %d of the %d pieces asked for (data.vocab_size).',
                      tok.vocab_size, vocab_size)
    return tok

  @classmethod
  def load(cls, directory: str, meta: dict) -> 'SentencePieceTokenizer':
    del meta
    with open(os.path.join(directory, cls._FILE), 'rb') as f:
      return cls(f.read())

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return self._sp.encode(list(texts), num_threads=self.encode_threads, out_type='numpy')

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])

  def token_bytes(self) -> np.ndarray:
    sp = self._sp
    return np.array([0 if sp.is_control(i) or sp.is_unknown(i) else 1 if sp.is_byte(i)
                     else len(sp.id_to_piece(i).replace('\u2581', ' ').encode()) for i in range(self.vocab_size)],
                    np.int32)

  def files(self) -> dict[str, bytes]:
    return {self._FILE: self._proto}


class ByteTokenizer(_FixedSpecials):
  """UTF-8 bytes: byte b is id b + 6 (vocab 262); decoding replaces invalid sequences with U+FFFD."""
  kind = 'bytes'
  vocab_size = 256 + _FixedSpecials.num_specials

  @classmethod
  def load(cls, directory: str, meta: dict) -> 'ByteTokenizer':
    del directory, meta
    return cls()

  def _id_array(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8).astype(np.int32) + self.num_specials

  def encode(self, text: str) -> list[int]:
    return self._id_array(text).tolist()

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self._id_array(t) for t in texts]

  def decode(self, ids) -> str:
    ids = np.asarray(ids, np.int64)
    return bytes((ids[ids >= self.num_specials] - self.num_specials).astype(np.uint8)).decode(errors='replace')

  def token_bytes(self) -> np.ndarray:
    return (np.arange(self.vocab_size) >= self.num_specials).astype(np.int32)

  def files(self) -> dict[str, bytes]:
    return {}


class SymbolTokenizer(_FixedSpecials):
  """A fixed list of whitespace-free symbols (the first six are the specials); text is symbols joined by spaces.

  SymbolTokenizer(['<pad>', ..., '<mask>', 'k0', 'v0']).encode('k0 v0 k0') == [6, 7, 6]
  """
  kind = 'symbols'
  _FILE = 'symbols.txt'

  def __init__(self, symbols: Sequence[str]):
    if tuple(symbols[:self.num_specials]) != SPECIAL_PIECES:
      raise ValueError(f'The first symbols must be {SPECIAL_PIECES}, got {tuple(symbols[:self.num_specials])}.')
    self._symbols = list(symbols)
    self._ids = {s: i for i, s in enumerate(symbols)}
    self.vocab_size = len(symbols)

  @classmethod
  def load(cls, directory: str, meta: dict) -> 'SymbolTokenizer':
    del meta
    with open(os.path.join(directory, cls._FILE), encoding='utf-8') as f:
      return cls(f.read().split('\n'))

  def encode(self, text: str) -> list[int]:
    return [self._ids.get(s, self.unk_id) for s in text.split()]

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.array(self.encode(t), np.int32) for t in texts]

  def decode(self, ids) -> str:
    return ' '.join(self._symbols[int(i)] for i in ids if int(i) != self.pad_id)

  def token_bytes(self) -> np.ndarray:
    return np.array([0] * self.num_specials + [len(s.encode()) for s in self._symbols[self.num_specials:]], np.int32)

  def files(self) -> dict[str, bytes]:
    return {self._FILE: '\n'.join(self._symbols).encode()}


_KINDS = {c.kind: c for c in (SentencePieceTokenizer, wordpiece.WordPieceTokenizer, ByteTokenizer, SymbolTokenizer)}


def save(tok, directory: str) -> None:
  """Writes the tokenizer's files, each atomically (temp file, then rename), and tokenizer.json last, so a
  directory holding tokenizer.json is complete even when several processes save the same tokenizer at once."""
  os.makedirs(directory, exist_ok=True)
  for name, data in {**tok.files(), META_FILE: json.dumps(tok.meta(), indent=1).encode()}.items():
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{name}.')
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide a shared cache's tokenizer from other users
    os.replace(tmp, os.path.join(directory, name))


def fingerprint(tok) -> str:
  """A hash of everything `save` writes: equal for equal tokenizers, whichever run trained or saved them."""
  digest = hashlib.sha256(json.dumps(tok.meta(), sort_keys=True).encode())
  for name, data in sorted(tok.files().items()):
    digest.update(f'\0{name}\0{len(data)}\0'.encode())
    digest.update(data)
  return digest.hexdigest()


def is_saved(directory: str) -> bool:
  return bool(directory) and os.path.exists(os.path.join(directory, META_FILE))


def load(directory: str):
  """The tokenizer saved in `directory` by `save`."""
  with open(os.path.join(directory, META_FILE), encoding='utf-8') as f:
    meta = json.load(f)
  if meta.get('kind') not in _KINDS:
    raise ValueError(f'{directory}/{META_FILE} names tokenizer kind {meta.get("kind")!r}; '
                     f'known: {sorted(_KINDS)}.')
  return _KINDS[meta['kind']].load(directory, meta)


def _sentencepiece(data_config, train_texts: Callable[[], list[str]], trained_dir: str) -> SentencePieceTokenizer:
  train = lambda: SentencePieceTokenizer.train(train_texts(), data_config.vocab_size)
  return load_or_make(trained_dir, SentencePieceTokenizer.kind, train) if trained_dir else train()


# data.tokenizer -> (data_config, train_texts, trained_dir) -> a new tokenizer; the keys are the allowed values.
MAKERS = {
    'sentencepiece': _sentencepiece,
    'wordpiece': lambda cfg, *_: wordpiece.WordPieceTokenizer.from_vocab_file(cfg.wordpiece_vocab, cfg.lowercase),
    'bytes': lambda *_: ByteTokenizer(),
}


def get(data_config, tokenizer_dir: str, train_texts: Callable[[], list[str]], trained_dir: str = ''):
  """The tokenizer saved in `tokenizer_dir`, else a new one (config.data.tokenizer) saved there.

  A SentencePiece model is taken from `trained_dir` when it holds one (the token cache's, keyed by the training
  data and vocab size), else trained on `train_texts()` and saved there too.
  """
  if data_config.tokenizer not in MAKERS:
    raise ValueError(f'data.tokenizer={data_config.tokenizer!r}; allowed: {", ".join(MAKERS)}.')
  make = MAKERS[data_config.tokenizer]
  return load_or_make(tokenizer_dir, data_config.tokenizer, lambda: make(data_config, train_texts, trained_dir))


def load_or_make(tokenizer_dir: str, kind: str, make: Callable[[], object]):
  """The `kind` tokenizer saved in `tokenizer_dir`, else `make()`, saved there first."""
  if not tokenizer_dir:
    raise ValueError('tokenizer_dir is empty: the tokenizer is saved with the run (WORKDIR/tokenizer).')
  if is_saved(tokenizer_dir):
    tok = load(tokenizer_dir)
    if tok.kind != kind:
      raise ValueError(f'{tokenizer_dir} holds a {tok.kind} tokenizer, this run needs {kind}: use the '
                       'configuration the run was started with, or a new workdir.')
    return tok
  tok = make()
  save(tok, tokenizer_dir)
  log.info('Saved a %s tokenizer (vocab %d) to %s.', tok.kind, tok.vocab_size, tokenizer_dir)
  return tok
