"""IMDB sentiment with a bidirectional LSTM classifier: the same task harness as imdb.py, only the model differs.

  python -m lm_jax.main --config experiments/imdb_lstm.py --workdir runs/imdb_lstm
  python -m lm_jax.main --config experiments/imdb_lstm.py:local --workdir runs/imdb_lstm_local

lr 1e-3: the usual Adam rate for an LSTM trained from scratch (3e-4 also works, more slowly).
"""

from experiments import imdb


def get_config(variant: str = ''):
  c = imdb.get_config(variant)
  c.model.name = 'lstm'
  c.model.num_layers = 1
  c.model.positions = 'none'
  c.model.bidirectional = True
  c.optim.learning_rate = 1e-3
  return c
