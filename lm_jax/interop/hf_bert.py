"""A Hugging Face BERT folder (as `save_pretrained` writes it) → an lm_jax workdir.

The folder holds config.json, model.safetensors and vocab.txt (optionally tokenizer_config.json, whose
do_lower_case sets data.lowercase). Weights are read with safetensors' NumPy API: never torch, never pickle
(pytorch_model.bin is refused). The checkpoint's kind is recognised by its tensor names:

  classifier.*       BertForSequenceClassification      task classification (num_classes = its rows), pooler
  cls.predictions.*  BertForMaskedLM, BertForPreTraining  task mlm, decoder tied to the embeddings; a pooler, when
                                                          present, is kept for fine-tuning; the NSP head is dropped
  neither            BertModel                            task classification without a head: a trunk for
                                                          init_from with init_from_reinit='classifier_head'

The workdir is a run at step 0: config.json (the base config with BERT's model and data keys), tokenizer/ (WordPiece
over vocab.txt) and checkpoints/0 with the train state as lm_jax.train saves it (params, a fresh optimizer state,
step 0, RNG key, a data iterator that has not started). So init_from, lm_jax.load, lm_jax.predict and
`--mode=evaluate` read it like any run; Orbax compresses the all-zero optimizer state to almost nothing on disk.
"""

import json
import logging
import os
import re

from flax import traverse_util
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors import numpy as safetensors_np

from lm_jax import checkpoint
from lm_jax import models
from lm_jax import optim
from lm_jax import steps
from lm_jax import train
from lm_jax import workdir as workdir_lib
from lm_jax.data import tokenizers
from lm_jax.data import wordpiece
from lm_jax.models import transformer

log = logging.getLogger(__name__)

# Hugging Face's hidden_act → model.hidden_act (gelu_pytorch_tanh is gelu_new computed another way).
_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'gelu_pytorch_tanh': 'gelu_new'}
assert set(_ACTIVATIONS.values()) <= set(transformer.ACTIVATIONS)
# (HF module, lm_jax param path, kind); names are matched after dropping the 'bert.' prefix.
_MODULES = (
    (r'embeddings\.word_embeddings', 'encoder/token_embed', 'embed'),
    (r'embeddings\.position_embeddings', 'encoder/position_embed', 'embed'),
    (r'embeddings\.token_type_embeddings', 'encoder/type_embed', 'embed'),
    (r'embeddings\.LayerNorm', 'encoder/norm', 'norm'),
    (r'encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)', r'encoder/layers_\1/attention/\2', 'heads_in'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense', r'encoder/layers_\1/attention/out', 'heads_out'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.LayerNorm', r'encoder/layers_\1/attention_norm', 'norm'),
    (r'encoder\.layer\.(\d+)\.intermediate\.dense', r'encoder/layers_\1/mlp_in', 'dense'),
    (r'encoder\.layer\.(\d+)\.output\.dense', r'encoder/layers_\1/mlp_out', 'dense'),
    (r'encoder\.layer\.(\d+)\.output\.LayerNorm', r'encoder/layers_\1/mlp_norm', 'norm'),
    (r'pooler\.dense', 'pooler', 'dense'),
    (r'classifier', 'classifier_head/output', 'dense'),
    (r'cls\.predictions\.transform\.dense', 'mlm_head/transform', 'dense'),
    (r'cls\.predictions\.transform\.LayerNorm', 'mlm_head/transform_norm', 'norm'),
    (r'cls\.predictions', 'mlm_head', 'dense'),   # its bias; the decoder weight is the word embeddings
)
# HF leaf → lm_jax leaf per kind; LayerNorm weight/bias were gamma/beta in older checkpoints (the hub's
# bert-base-uncased still has them).
_LEAVES = {'embed': {'weight': 'embedding'},
           'norm': {'weight': 'scale', 'gamma': 'scale', 'bias': 'bias', 'beta': 'bias'}}
