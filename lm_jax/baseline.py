"""The baseline to beat: TF-IDF over word and character n-grams + logistic regression, trained on the run's own
train split and scored on its evaluation splits, so every classification report shows the gap to a bag of words.

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
