"""Experiment configs (ml-collections). The package lm_jax never imports these; lm_jax.main loads them by path."""
