"""A trained (or converted) run as a Python object: what `lm_jax.load(workdir)` returns and `lm_jax.predict` uses.

    run = lm_jax.load('runs/imdb')             # config.json, tokenizer/ and the best checkpoint
    run.classify(['A fine film.']).labels      # classification runs
    run.generate(['k0 v3 k1 v5 k0'], max_new_tokens=1, temperature=0)   # lm runs
    run.logits(ids_BxT)                        # any run: what the model returns

Texts are cleaned as training cleaned them (`corpus.clean_text`), then encoded as the data pipeline frames them:
classification `[CLS] tokens [SEP]` truncated to data.max_len; an LM prompt as its plain tokens (documents start at
position 0 without a start token). Many texts go through in batches of `batch_size` (default
config.train.eval_batch_size); sequence lengths are rounded up to a power of two, so few shapes are compiled.
"""

import functools
import json
import logging
import math
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm_jax import checkpoint
from lm_jax import models
from lm_jax import workdir as workdir_lib
from lm_jax.data import corpus
from lm_jax.data import tokenizers
from lm_jax.models.generate import left_pad

log = logging.getLogger(__name__)
_MIN_BUCKET = 8


class Classification(NamedTuple):
  labels: np.ndarray          # int [N], the most probable class
  probabilities: np.ndarray   # float32 [N, num_classes], softmax of the logits


def _bucket(length: int, limit: int | None) -> int:
  """The smallest power of two >= length (at least 8), capped at `limit`."""
  size = max(_MIN_BUCKET, 1 << math.ceil(math.log2(max(length, 1))))
  return size if limit is None else max(min(size, limit), length)


def _batches(items: Sequence, size: int):
  for start in range(0, len(items), size):
    yield items[start:start + size]