_LINEAR_LEAVES = {'weight': 'kernel', 'bias': 'bias'}
# Tensors that carry nothing lm_jax computes: the next-sentence head, a position-id buffer, the tied decoder.
_DROPPED = re.compile(r'^(cls\.seq_relationship\.(weight|bias)|embeddings\.position_ids|'
                      r'cls\.predictions\.decoder\.(weight|bias))$')


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors by name (the 'bert.' prefix dropped), as NumPy arrays."""
  path = os.path.join(hf_dir, 'model.safetensors')
  if os.path.exists(path):
    return {name.removeprefix('bert.'): value for name, value in safetensors_np.load_file(path).items()}
  if os.path.exists(os.path.join(hf_dir, 'pytorch_model.bin')):
    raise ValueError(
        f'{hf_dir} holds pytorch_model.bin (a pickle, which lm_jax never loads). Save it as safetensors first: '
        "`transformers.AutoModel.from_pretrained(PATH).save_pretrained(PATH, safe_serialization=True)` (with the "
        'model class it was saved as, e.g. BertForMaskedLM) writes model.safetensors next to it.')
  raise FileNotFoundError(f'{hf_dir} has no model.safetensors: --hf_bert must be a folder written by '
                          'save_pretrained (config.json, model.safetensors, vocab.txt).')


def _convert_leaf(kind: str, leaf: str, value: np.ndarray, num_heads: int) -> np.ndarray:
  """A torch Linear's weight is [out, in]: lm_jax's kernels are [in, out], split into heads where they are."""
  if kind in ('embed', 'norm'):
    return value
  if leaf == 'bias':
    return value.reshape(num_heads, -1) if kind == 'heads_in' else value
  if kind == 'heads_in':
    return value.T.reshape(value.shape[1], num_heads, -1)
  if kind == 'heads_out':
    return value.T.reshape(num_heads, -1, value.shape[0])
  return value.T


def convert_params(tensors: dict[str, np.ndarray], num_heads: int) -> tuple[dict[str, np.ndarray], list[str]]:
  """({lm_jax '/'-joined path: array}, names of the tensors that matched no rule and are not known to be dropped)."""
  params, unknown = {}, []
  for name, value in sorted(tensors.items()):
    for module, path, kind in _MODULES:
      leaves = _LEAVES.get(kind, _LINEAR_LEAVES)
      match = re.fullmatch(rf'{module}\.({"|".join(leaves)})', name)
      if match:
        leaf = leaves[match.group(match.re.groups)]
        params[f'{match.expand(path)}/{leaf}'] = _convert_leaf(kind, leaf, value, num_heads)
        break
    else:
      if _DROPPED.match(name):
        log.info('Not converted (nothing lm_jax computes with it): %s', name)
      else:
        unknown.append(name)
  return params, unknown


def _check_tied_decoder(tensors: dict[str, np.ndarray]) -> None:
  """The MLM decoder must be the word embeddings (and its bias cls.predictions.bias), as lm_jax's tied head."""
  for name, twin in (('cls.predictions.decoder.weight', 'embeddings.word_embeddings.weight'),
                     ('cls.predictions.decoder.bias', 'cls.predictions.bias')):
    if name in tensors and not np.array_equal(tensors[name], tensors.get(twin)):
      raise ValueError(f'{name} differs from {twin}: an untied MLM decoder is not supported.')


def _hf_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{hf_dir} has no config.json: --hf_bert must be a folder written by save_pretrained.')
  with open(path, encoding='utf-8') as f:
    hf = json.load(f)
  problems = []
  if hf.get('model_type') != 'bert':
    problems.append(f"model_type={hf.get('model_type')!r} (only 'bert')")
  if hf.get('position_embedding_type', 'absolute') != 'absolute':
    problems.append(f"position_embedding_type={hf['position_embedding_type']!r} (only 'absolute')")
  if hf.get('is_decoder'):
    problems.append('is_decoder=True (only the bidirectional encoder)')
  if hf.get('hidden_act') not in _ACTIVATIONS:
    problems.append(f"hidden_act={hf.get('hidden_act')!r} (allowed: {', '.join(_ACTIVATIONS)})")
  if problems:
    raise ValueError(f'{path}: cannot convert {"; ".join(problems)}.')
  return hf


