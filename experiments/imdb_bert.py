"""IMDB sentiment by fine-tuning an imported Hugging Face BERT: the original recipe in lm_jax.

  python -m lm_jax.tools.convert --hf_bert path/to/bert-base-uncased --workdir runs/bert-base-uncased
  python -m lm_jax.main --config experiments/imdb_bert.py --workdir runs/imdb_bert

The first command turns a `save_pretrained` folder (config.json, model.safetensors, vocab.txt) into a workdir; the
second fine-tunes it. `:bert=DIR` names another converted workdir; `:local` shrinks the data for 2 CPU cores (the
model stays the imported one). The recipe: AdamW lr 2e-5, eps 1e-8, weight decay 0.01, 500 warmup steps then linear
decay, 3 epochs, batch 16, eval batch 64 (as imdb.py's, only the learning rate differs). The model section is the
converted BERT's (post-LN, pooler, LayerNorm epsilon 1e-12, ...), the task head new (init_from_reinit), and the run
takes over BERT's WordPiece tokenizer, so token ids mean what BERT learned.
"""

import json
import os

from experiments import imdb
from lm_jax import configs


def get_config(variant: str = ''):
  arg = configs.parse_variant(variant, bert='runs/bert-base-uncased', local=False)
  c = imdb.get_config('local' if arg.local else '')
  path = os.path.join(arg.bert, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: convert a BERT first, python -m lm_jax.tools.convert --hf_bert '
                            f'path/to/bert --workdir {arg.bert}')
  with open(path, encoding='utf-8') as f:
    converted = json.load(f)
  c.model.update(converted['model'])
  c.model.task = 'classification'
  c.model.num_classes = 2
  for key in ('tokenizer', 'wordpiece_vocab', 'lowercase'):
    c.data[key] = converted['data'][key]
  c.data.max_len = min(c.data.max_len, converted['data']['max_len'])
  c.init_from = arg.bert
  c.init_from_reinit = 'classifier_head'
  c.optim.learning_rate = 2e-5
  return c