class LoadedRun:
  """The config, tokenizer, model and params of one checkpoint of a workdir; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, tokenizer, model, params, *, step: int, workdir: str):
    self.config, self.tokenizer, self.model, self.params = config, tokenizer, model, params
    self.step, self.workdir = step, workdir
    self.label_names = workdir_lib.read_label_names(workdir)   # a classifier trained on named labels, else None
    self._apply = jax.jit(lambda params, ids, kwargs: model.apply({'params': params}, ids, **kwargs))

  @property
  def task(self) -> str:
    return self.config.model.task

  def __repr__(self) -> str:
    return (f'LoadedRun({self.workdir!r}, step={self.step}, model={self.config.model.name}, task={self.task}, '
            f'{models.count_params(self.params)} params)')

  def logits(self, ids_BxT, **kwargs) -> jax.Array:
    """The model's float32 logits for int32 ids `[B, T]` (pad 0); kwargs as the model takes them, e.g.
    token_type_ids, segment_ids, positions."""
    return self._apply(self.params, jnp.asarray(ids_BxT, jnp.int32), kwargs)

  def _encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(corpus.clean_text(text, corpus.TextStats()))

  def _require(self, task: str, method: str) -> None:
    if self.task != task:
      raise ValueError(f'{method}() needs a run with model.task={task!r}; {self.workdir} is a {self.task!r} run.')

  def classify(self, texts: Sequence[str], batch_size: int = 0) -> Classification:
    """The label and class probabilities of each text."""
    self._require('classification', 'classify')
    max_len, tok = self.config.data.max_len, self.tokenizer
    rows = [[tok.cls_id, *self._encode(t)[:max_len - 2], tok.sep_id] for t in texts]
    probabilities = []
    for batch in _batches(rows, batch_size or self.config.train.eval_batch_size):
      ids = np.zeros((len(batch), _bucket(max(map(len, batch)), max_len)), np.int32)
      for row, row_ids in zip(ids, batch):
        row[:len(row_ids)] = row_ids
      probabilities.append(np.asarray(jax.nn.softmax(self.logits(ids), axis=-1)))
    probabilities = np.concatenate(probabilities) if probabilities else np.zeros((0, self.config.model.num_classes))
    return Classification(probabilities.argmax(axis=-1), probabilities.astype(np.float32))

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0,
               seed: int = 0, batch_size: int = 0) -> list[str]:
    """The continuation of each prompt (cached decoding, `lm_jax.models.generate`), cut at the first
    end-of-document token. Prompts longer than the model's decode limit minus max_new_tokens keep their last tokens.
    """
    self._require('lm', 'generate')
    limit = self.model.max_decode_length
    room = None if limit is None else limit - max_new_tokens
    if room is not None and room < 1:
      raise ValueError(f'max_new_tokens={max_new_tokens} leaves no room for a prompt in the {limit} positions '
                       '(data.max_len) the model decodes.')
    prompt_ids = []
    for text in prompts:
      ids = self._encode(text)
      if not ids:
        raise ValueError(f'The prompt {text!r} has no tokens: there is nothing to continue.')
      if room is not None and len(ids) > room:
        log.warning('A prompt of %d tokens keeps its last %d (data.max_len %d - max_new_tokens %d).', len(ids), room,
                    limit, max_new_tokens)
        ids = ids[-room:]
      prompt_ids.append(ids)
    out = []
    for i, batch in enumerate(_batches(prompt_ids, batch_size or self.config.train.eval_batch_size)):
      padded = left_pad(batch, _bucket(max(map(len, batch)), room))
      tokens = models.generate(self.model, self.params, padded, max_new_tokens=max_new_tokens,
                                     temperature=temperature, top_k=top_k,
                                     rng=jax.random.fold_in(jax.random.key(seed), i))
      for new in np.asarray(tokens[:, padded.shape[1]:]):
        ends = np.flatnonzero(new == self.tokenizer.eos_id)
        out.append(self.tokenizer.decode(new[:ends[0]] if len(ends) else new))
    return out


def one_text_per_line(content: str) -> list[str]:
  """Splits on newlines only ('\\n', and '\\r\\n' as one): a text may hold other Unicode line separators (U+2028,
  U+0085, form feeds, ...) that `str.splitlines` would split it at.

    one_text_per_line('a\\u2028b\\r\\nc\\n') == ['a\\u2028b', 'c', '']
  """
  return [line.removesuffix('\r') for line in content.split('\n')]


def _read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    what = 'does not exist' if not os.path.isdir(workdir) else 'has no config.json'
    raise FileNotFoundError(f'{workdir} {what}: give the workdir of a run of lm_jax.main, or one written by '
                            'lm_jax.tools.convert.')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


def choose_step(workdir: str, config: ml_collections.ConfigDict, step: int | None = None) -> int:
  """`step` if given (it must be saved), else the best step by train.best_metric, else the latest."""
  directory = os.path.join(workdir, 'checkpoints')
  saved = sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []
  if not saved:
    raise FileNotFoundError(f'{workdir} has no checkpoint (nothing in {directory}): train it first.')
  if step is not None:
    if step not in saved:
      raise ValueError(f'{workdir} has no checkpoint of step {step}; saved steps: {saved}.')
    return step
  ckpt = checkpoint.open_checkpointer(config, workdir)
  best, latest = ckpt.best_step(), ckpt.latest_step()
  ckpt.close()
  if best is None:
    log.info('%s: no step was saved with validation metrics; using the latest, %d.', workdir, latest)
    return latest
  log.info('%s: using step %d, the best by validation %s (latest: %d).', workdir, best, config.train.best_metric,
           latest)
  return best


def load(workdir: str, step: int | None = None) -> LoadedRun:
  """The run in `workdir` at `step` (default: its best checkpoint, else its latest); see the module docstring."""
  config = _read_config(workdir)
  tokenizer_dir = os.path.join(workdir, 'tokenizer')
  if not tokenizers.is_saved(tokenizer_dir):
    raise FileNotFoundError(f'{workdir} has no tokenizer/ (tokenizer.json): not a complete lm_jax workdir.')
  tokenizer = tokenizers.load(tokenizer_dir)
  step = choose_step(workdir, config, step)
  model = models.get_model(config.model, vocab_size=tokenizer.vocab_size, max_len=config.data.max_len)
  shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0)),
                          jnp.ones((1, config.data.max_len), jnp.int32))['params']
  step_dir = os.path.join(workdir, 'checkpoints', str(step))
  try:
    params = checkpoint.load_params(step_dir, shapes)
  except ValueError as e:
    if config.model.task == 'classification' and 'classifier_head' in str(e):
      raise ValueError(f'{workdir} has no classifier head (converted from a BertModel?): fine-tune it with '
                       f"init_from={workdir!r} and init_from_reinit='classifier_head'.\n{e}") from None
    raise
  return LoadedRun(config, tokenizer, model, params, step=step, workdir=workdir)