def _lowercase(hf_dir: str, default: bool) -> bool:
  """tokenizer_config.json's do_lower_case when the folder has one (save_pretrained of the tokenizer writes it)."""
  path = os.path.join(hf_dir, 'tokenizer_config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      lowercase = json.load(f).get('do_lower_case')
    if lowercase is not None:
      return bool(lowercase)
  log.info('No do_lower_case in %s/tokenizer_config.json: data.lowercase=%s from the base config.', hf_dir, default)
  return default


def run_config(hf: dict, tensors: dict[str, np.ndarray], base: ml_collections.ConfigDict, *, vocab_path: str,
               lowercase: bool) -> ml_collections.ConfigDict:
  """`base` with the model and data keys of this BERT; the task from the tensor names (module docstring)."""
  c = ml_collections.ConfigDict(base.to_dict())
  has_classifier, has_mlm = 'classifier.weight' in tensors, 'cls.predictions.bias' in tensors
  if has_classifier and has_mlm:
    raise ValueError('The checkpoint has both a classifier and an MLM head; expected one BERT task model.')
  c.model.update(
      name='transformer', task='mlm' if has_mlm else 'classification', num_layers=hf['num_hidden_layers'],
      d_model=hf['hidden_size'], num_heads=hf['num_attention_heads'], mlp_dim=hf['intermediate_size'],
      dropout=float(hf['hidden_dropout_prob']), attention_bias='none', positions='learned', pre_norm=False,
      pooling='cls', tie_embeddings=True, dtype='float32', attention='dense',
      hidden_act=_ACTIVATIONS[hf['hidden_act']], layer_norm_eps=float(hf['layer_norm_eps']),
      type_vocab_size=hf['type_vocab_size'], max_position_embeddings=hf['max_position_embeddings'],
      pooler='pooler.dense.weight' in tensors)
  if has_classifier:
    c.model.num_classes = tensors['classifier.weight'].shape[0]
  elif c.model.num_classes == 0:   # no head to count: the classes BERT's config.json names (its default: 2)
    c.model.num_classes = len(hf.get('id2label') or {}) or 2
  c.data.update(tokenizer='wordpiece', wordpiece_vocab=os.path.abspath(vocab_path), lowercase=lowercase,
                max_len=min(c.data.max_len, hf['max_position_embeddings']))
  return c


def convert(hf_dir: str, workdir: str, base_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Writes the workdir (module docstring) for the BERT in `hf_dir`; returns its config."""
  if os.path.exists(os.path.join(workdir, 'config.json')) or os.path.exists(os.path.join(workdir, 'checkpoints')):
    raise ValueError(f'{workdir} already holds a run: convert into a new --workdir.')
  hf = _hf_config(hf_dir)
  vocab_path = os.path.join(hf_dir, 'vocab.txt')
  if not os.path.exists(vocab_path):
    raise FileNotFoundError(f'{hf_dir} has no vocab.txt: save the tokenizer there too (tokenizer.save_pretrained).')
  tensors = read_tensors(hf_dir)
  _check_tied_decoder(tensors)
  config = run_config(hf, tensors, base_config, vocab_path=vocab_path,
                      lowercase=_lowercase(hf_dir, base_config.data.lowercase))
  tokenizer = wordpiece.WordPieceTokenizer.from_vocab_file(vocab_path, config.data.lowercase)
  if tokenizer.vocab_size != hf['vocab_size']:
    raise ValueError(f'vocab.txt has {tokenizer.vocab_size} tokens, config.json says vocab_size={hf["vocab_size"]}.')

  params, unknown = convert_params(tensors, config.model.num_heads)
  if unknown:
    raise ValueError(f'{hf_dir}: tensors of no known BERT module (not converted): {unknown}.')
  module = models.get_model(config.model, vocab_size=tokenizer.vocab_size, max_len=config.data.max_len)
  target = traverse_util.flatten_dict(jax.eval_shape(module.init, jax.random.key(0), jnp.ones(
      (1, config.data.max_len), jnp.int32))['params'], sep='/')
  problems = [f'{p}: missing' for p in sorted(set(target) - set(params)) if not p.startswith('classifier_head/')]
  problems += [f'{p}: not a parameter of the model' for p in sorted(set(params) - set(target))]
  problems += [f'{p}: BERT {list(params[p].shape)}, lm_jax {list(target[p].shape)}'
               for p in sorted(set(params) & set(target)) if tuple(params[p].shape) != tuple(target[p].shape)]
  if problems:
    raise ValueError(f'{hf_dir} does not fit its config.json:\n  ' + '\n  '.join(problems))
  if 'classifier_head/output/kernel' not in params and config.model.task == 'classification':
    log.warning('%s is a BertModel (no task head): the workdir serves as init_from with '
                "init_from_reinit='classifier_head', not for prediction.", hf_dir)

  os.makedirs(workdir, exist_ok=True)
  workdir_lib.prepare(config, workdir)
  tokenizers.save(tokenizer, os.path.join(workdir, 'tokenizer'))
  workdir_lib.save_config(config, workdir)
  params = traverse_util.unflatten_dict({p: jnp.asarray(v, jnp.float32) for p, v in params.items()}, sep='/')
  state = steps.TrainState(
      step=jnp.array(0, jnp.int32), params=params,
      opt_state=optim.make_optimizer(config.optim, total_steps=1).init(params),
      rng=jax.random.split(jax.random.PRNGKey(config.seed))[1])   # the key train.init_train_state gives step 0
  # A data iterator that has not started: grain's state of a fresh iterator does not depend on the data.
  fresh_data_state = iter(grain.MapDataset.range(1).to_iter_dataset()).get_state()
  ckpt = checkpoint.open_checkpointer(config, workdir)
  ckpt.save(0, state, loop_state={'data': fresh_data_state, 'log_window': [], 'metrics_lines': 0}, force=True)
  ckpt.wait_until_finished()
  ckpt.close()
  log.info('Converted %s (%s, %d parameters) into %s.', hf_dir, config.model.task, models.count_params(params),
           workdir)
  return config
