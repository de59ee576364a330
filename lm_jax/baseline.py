"""The baselines to beat, each fitted on a run's own train split and scored on its evaluation splits.

A classifier's: TF-IDF over word and character n-grams + logistic regression, so every classification report
shows the gap to a bag of words. A language model's: a smoothed byte n-gram's bits per byte (`byte_ngram_bits`).

Word 1–2-grams and character 2–5-grams (within word boundaries), sublinear tf, each vocabulary capped; one
L2-regularized multinomial logistic regression with scikit-learn's defaults (C = 1, lbfgs): no tuning.
scikit-learn is an optional extra (`pip install 'lm_jax[baseline]'`); without it `available()` is False and the
report says so in one line.
"""

from typing import Sequence

import numpy as np

from lm_jax import report as report_lib

MAX_FEATURES = 200_000   # per vectorizer: bounds memory on large training sets


def available() -> bool:
  try:
    import sklearn  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


Labelled = tuple[Sequence[str], np.ndarray]   # (texts, class ids)


def tfidf_logistic_regression(train: Labelled, evaluate: dict[str, Labelled], *, num_classes: int,
                              names: tuple[str, ...] | None = None, seed: int = 0) -> dict:
  """{split: classification report} of the baseline fitted on `train` (texts, labels), for each split of
  `evaluate`."""
  # Imported here: scikit-learn is optional, and heavy to import.
  from sklearn import feature_extraction, linear_model, pipeline  # pylint: disable=g-import-not-at-top
  features = pipeline.make_union(
      feature_extraction.text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                                              max_features=MAX_FEATURES),
      feature_extraction.text.TfidfVectorizer(analyzer='char_wb', ngram_range=(2, 5), sublinear_tf=True,
                                              max_features=MAX_FEATURES))
  model = pipeline.make_pipeline(features, linear_model.LogisticRegression(max_iter=1000, random_state=seed))
  train_texts, train_labels = train
  model.fit(list(train_texts), np.asarray(train_labels))
  reports = {}
  for split, (texts, labels) in evaluate.items():
    predictions = model.predict(list(texts))
    confusion = report_lib.confusion_matrix(np.asarray(labels), predictions, num_classes)
    reports[split] = report_lib.classification_report(confusion, names)
  return reports


METHOD = 'TF-IDF word 1-2-grams + char 2-5-grams, logistic regression'


def for_run(data, splits: tuple[str, ...], *, num_classes: int, seed: int, evaluate_on=None) -> dict:
  """results.json's 'baseline': the method and a report per split of `splits`, fitted on `data`'s train split and
  scored on `evaluate_on`'s splits (default: `data`'s); or {'skipped': why} when scikit-learn is missing or the
  data has no texts."""
  if not available():
    return {'skipped': "scikit-learn is not installed (pip install 'lm_jax[baseline]')"}
  evaluate_on = data if evaluate_on is None else evaluate_on
  try:
    train = data.documents('train')
  except ValueError as e:
    return {'skipped': str(e)}
  reports = tfidf_logistic_regression(train, {split: evaluate_on.documents(split) for split in splits},
                                      num_classes=num_classes, names=data.label_names, seed=seed)
  return {'method': METHOD, **reports}


# ---------------------------------------------------------------------------------------------------- byte n-gram

END = 256             # the end-of-document symbol, after a document's last byte (an LM's eos)
ALPHABET = 257        # 256 bytes and END
MAX_ORDER = 6         # context bytes; a (context, symbol) key must fit an int64: 256^6 · 257 < 2^63


