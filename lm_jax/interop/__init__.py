"""Weights from other libraries: `hf_bert` imports a Hugging Face BERT (safetensors) as an lm_jax run."""
