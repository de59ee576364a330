"""AdamW with warmup + decay schedules, weight decay on matrices only, global-norm clipping, gradient accumulation.

    lr(t)    = peak · t / warmup                                 t < warmup
    lr(t)    = peak · decay(clip((t − warmup) / (total − warmup)))   t >= warmup, clip to [0, 1]
    decay(p) = 1 − p (linear) | ½(1 + cos πp) (cosine) | 1 (constant)

Steps count optimizer updates. Gradient accumulation (`grad_accum_steps`) happens inside the train step (a scan
over micro-batches), so the optimizer always sees one averaged gradient per step.
"""

from collections.abc import Callable
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES: dict[str, Callable[[jax.Array], jax.Array]] = {
    'linear': lambda progress: 1.0 - progress,
    'cosine': lambda progress: 0.5 * (1.0 + jnp.cos(math.pi * progress)),
    'constant': jnp.ones_like,
}


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then `schedule` decay to 0 at `total_steps`."""
  if optim_config.schedule not in SCHEDULES:
    raise ValueError(f'optim.schedule={optim_config.schedule!r}; allowed: {", ".join(SCHEDULES)}.')
  if total_steps < 1:
    raise ValueError(f'total_steps={total_steps}; must be >= 1.')
  if optim_config.warmup_steps < 0:
    raise ValueError(f'optim.warmup_steps={optim_config.warmup_steps}; must be >= 0.')
  peak = optim_config.learning_rate
  warmup = optim_config.warmup_steps
  decay = SCHEDULES[optim_config.schedule]
  decay_steps = max(total_steps - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup_lr = peak * step / max(warmup, 1)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    return jnp.where(step < warmup, warmup_lr, peak * decay(progress))

  return schedule


def decay_mask(params):
  """True for leaves with ndim >= 2 (kernels, embedding tables), False for biases and LayerNorm scales/biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm (when clip_norm > 0) → AdamW on `learning_rate_schedule`, decay masked by `decay_mask`."""
  if optim_config.clip_norm < 0:
    raise ValueError(f'optim.clip_norm={optim_config.clip_norm}; must be >= 0 (0 = no clipping).')
  adamw = optax.adamw(
      learning_rate_schedule(optim_config, total_steps),
      b1=optim_config.b1,
      b2=optim_config.b2,
      eps=optim_config.eps,
      weight_decay=optim_config.weight_decay,
      mask=decay_mask,
  )
  if optim_config.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.clip_norm), adamw)
  return adamw
