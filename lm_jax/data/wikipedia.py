"""wikipedia/<date>.<lang> from TFDS (data.tfds_name, e.g. 'wikipedia/20230601.en') for lm and mlm pretraining.

Articles ('text' feature) are tokenized, each followed by eos, and packed into rows of data.max_len tokens with
segment ids and positions (see packing.py). 'validation' is data.validation_fraction of the articles, carved with
a fixed seed; data.max_documents caps the articles read for quick runs. The first run tokenizes each split once
into the token cache (cache.py; 2 bytes per token with a vocabulary up to 65,536), in parallel over the cores, and
every later run, resume and evaluation streams rows from it: build it ahead of time with
`python -m lm_jax.tools.prepare_data --config experiments/wikipedia_lm.py`.

Preparing needs apache-beam, mwparserfromhell and mwxml and downloads the dump (~20 GB for English); TFDS's own
prepared copies are tfrecord, which needs TensorFlow: prepare with file_format='array_record' instead.
"""

import functools

# Imported for its side effect: without TensorFlow, TFDS finds the wikipedia builder only after this import.
from tensorflow_datasets.text import wikipedia as _  # pylint: disable=unused-import

from lm_jax.data import corpus as corpus_lib
from lm_jax.data import pipeline
from lm_jax.data import tfds_source

# The mirrors TFDS 4.9's builder downloads from: dumps after 2022-06-20, and older ones.
_MIRROR, _OLD_MIRROR = ('mirror.accum.se', 443), ('dumps.wikimedia.your.org', 443)
_LAST_OLD_DATE = '20220620'


def read_corpus(data_config, task: str) -> corpus_lib.Corpus:
  del task
  name = data_config.tfds_name
  if not name.startswith('wikipedia/'):
    raise ValueError(f'data.name=wikipedia needs data.tfds_name like "wikipedia/20230601.en", got {name!r}.')
  date = name.split('/')[1].split('.')[0]
  opened = tfds_source.open_splits(data_config, ('train',),
                                   download_host=_MIRROR if date > _LAST_OLD_DATE else _OLD_MIRROR,
                                   prepare_needs='apache-beam, mwparserfromhell and mwxml')
  return corpus_lib.Corpus(corpus_lib.train_and_validation_names(data_config), labelled=False,
                           identity=corpus_lib.identity(data_config, **opened.identity),
                           views=functools.cache(lambda: corpus_lib.train_and_validation(opened.docs['train'],
                                                                                         data_config)),
                           home=opened.home)


SOURCE = pipeline.corpus_source(('lm', 'mlm'), read_corpus)
