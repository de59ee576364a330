"""Import a Hugging Face BERT (safetensors) as an lm_jax workdir.

  python -m lm_jax.tools.convert --hf_bert path/to/bert-base-uncased --workdir runs/bert-base-uncased

--hf_bert is a folder as `save_pretrained` writes it: config.json, model.safetensors and vocab.txt (BertModel,
BertForMaskedLM, BertForSequenceClassification or BertForPreTraining). The workdir gets config.json (--config with
BERT's model and data keys), tokenizer/ and a step-0 checkpoint: use it as init_from (experiments/imdb_bert.py),
with lm_jax.load, lm_jax.predict or --mode=evaluate. See lm_jax/interop/hf_bert.py.
"""


from absl import app
from absl import flags
from ml_collections import config_flags

from lm_jax import process

flags.DEFINE_string('hf_bert', None, 'Folder with config.json, model.safetensors and vocab.txt.')
flags.DEFINE_string('workdir', None, 'New run directory to write.')
config_flags.DEFINE_config_file('config', 'experiments/base.py', 'The converted run\'s config before BERT\'s model '
                                'and data keys are set: experiments/NAME.py[:variant].')
flags.mark_flags_as_required(['hf_bert', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  process.start(argv)
  from lm_jax.interop import hf_bert  # pylint: disable=g-import-not-at-top  (heavy: JAX, Orbax, TFDS)
  try:
    hf_bert.convert(FLAGS.hf_bert, FLAGS.workdir, FLAGS.config)
  except (FileNotFoundError, ValueError) as e:  # the message says what is wrong and what to do
    raise SystemExit(f'lm_jax.tools.convert: {e}') from None


if __name__ == '__main__':
  app.run(main)
