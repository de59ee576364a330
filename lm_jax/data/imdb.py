"""imdb_reviews from TFDS: the real builder, stored as array_record and read without TensorFlow.

25,000 labelled training and 25,000 test movie reviews (label 0 = negative, 1 = positive), plus 50,000 unlabelled
ones. Splits here: 'train' (TFDS train minus validation), 'validation' (data.validation_fraction of TFDS train,
carved with a fixed seed, so it never overlaps train), 'test' (TFDS test: for the final report only).
For lm/mlm pretraining, data.use_unsupervised adds the unlabelled reviews to 'train'. The reviews' HTML line
breaks '<br />' become newlines.
"""

import dataclasses
import functools

from lm_jax.data import corpus as corpus_lib
from lm_jax.data import pipeline
from lm_jax.data import tfds_source

_DOWNLOAD_HOST = ('ai.stanford.edu', 80)   # aclImdb_v1.tar.gz is served over http


@dataclasses.dataclass(frozen=True)
class _Reviews:
  """Reviews with '<br />' turned into newlines."""
  docs: corpus_lib.Documents

  def __len__(self) -> int:
    return len(self.docs)

  def read(self, indices):
    texts, labels = self.docs.read(indices)
    return [t.replace(b'<br />', b'\n') if isinstance(t, bytes) else t.replace('<br />', '\n') for t in texts], labels


def read_corpus(data_config, task: str) -> corpus_lib.Corpus:
  if not data_config.tfds_name.startswith('imdb_reviews'):
    raise ValueError(f'data.name=imdb_reviews needs data.tfds_name imdb_reviews[/plain_text], got '
                     f'{data_config.tfds_name!r}.')
  unsupervised = data_config.use_unsupervised
  if unsupervised and task == 'classification':
    raise ValueError('data.use_unsupervised adds unlabelled reviews: it is for lm/mlm, not classification.')
  splits = ('train', 'test') + (('unsupervised',) if unsupervised else ())
  opened = tfds_source.open_splits(data_config, splits, download_host=_DOWNLOAD_HOST)
  docs = {s: _Reviews(d) for s, d in opened.docs.items()}

  def views():
    split_views = corpus_lib.train_and_validation(docs['train'], data_config)
    if unsupervised:
      split_views['train'] += (corpus_lib.View.all(docs['unsupervised'], data_config.max_documents),)
    split_views['test'] = (corpus_lib.View.all(docs['test'], data_config.max_documents),)
    return split_views

  return corpus_lib.Corpus(corpus_lib.train_and_validation_names(data_config) + ('test',), labelled=True,
                           identity=corpus_lib.identity(data_config, **opened.identity, use_unsupervised=unsupervised),
                           views=functools.cache(views), home=opened.home)


SOURCE = pipeline.corpus_source(pipeline.TASKS, read_corpus)