def _documents(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(stream, index): the non-empty texts' UTF-8 bytes, each document followed by END, as int64; index[p] is p's
  position within its document."""
  docs = [np.frombuffer(t.encode(), np.uint8) for t in texts if t]
  if not docs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  stream = np.concatenate([part for d in docs for part in (d.astype(np.int64), [END])])
  lengths = np.array([len(d) + 1 for d in docs])
  index = np.arange(len(stream)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  return stream, index


def _contexts(stream: np.ndarray, length: int) -> np.ndarray:
  """The id of the `length` bytes before each position p, Σ_m stream[p − m] · 256^(m−1); valid where p's document
  has them (then none is END)."""
  ids = np.zeros(len(stream), np.int64)
  for m in range(1, length + 1):
    ids[m:] += stream[:-m] * 256 ** (m - 1)
  return ids


class ByteNgram:
  """An interpolated byte n-gram with Witten–Bell smoothing (Witten & Bell, 1991), per document: a symbol (a byte,
  or END after the last byte) is predicted from the up to `order` bytes before it in its document.

      P_j(c | h) = (N(h, c) + T(h) · P_{j−1}(c | h′)) / (N(h) + T(h))       P_{−1}(c) = 1 / 257

  where h is the last j bytes, h′ its last j − 1, N(h, c) the training count of c after h, N(h) = Σ_c N(h, c) and
  T(h) the number of distinct symbols seen after h (P_j = P_{j−1} for an unseen h). P_0 is a smoothed unigram.
  """

  def __init__(self, texts: Sequence[str], order: int):
    if not 0 <= order <= MAX_ORDER:
      raise ValueError(f'order={order}: 0 to {MAX_ORDER} context bytes.')
    self.order = order
    stream, index = _documents(texts)
    self._keys, self._counts, self._contexts, self._totals, self._types = [], [], [], [], []
    for j in range(order + 1):
      seen = index >= j
      keys, counts = np.unique(_contexts(stream, j)[seen] * ALPHABET + stream[seen], return_counts=True)
      contexts, starts = np.unique(keys // ALPHABET, return_index=True)   # keys are sorted, so each context's run
      self._keys.append(keys)
      self._counts.append(counts)
      self._contexts.append(contexts)
      self._totals.append(np.add.reduceat(counts, starts) if len(keys) else counts)
      self._types.append(np.diff(np.append(starts, len(keys))))

  def probabilities(self, stream: np.ndarray, index: np.ndarray, order: int | None = None) -> np.ndarray:
    """P(stream[p] | the up to `order` (default: the model's) bytes before p in its document), for every p."""
    p = np.full(len(stream), 1.0 / ALPHABET)
    for j in range(min(self.order, self.order if order is None else order) + 1):
      context = _contexts(stream, j)
      n_hc = _lookup(self._keys[j], self._counts[j], context * ALPHABET + stream)
      n_h = _lookup(self._contexts[j], self._totals[j], context)
      t_h = _lookup(self._contexts[j], self._types[j], context)
      use = (index >= j) & (n_h > 0)
      p = np.where(use, (n_hc + t_h * p) / np.maximum(n_h + t_h, 1), p)
    return p

  def bits_per_byte(self, texts: Sequence[str], order: int | None = None) -> float:
    """Bits per byte on `texts` as an lm_jax LM with the byte tokenizer counts them: every symbol but a document's
    first byte is predicted (END too, costing bits and no bytes), over the bytes predicted (each document's length
    − 1; lm_jax packs documents, and the first token of one has no target). `order` ≤ the model's uses fewer
    context bytes (the same counts: the model of that order)."""
    stream, index = _documents(texts)
    predicted = index >= 1
    num_bytes = int(np.sum(predicted & (stream != END)))
    if not num_bytes:
      raise ValueError('No byte to predict: every document is shorter than 2 bytes.')
    return float(-np.sum(np.log2(self.probabilities(stream, index, order)[predicted])) / num_bytes)


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """values[i] where sorted_keys[i] == key, else 0, for each key."""
  if not len(sorted_keys):
    return np.zeros(len(keys), np.int64)
  at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
  return np.where(sorted_keys[at] == keys, values[at], 0)


def byte_ngram_bits(data, splits: tuple[str, ...], orders: Sequence[int] = tuple(range(MAX_ORDER + 1))) -> dict:
  """{'method', split: {'order<k>_bits_per_byte': ...}}: the `ByteNgram` of each order, fitted on `data`'s train
  documents (all of them, however few of them a run trains on), scored on each split's documents."""
  model = ByteNgram(data.documents('train')[0], max(orders))
  out = {'method': 'Witten-Bell interpolated byte n-gram (lm_jax.baseline.ByteNgram), fitted on the train split'}
  for split in splits:
    texts = data.documents(split)[0]
    out[split] = {f'order{order}_bits_per_byte': model.bits_per_byte(texts, order) for order in orders}
  return out
