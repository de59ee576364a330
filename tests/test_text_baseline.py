"""The byte n-gram baseline of an LM (lm_jax.baseline.ByteNgram) against hand-computed bits per byte."""

import math

from absl.testing import absltest
import numpy as np

from lm_jax import baseline


class ByteNgramTest(absltest.TestCase):

  def test_bigram_by_hand(self):
    # Training 'ab' gives the symbols a, b, END. Unigram (j = 0): N = 3, T = 3, so P_0 = (1 + 3/257) / 6 for each.
    # Bigram (j = 1): after 'a' only b (N = T = 1), after 'b' only END: P_1 = (1 + P_0) / 2 for b and for END.
    # Scoring 'ab' predicts b and END (not the first byte) over 1 byte.
    p0 = (1 + 3 / 257) / 6
    expected = -2 * math.log2((1 + p0) / 2)
    self.assertAlmostEqual(baseline.ByteNgram(['ab'], order=1).bits_per_byte(['ab']), expected, places=12)
    self.assertAlmostEqual(expected, 1.5504, places=4)

  def test_unigram_and_unseen(self):
    # Order 0 on 'aab' (a:2, b:1, END:1; N = 4, T = 3); scoring 'ba' predicts a and END over 1 byte.
    def p(count):
      return (count + 3 / 257) / 7
    expected = -(math.log2(p(2)) + math.log2(p(1)))
    self.assertAlmostEqual(baseline.ByteNgram(['aab'], order=0).bits_per_byte(['ba']), expected, places=12)
    # A byte never seen falls back to 1/257 through every order; its context 'z' is unseen, so P_1 = P_0.
    model = baseline.ByteNgram(['aab'], order=1)
    self.assertAlmostEqual(model.bits_per_byte(['zz']), -(math.log2(3 / 257 / 7) + math.log2(p(1))), places=12)
    # A lower order from a higher-order model is the model of that order.
    self.assertAlmostEqual(baseline.ByteNgram(['aab', 'ba'], order=3).bits_per_byte(['abab'], order=1),
                           baseline.ByteNgram(['aab', 'ba'], order=1).bits_per_byte(['abab']), places=12)

  def test_documents_are_independent(self):
    # A context never crosses a document: 'ab' then 'c' gives no 'b' -> 'c' count, and scoring two documents is
    # scoring each (bits add, bytes add).
    model = baseline.ByteNgram(['the cat sat', 'on the mat', 'a'], order=3)
    bits = lambda texts: model.bits_per_byte(texts) * sum(len(t) - 1 for t in texts)
    np.testing.assert_allclose(bits(['the hat', 'a mat']), bits(['the hat']) + bits(['a mat']), rtol=1e-12)
    self.assertLess(model.bits_per_byte(['the mat']), baseline.ByteNgram(['the cat sat', 'on the mat'], 0)
                    .bits_per_byte(['the mat']))   # context helps on seen text
    with self.assertRaisesRegex(ValueError, 'No byte'):
      model.bits_per_byte(['a', ''])


if __name__ == '__main__':
  absltest.main()
