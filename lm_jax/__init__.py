"""lm_jax: transformer and RNN language models in JAX/Flax. `lm_jax.load(workdir)` opens a run for prediction.

Importing lm_jax is cheap: JAX, the models and the data code load only when `load` is called.
"""


def load(workdir: str, step: int | None = None):
  """The run in `workdir` (trained by lm_jax.main or written by lm_jax.tools.convert) at `step` (default: its best
  checkpoint, else its latest), as an `lm_jax.inference.LoadedRun`: `.config`, `.tokenizer`, `.model`, `.params`,
  `.logits(ids)`, `.classify(texts)`, `.generate(prompts, ...)`."""
  from lm_jax import inference  # pylint: disable=g-import-not-at-top  (heavy: JAX, Orbax, TFDS)
  return inference.load(workdir, step=step)


__all__ = ['load']
