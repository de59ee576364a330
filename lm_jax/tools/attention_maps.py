"""Attention maps of a trained transformer: every layer and head for one input, as one grid of heatmaps (PNG).

  python -m lm_jax.tools.attention_maps --workdir runs/recall --example 0           # validation example 0
  python -m lm_jax.tools.attention_maps --workdir runs/recall --text 'k1 v2 k3 v0 k3 v0 k1' --out maps.png

Restores the params of the run's latest checkpoint (lm_jax/checkpoint.py) and its tokenizer (WORKDIR/tokenizer).
Each map is `lm_jax.attention.attention_weights` of one layer and head, float32 `[T, T]`: row t (a query token)
holds the softmax weights over the keys s, so a row sums to 1 (a decoder's rows are zero right of the diagonal).
The model sows them in its 'intermediates' collection when that collection is mutable; training never asks.
"""

import json
import os
import re

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

from lm_jax import process
from lm_jax import checkpoint
from lm_jax import data as data_lib
from lm_jax import models
from lm_jax.data import tokenizers

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position



def load_run(workdir: str):
  """(config, tokenizer, model, params) of the run's latest checkpoint."""
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.model.name != 'transformer':
    raise ValueError(f'{workdir} is a model.name={config.model.name!r} run; attention maps need a transformer.')
  tokenizer = tokenizers.load(os.path.join(workdir, 'tokenizer'))
  model = models.get_model(config.model, vocab_size=tokenizer.vocab_size, max_len=config.data.max_len)
  target = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.ones((1, config.data.max_len), jnp.int32))['params']
  return config, tokenizer, model, checkpoint.load_params(workdir, target)


def text_inputs(text: str, tokenizer, config) -> dict[str, np.ndarray]:
  """A classifier reads [cls] tokens [sep], as its training data was framed; an LM or MLM reads the tokens."""
  ids = tokenizer.encode(text)
  if config.model.task == 'classification':
    ids = [tokenizer.cls_id] + ids[:config.data.max_len - 2] + [tokenizer.sep_id]
  if not ids:
    raise ValueError(f'--text={text!r} has no tokens.')
  return {'inputs': np.asarray([ids[:config.data.max_len]], np.int32)}


def example_inputs(index: int, workdir: str, config) -> dict[str, np.ndarray]:
  """Validation example `index` (with its segment ids and positions when the rows are packed)."""
  data = data_lib.get_dataset(config.data, task=config.model.task, seed=config.seed,
                              tokenizer_dir=os.path.join(workdir, 'tokenizer'))
  rows = data.rows('validation')
  if not 0 <= index < len(rows):
    raise ValueError(f'--example={index}: the validation split has {len(rows)} examples (0..{len(rows) - 1}).')
  row = rows.take(np.asarray([index]))
  return {k: np.asarray(row[k], np.int32) for k in ('inputs', 'segment_ids', 'positions') if k in row}


def attention_weights(model, params, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(float32 `[layers, heads, T, T]`, ids `[T]`) of one input row (`inputs['inputs']` is `[1, T]`).

  Trailing padding is cut first (padding inside a row, as in MQAR's gaps, stays: the model reads it).
  """
  real = np.flatnonzero(inputs['inputs'][0])
  length = int(real[-1]) + 1 if len(real) else 1
  inputs = {k: v[:, :length] for k, v in inputs.items()}
  _, state = model.apply({'params': params}, inputs['inputs'], mutable=['intermediates'],
                         **{k: v for k, v in inputs.items() if k != 'inputs'})
  flat = flax.traverse_util.flatten_dict(state['intermediates'], sep='/')
  by_layer = {int(re.search(r'layers_(\d+)/', path).group(1)): sown[0]
              for path, sown in flat.items() if path.endswith('attention_weights')}
  return np.stack([np.asarray(by_layer[i][0]) for i in sorted(by_layer)]), inputs['inputs'][0]


def plot(weights_LxHxTxT: np.ndarray, tokens: list[str], path: str, title: str) -> str:
  """A layers × heads grid of heatmaps, keys on x, queries on y, one shared colour scale."""
  layers, heads, length, _ = weights_LxHxTxT.shape
  panel = max(3.5, 0.17 * length)
  fig, axes = plt.subplots(layers, heads, figsize=(panel * heads + 1.2, panel * layers + 0.8), squeeze=False)
  font = max(3.0, min(9.0, 320 / length))
  image = None
  for (layer, head), ax in np.ndenumerate(axes):
    image = ax.imshow(weights_LxHxTxT[layer, head], cmap='viridis', vmin=0.0,
                      vmax=float(weights_LxHxTxT.max()), interpolation='nearest')
    ax.set_title(f'layer {layer}, head {head}', fontsize=10)
    ax.set_xticks(range(length), tokens, rotation=90, fontsize=font)
    ax.set_yticks(range(length), tokens, fontsize=font)
    if layer == layers - 1:
      ax.set_xlabel('key (attended-to token)', fontsize=9)
    if head == 0:
      ax.set_ylabel('query token', fontsize=9)
  fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label='attention weight (each row sums to 1)')
  fig.suptitle(title, fontsize=11)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def render(workdir: str, *, text: str | None = None, example: int | None = None, out: str | None = None):
  """Writes the attention-map grid of one input; returns (PNG path, weights [L, H, T, T], token strings)."""
  if (text is None) == (example is None):
    raise ValueError('Give exactly one of --text and --example.')
  config, tokenizer, model, params = load_run(workdir)
  inputs = text_inputs(text, tokenizer, config) if text is not None else example_inputs(example, workdir, config)
  weights, ids = attention_weights(model, params, inputs)
  tokens = [tokenizer.decode([i]) or '·' for i in ids]   # pad decodes to '' in every tokenizer: shown as '·'
  what = f'validation example {example}' if text is None else 'the given text'
  title = (f'Attention weights of {os.path.basename(os.path.normpath(workdir))} ({config.model.task}, '
           f'{"causal" if config.model.task == "lm" else "bidirectional"}) on {what}')
  path = plot(weights, tokens, out or os.path.join(workdir, 'attention_maps.png'), title)
  return path, weights, tokens


def define_flags():
  """The command's flags; defined only when run as a command, so that importing this module defines none."""
  flags.DEFINE_string('workdir', None, 'A transformer run directory of lm_jax.main (or one run of a sweep).')
  flags.DEFINE_string('text', None, 'The input text, tokenized with the run\'s tokenizer.')
  flags.DEFINE_integer('example', None, 'Or: the index of a validation example.')
  flags.DEFINE_string('out', None, 'PNG path; default WORKDIR/attention_maps.png.')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  process.start(argv)
  args = flags.FLAGS
  try:
    path, weights, _ = render(args.workdir, text=args.text, example=args.example, out=args.out)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f'lm_jax.tools.attention_maps: {e}') from None
  print(f'Wrote {path}: {weights.shape[0]} layers x {weights.shape[1]} heads over {weights.shape[2]} tokens.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
