"""Datasets by name (config.data.name), all yielding the batch contract of pipeline.py.

  data = lm_jax.data.get_dataset(config.data, task='classification', seed=config.seed,
                                 tokenizer_dir=workdir + '/tokenizer')
  for batch in data.train_iterator(config.train.batch_size): ...

Batches are numpy dicts whose leading axis is this process's share of the global batch:
  classification  inputs int32 [B, T] (cls, tokens, sep, pad 0), label int32 [B], weights float32 [B]
  lm              inputs, targets (next token) int32 [B, T], weights float32 [B, T] (0 on padding and where the
                  next token is another document's), segment_ids and positions int32 [B, T] when packed
  mlm             inputs (masked), targets (original ids), weights (1 on masked positions), segment_ids, positions
Eval batches are full-size, the last one filled up with rows whose weights are 0.

Text datasets are tokenized once into the token cache (cache.py: data.cache_dir, or beside the dataset) and every
later run, resume and evaluation reads its rows from there; `python -m lm_jax.tools.prepare_data --config ...` builds it
ahead of time.
"""

from lm_jax.data import imdb
from lm_jax.data import mqar
from lm_jax.data import pipeline
from lm_jax.data import text_files
from lm_jax.data import wikipedia
from lm_jax.data.pipeline import Data

SOURCES: dict[str, pipeline.Source] = {
    'imdb_reviews': imdb.SOURCE,
    'wikipedia': wikipedia.SOURCE,
    'text_files': text_files.TEXT_FILES,
    'csv': text_files.CSV,
    'jsonl': text_files.JSONL,
    'mqar': mqar.SOURCE,
}


def get_dataset(data_config, *, task: str, seed: int, tokenizer_dir: str) -> Data:
  """The Data of config.data.name for `task` (classification | lm | mlm); see the module docstring."""
  if data_config.name not in SOURCES:
    raise ValueError(f'data.name={data_config.name!r}; allowed: {", ".join(SOURCES)}.')
  source = SOURCES[data_config.name]
  if task not in source.tasks:
    raise ValueError(f'data.name={data_config.name!r} serves tasks {", ".join(source.tasks)}, not {task!r}.')
  return source.make_data(data_config, task=task, seed=seed, tokenizer_dir=tokenizer_dir)


__all__ = ['Data', 'SOURCES', 'get_dataset']
