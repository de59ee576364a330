"""Text cleaning (lm_jax.data.corpus.clean_text): its fast path against the full cleaning, on every character."""

import random
import re
import sys

import chex

from lm_jax.data import corpus as corpus_lib

_CONTROL = re.compile(r'[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff]')   # as the corpus module documents them


def _full_cleaning(raw, stats):
  """The reference: every document through every substitution (clean_text before its fast path)."""
  stats.documents += 1
  if isinstance(raw, bytes):
    text = raw.decode('utf-8', errors='replace')
    stats.invalid_utf8 += text != raw.decode('utf-8', errors='ignore')
  else:
    text = re.sub(r'[\ud800-\udfff]', '\ufffd', raw)
    stats.invalid_utf8 += text != raw
  text = text.replace('\r\n', '\n')
  text, n = _CONTROL.subn('', text)
  stats.control_chars += bool(n)
  text, n = re.subn(r'[^\S\n ]', ' ', text)
  stats.odd_whitespace += bool(n)
  text = text.strip()
  stats.empty += not text
  stats.text_bytes += len(text.encode())
  return text


_PIECES = ['word', ' ', '\n', '\r\n', '\r', '\t', '\x00', '\x1f', '\x7f', '\x85', '\x9f', '\xa0', '\u2003', '\u2028',
           '\u3000', '\ufeff', 'é', '漢', '😀', '\ufffd']


class CleanTextTest(chex.TestCase):

  def test_fast_path_finds_every_character_the_cleaning_changes(self):
    changed = {c for c in map(chr, range(sys.maxunicode + 1)) if _CONTROL.match(c) or (c.isspace() and c not in '\n ')}
    found = {c for c in map(chr, range(sys.maxunicode + 1)) if corpus_lib._needs_cleaning(c)}
    self.assertEqual(found, changed)
    self.assertIn('\r', found)   # of '\r\n', which becomes '\n'
    self.assertGreater(len(changed), 60)

  def test_equals_full_cleaning_on_random_documents(self):
    rng = random.Random(0)
    want_stats, got_stats = corpus_lib.TextStats(), corpus_lib.TextStats()
    for i in range(3000):
      # A third plain words (the fast path), the rest with odd characters; str and bytes, some bytes not UTF-8.
      pieces = ['word', ' ', '\n'] if i % 3 == 0 else _PIECES
      text = ''.join(rng.choices(pieces, k=rng.randrange(12)))
      raw = text.encode() if i % 2 else text
      if i % 7 == 0:
        raw = raw + b'\xff' if isinstance(raw, bytes) else raw + '\udcff'
      self.assertEqual(corpus_lib.clean_text(raw, got_stats), _full_cleaning(raw, want_stats), repr(raw))
    self.assertEqual(got_stats, want_stats)
    self.assertTrue(all((want_stats.invalid_utf8, want_stats.control_chars, want_stats.odd_whitespace,
                         want_stats.empty)), want_stats)
