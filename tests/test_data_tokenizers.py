"""Tokenizers: fixed special ids, decode(encode(x)) == normalised x, token byte counts, save and reuse."""

import os
import unicodedata
from unittest import mock

import chex
import fixtures
import numpy as np

from lm_jax.data import tokenizers
from lm_jax.data import wordpiece

_LETTERS = list('abcdefghijklmnopqrstuvwxyzéüßø')
_ODD = ['\t', '  ', '\u00a0', '\u3000', ' \n ', 'ﬁ', 'Ａ', '😀', '<mask>', '²']


def _random_text(rng, words, n=12):
  parts = []
  for _ in range(n):
    parts.append(rng.choice(words) if rng.random() < 0.8 else rng.choice(_ODD))
    parts.append(' ' if rng.random() < 0.7 else rng.choice(['\t', '   ', '\u2003']))
  return ''.join(parts)


def _nfkc_spaces(text):
  """Independent reference for SentencePiece's nmt_nfkc normalisation on this alphabet."""
  return ' '.join(unicodedata.normalize('NFKC', text).split())


class SentencePieceTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rng = np.random.default_rng(0)
    cls.words = [''.join(rng.choice(_LETTERS, rng.integers(2, 8))) for _ in range(150)]
    cls.corpus = [' '.join(rng.choice(cls.words, 40)) for _ in range(200)]
    cls.tok = tokenizers.SentencePieceTokenizer.train(cls.corpus, vocab_size=500)

  def test_special_ids(self):
    tok = self.tok
    self.assertEqual((tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.mask_id, tok.sep_id),
                     (0, 1, 2, 3, 4, 5, 3))
    self.assertNotIn(tok.mask_id, tok.encode('a <mask> b <cls>'))   # control symbols never come from text

  def test_round_trip_is_normalized_text(self):
    rng = np.random.default_rng(1)
    for _ in range(30):
      text = _random_text(rng, self.words)
      self.assertEqual(self.tok.decode(self.tok.encode(text)), _nfkc_spaces(text), repr(text))

  def test_token_bytes_count_the_text(self):
    rng = np.random.default_rng(2)
    token_bytes = self.tok.token_bytes()
    self.assertEqual(token_bytes.shape, (self.tok.vocab_size,))
    self.assertTrue(np.all(token_bytes[:6] == 0))
    for text in [_random_text(rng, self.words) for _ in range(10)]:
      # +1: the word-boundary marker SentencePiece puts before the first word.
      self.assertEqual(token_bytes[self.tok.encode(text)].sum(), len(_nfkc_spaces(text).encode()) + 1)

  def test_batch_encoding_equals_single(self):
    batch = self.tok.encode_batch(self.corpus[:5] + [''])
    self.assertEqual([ids.dtype for ids in batch], [np.int32] * 6)
    self.assertEqual([ids.tolist() for ids in batch], [self.tok.encode(t) for t in self.corpus[:5] + ['']])

  def test_saved_tokenizer_is_reused_not_retrained(self):
    cfg = fixtures.config({'data.vocab_size': 400}).data
    directory = self.create_tempdir().full_path
    first = tokenizers.get(cfg, directory, lambda: self.corpus)

    def no_training():
      raise AssertionError('a saved tokenizer must be reused')
    again = tokenizers.get(cfg, directory, no_training)
    self.assertEqual(again.vocab_size, first.vocab_size)
    self.assertEqual(again.encode(self.corpus[7]), first.encode(self.corpus[7]))
    cfg.tokenizer = 'bytes'
    with self.assertRaisesRegex(ValueError, 'holds a sentencepiece tokenizer'):
      tokenizers.get(cfg, directory, no_training)
    cfg.tokenizer = 'chars'
    with self.assertRaisesRegex(ValueError, "data.tokenizer='chars'; allowed: sentencepiece, wordpiece, bytes"):
      tokenizers.get(cfg, directory, no_training)

  def test_training_does_not_depend_on_the_machine(self):
    models = []
    for cores in (1, 4):
      with mock.patch.object(os, 'cpu_count', return_value=cores):
        models.append(tokenizers.SentencePieceTokenizer.train(self.corpus, vocab_size=500)._proto)
    self.assertEqual(models[0], models[1])

  def test_too_small_vocab_is_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, 'data.vocab_size=100'):
      tokenizers.SentencePieceTokenizer.train(self.corpus, vocab_size=100)


