"""The optimizer: optax's AdamW, Adafactor, Lion or SGD with momentum (`optim.name`), on a warmup + decay schedule,
with decoupled weight decay on matrices only and global-norm clipping.

    lr(t)    = peak · t / warmup                                 t < warmup
    lr(t)    = peak · decay(clip((t − warmup) / (total − warmup)))   t >= warmup, clip to [0, 1]
    decay(p) = 1 − p (linear) | ½(1 + cos πp) (cosine) | 1 (constant)

    g ← g · min(1, clip_norm / ‖g‖)                                  when clip_norm > 0
    p ← p − lr(t) · (u(g) + λ·p)                                     λ = weight_decay on matrices, 0 elsewhere

Each optimizer is its update direction u (`OPTIMIZERS`); the decay and the learning rate are the same for all, so
`weight_decay` means one thing whichever is chosen (AdamW's decoupled decay; Lion's paper uses the same form).
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

# The update direction u of each optimizer, from the keys of `optim` it reads.
OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    # m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  u = m̂ / (√v̂ + ε)  (Loshchilov & Hutter)
    'adamw': lambda c: optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps),
    # Factored second moments of each matrix (row and column means), the update clipped to RMS 1 and scaled by the
    # RMS of its parameters: lr is a relative step size. The paper's defaults, no momentum (Shazeer & Stern).
    'adafactor': lambda c: optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
                                       optax.scale_by_param_block_rms()),
    # u = sign(β₁m + (1−β₁)g),  m ← β₂m + (1−β₂)g  (Chen et al., "Symbolic Discovery of Optimization Algorithms")
    'lion': lambda c: optax.scale_by_lion(b1=c.b1, b2=c.b2),
    # m ← β₁m + g,  u = m  (heavy-ball momentum, as torch.optim.SGD; b1 = 0 is plain SGD)
    'sgd': lambda c: optax.trace(decay=c.b1),
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
  """clip_by_global_norm (when clip_norm > 0) → `OPTIMIZERS[name]` → weight decay on `decay_mask` → the schedule.

  For adamw this is `optax.adamw(schedule, b1, b2, eps, weight_decay, mask=decay_mask)`, part for part.
  """
  if optim_config.name not in OPTIMIZERS:
    raise ValueError(f'optim.name={optim_config.name!r}; allowed: {", ".join(OPTIMIZERS)}.')
  if optim_config.clip_norm < 0:
    raise ValueError(f'optim.clip_norm={optim_config.clip_norm}; must be >= 0 (0 = no clipping).')
  tx = optax.chain(OPTIMIZERS[optim_config.name](optim_config),
                   optax.add_decayed_weights(optim_config.weight_decay, decay_mask),
                   optax.scale_by_learning_rate(learning_rate_schedule(optim_config, total_steps)))
  if optim_config.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.clip_norm), tx)
  return tx
