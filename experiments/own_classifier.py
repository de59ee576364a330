"""A classifier of your own labelled csv / jsonl files, from scratch or fine-tuned from experiments/own_mlm.py.

  python -m lm_jax.main --config experiments/own_classifier.py --workdir runs/mine \
      --config.data.paths=train.csv --config.data.validation_paths=dev.csv --config.data.test_paths=test.csv
  python -m lm_jax.main --config experiments/own_classifier.py --workdir runs/mine_ft \
      --config.data.paths=train.csv --config.data.validation_paths=dev.csv --config.data.test_paths=test.csv \
      --config.init_from=runs/own_mlm

Columns `text` and `label` (data.text_column, data.label_column); labels are class names or integer ids, and
model.num_classes follows them. With init_from the encoder starts from the pretraining run's weights and tokenizer
(the MLM head is left out, a new classifier head is trained); without it, a SentencePiece tokenizer is trained on
your training texts. The same encoder and schedule either way, so the two runs compare the pretraining alone.
results.json holds the test report beside the TF-IDF baseline's.
"""

from experiments import own_mlm


def get_config():
  c = own_mlm.get_config()
  c.data.name = 'csv'
  c.data.validation_fraction = 0.1    # used only without data.validation_paths
  c.model.task = 'classification'
  c.init_from_reinit = 'head'
  c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 50
  c.train.num_steps = -1
  c.train.num_epochs = 5
  c.train.eval_every_steps = 100
  c.train.checkpoint_every_steps = 100
  c.train.max_eval_batches = -1
  c.train.best_metric = 'accuracy'
  c.train.best_mode = 'max'
  return c