class ByteTokenizerTest(chex.TestCase):

  def test_round_trip_and_bytes(self):
    rng = np.random.default_rng(3)
    tok = tokenizers.ByteTokenizer()
    self.assertEqual((tok.vocab_size, tok.pad_id, tok.eos_id, tok.mask_id), (262, 0, 3, 5))
    for _ in range(20):
      text = ''.join(chr(c) for c in rng.integers(1, 0x2FFF, 30) if not 0xD800 <= c < 0xE000)
      ids = tok.encode(text)
      self.assertEqual(tok.decode(ids), text)
      np.testing.assert_array_equal(np.asarray(ids) - 6, np.frombuffer(text.encode(), np.uint8))
      self.assertEqual(tok.token_bytes()[ids].sum(), len(text.encode()))
    self.assertEqual(tok.decode([6 + 0x61, 6 + 0xFF, 0, 3]), 'a\ufffd')   # invalid UTF-8, specials dropped
    batch = tok.encode_batch(['aé', ''])
    self.assertEqual([(ids.dtype, ids.tolist()) for ids in batch], [(np.int32, tok.encode('aé')), (np.int32, [])])


def _bert_vocab(words):
  """A BERT-shaped vocab: [PAD] 0, [unused*] 1..99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then words."""
  return (['[PAD]'] + [f'[unused{i}]' for i in range(99)] + ['[UNK]', '[CLS]', '[SEP]', '[MASK]']
          + list(words))


class WordPieceTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self.vocab = _bert_vocab(['hello', 'world', ',', '!', 'una', '##ff', '##able', 'cafe', 'Hello', '中', '##s'])
    self.tok = wordpiece.WordPieceTokenizer(self.vocab, lowercase=True)

  def test_bert_ids_and_greedy_pieces(self):
    tok = self.tok
    self.assertEqual((tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id), (0, 100, 101, 102, 103))
    ids = tok.encode('Héllo,  WORLD!\tunaffable Café中 zebra')
    self.assertEqual([self.vocab[i] for i in ids],
                     ['hello', ',', 'world', '!', 'una', '##ff', '##able', 'cafe', '中', '[UNK]'])
    self.assertEqual(tok.decode(ids), 'hello , world ! unaffable cafe 中 [UNK]')
    self.assertEqual([batch.tolist() for batch in tok.encode_batch(['Héllo,  WORLD!\tunaffable Café中 zebra', ''])],
                     [ids, []])
    cased = wordpiece.WordPieceTokenizer(self.vocab, lowercase=False)
    self.assertEqual([self.vocab[i] for i in cased.encode('Hello hello')], ['Hello', 'hello'])

  def test_round_trip_is_basic_tokenized_text(self):
    rng = np.random.default_rng(4)
    pieces = ['hello', 'world', 'unaffable', 'cafe', 'Hello', ',', '!', 'unaffables']
    for _ in range(20):
      words = list(rng.choice(pieces, 8))
      text = ''.join(w + rng.choice([' ', '', '\t', '  ']) if w in ',!' else w + rng.choice([' ', '\n']) for w in words)
      reference = ' '.join(w.lower() for w in ' '.join(words).replace(',', ' , ').replace('!', ' ! ').split())
      self.assertEqual(self.tok.decode(self.tok.encode(text)), reference, repr(text))

  def test_token_bytes(self):
    token_bytes = self.tok.token_bytes()
    self.assertTrue(np.all(token_bytes[:104] == 0))
    self.assertEqual(token_bytes[self.vocab.index('##able')], 4)
    self.assertEqual(token_bytes[self.vocab.index('hello')], 6)   # counts the space before a word

  def test_save_load_and_bad_vocabs(self):
    directory = self.create_tempdir().full_path
    tokenizers.save(self.tok, directory)
    loaded = tokenizers.load(directory)
    self.assertEqual(loaded.encode('Hello unaffable'), self.tok.encode('Hello unaffable'))
    self.assertTrue(loaded.lowercase)
    with self.assertRaisesRegex(ValueError, r'\[PAD\] at id 1'):
      wordpiece.WordPieceTokenizer(['[UNK]'] + self.vocab, lowercase=True)
    with self.assertRaisesRegex(ValueError, r"lacks the special tokens \['\[MASK\]'\]"):
      wordpiece.WordPieceTokenizer([t for t in self.vocab if t != '[MASK]'], lowercase=True)
    with self.assertRaisesRegex(ValueError, 'needs data.wordpiece_vocab'):
      wordpiece.WordPieceTokenizer.from_vocab_file('', lowercase=True)
    with self.assertRaises(FileNotFoundError):
      wordpiece.WordPieceTokenizer.from_vocab_file(os.path.join(directory, 'nope.txt'), lowercase=True)
    with mock.patch.dict(os.environ, {'HOME': directory}):
      self.assertEqual(wordpiece.WordPieceTokenizer.from_vocab_file('~/vocab.txt', lowercase=True).vocab_size,
                       len(self.vocab))
