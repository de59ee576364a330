"""What a run records: WORKDIR/metrics.jsonl, TensorBoard events (tensorboardX), the console log line, and MFU.

    MFU = tokens/s per device · train FLOPs per token (models.train_flops_per_token) / peak FLOP/s of the device
"""

import json
import math
import os
from typing import Any
import uuid

import jax.numpy as jnp
import tensorboardX


class MetricsWriter:
  """Appends `{"step", "split", **metrics}` lines to WORKDIR/metrics.jsonl and `split/name` scalars to events/."""

  def __init__(self, workdir: str, *, keep_lines: int | None = None, resume_step: int = 0):
    """Opens the run's metrics files to append; a run resumed at `resume_step` keeps the first `keep_lines` lines.

    A checkpoint records how many lines were written when it was saved: lines after that belong to steps the resumed
    run repeats, so they are dropped from metrics.jsonl, and TensorBoard is told to purge its events after
    `resume_step` (a SessionLog START at resume_step + 1).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'metrics.jsonl')
    lines = []
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        lines = f.readlines()[:keep_lines]
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      f.writelines(lines)
    os.replace(path + '.tmp', path)
    self.lines = len(lines)
    self._jsonl = open(path, 'a', encoding='utf-8')
    # Event file names carry only the second and the host; the suffix keeps a writer opened within the same second
    # (a quick resume) from truncating the previous file.
    self._events = tensorboardX.SummaryWriter(logdir=os.path.join(workdir, 'events'),
                                              filename_suffix=f'.{uuid.uuid4().hex[:8]}',
                                              purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    # Scalars only: a classifier's per-class figures and confusion matrix go to results.json.
    values = {name: float(value) for name, value in metrics.items() if not isinstance(value, (dict, list))}
    self._jsonl.write(json.dumps({'step': int(step), 'split': split, **values}) + '\n')
    self._jsonl.flush()
    self.lines += 1
    for name, value in values.items():
      self._events.add_scalar(f'{split}/{name}', value, global_step=int(step))
    self._events.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._events.close()


def _si(value: float) -> str:
  """5100 -> '5.1k', 2.35e6 -> '2.4M', 950 -> '950'."""
  for threshold, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(value) >= threshold:
      return f'{value / threshold:.1f}{suffix}'
  return f'{value:.0f}'


def _duration(seconds: float) -> str:
  """580 -> '9m40s', 3725 -> '1h02m', 42 -> '42s'."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


# (metrics key, label in the log line, format)
_EVALUATED = (('loss', 'loss', '.4f'), ('accuracy', 'acc', '.4f'), ('macro_f1', 'f1', '.4f'),
              ('perplexity', 'ppl', '.3f'), ('bits_per_byte', 'bpb', '.4f'))
_LOGGED = (('loss', 'loss', '.3f'), ('accuracy', 'acc', '.3f'), ('lr', 'lr', '.1e'), ('grad_norm', 'gnorm', '.2f'),
           ('param_norm', 'pnorm', '.1f'), ('update_norm', 'unorm', '.1e'), ('skipped', 'skipped', '.0f'))


def format_log_line(step: int, total_steps: int, metrics: dict[str, float], *, mfu: float | None,
                    eta_seconds: float | None) -> str:
  """`step 1200/4200 | loss 0.412 | acc 0.861 | lr 1.9e-05 | gnorm 0.83 | 5.1k tok/s | MFU 31% | eta 9m40s`.

  Shows the keys of `_LOGGED` present in `metrics`, then steps_per_sec and tokens_per_sec when present; `mfu` is a
  fraction (0.31 -> 31%) and is left out when None (unknown peak), as is an eta that is None or not finite.
  """
  parts = [f'step {step}/{total_steps}']
  parts += [f'{label} {float(metrics[key]):{fmt}}' for key, label, fmt in _LOGGED if key in metrics]
  if 'steps_per_sec' in metrics:
    parts.append(f'{float(metrics["steps_per_sec"]):.3g} steps/s')
  if 'tokens_per_sec' in metrics:
    parts.append(f'{_si(metrics["tokens_per_sec"])} tok/s')
  if mfu is not None:
    parts.append(f'MFU {100 * mfu:.0f}%')
  if eta_seconds is not None and math.isfinite(eta_seconds):
    parts.append(f'eta {_duration(eta_seconds)}')
  return ' | '.join(parts)


def format_eval_line(split: str, step: int, metrics: dict[str, float]) -> str:
  """`validation step 500 | loss 0.733 | acc 0.753 | ppl 2.08`: an evaluation as one line like the train line.

  Shows the metrics of `_EVALUATED` present; full precision stays in metrics.jsonl and results.json.
  """
  parts = [f'{split} step {step}']
  parts += [f'{label} {float(metrics[key]):{fmt}}' for key, label, fmt in _EVALUATED if key in metrics]
  return ' | '.join(parts)


# Dense (no sparsity) peak FLOP/s per JAX device: (substrings all in device_kind, 16-bit peak, float32 peak).
# First match wins, so specific kinds come before general ones. JAX's default matmul precision runs float32 matmuls
# as TF32 on NVIDIA tensor cores (Ampere and newer) and as one bfloat16 pass on TPU, so those are the float32 peaks.
# TPU v2/v3 expose each of a chip's two TensorCores as a device: half the chip's peak.
_PEAK_FLOPS = (
    (('H100', 'PCIe'), 756e12, 378e12),
    (('NVL',), 835e12, 418e12),  # H100 NVL, H200 NVL
    (('H100',), 989e12, 495e12),  # SXM, also GH200
    (('H200',), 989e12, 495e12),
    (('A100',), 312e12, 156e12),
    (('V100',), 125e12, 15.7e12),  # fp16 tensor cores (no bfloat16), float32 on CUDA cores (no TF32)
    (('TPU v2',), 22.5e12, 22.5e12),
    (('TPU v3',), 61.5e12, 61.5e12),
    (('TPU v4',), 275e12, 275e12),
    (('TPU v5 lite',), 197e12, 197e12),  # v5e
    (('TPU v5e',), 197e12, 197e12),
    (('TPU v5',), 459e12, 459e12),  # v5p
    (('TPU v6',), 918e12, 918e12),  # v6e (Trillium), kind 'TPU v6 lite'
)


def peak_flops_per_device(device: Any, dtype: Any) -> float | None:
  """Peak dense FLOP/s of `device` (a jax.Device) for matmuls in `dtype`; None for unknown kinds such as CPUs."""
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)):
    raise ValueError(f'peak_flops_per_device: dtype {dtype}; allowed: bfloat16, float16, float32.')
  kind = device.device_kind
  if 'V100' in kind and dtype == jnp.bfloat16:
    return None  # V100 has no bfloat16 units; a peak would be made up.
  for substrings, peak_16bit, peak_float32 in _PEAK_FLOPS:
    if all(s in kind for s in substrings):
      return peak_float32 if dtype == jnp.float32 else peak_16bit
  return None


def mfu(tokens_per_sec_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
  """Model FLOPs utilization as a fraction of `peak` FLOP/s; None when the peak is unknown."""
  if peak is None:
    return None
  return tokens_per_sec_per_device * flops_per_token / peak
