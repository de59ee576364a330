"""Model FLOPs and hardware peaks: how much a training step computes, and how much the device could.

    MFU = tokens/s per device · train FLOPs per token / peak FLOP/s of the device

The FLOP counts follow the usual model-FLOP convention (forward 2·P·N, backward 4·P·N, embedding gathers free):

    transformer  6·L·(4d² + 2d·d_ff) + 12·L·d·T (halved for causal LM) + head
    rnn/gru/lstm 6·g·h·(e + h) per layer and direction, g = 1 | 3 | 4 gates, + head
"""

from typing import Any

import jax.numpy as jnp
import ml_collections

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


_RNN_GATES = {'rnn': 1, 'gru': 3, 'lstm': 4}


def train_flops_per_token(model_config: ml_collections.ConfigDict, *, vocab_size: int, seq_len: int,
                          task: str) -> float:
  """Training FLOPs (forward + backward) per token of a `seq_len` sequence; see the module docstring.

  Heads: lm/mlm 6·width·V per token; classification 6·(d² + d·C) per sequence for the transformer (pooler +
  classifier, as in BERT) and 6·width·C per sequence for RNNs, where width is h, or 2h when bidirectional.
  """
  name, layers, d = model_config.name, model_config.num_layers, model_config.d_model
  if name == 'transformer':
    dense = 6 * layers * (4 * d * d + 2 * d * model_config.mlp_dim)
    # QKᵀ and AV: 2·2·T·d per token and layer forward, ×3 with the backward; a causal mask skips half of them.
    attention = 12 * layers * d * seq_len / (2 if task == 'lm' else 1)
    if task == 'classification':
      head = 6 * (d * d + d * model_config.num_classes) / seq_len
    else:
      head = 6 * d * vocab_size
    return float(dense + attention + head)
  if name in _RNN_GATES:
    directions = 2 if model_config.bidirectional and task == 'classification' else 1
    gates = _RNN_GATES[name]
    # Stacked layers read the previous layer's outputs, concatenated over directions (nn.Bidirectional's default).
    inputs = [d] + [directions * d] * (layers - 1)
    recurrent = sum(6 * directions * gates * d * (e + d) for e in inputs)
    width = directions * d
    head = 6 * width * (model_config.num_classes / seq_len if task == 'classification' else vocab_size)
    return float(recurrent + head)
  raise ValueError(f'model.name={name!r}; allowed: transformer, {", ".join(_RNN_GATES)}.')


def mfu(tokens_per_sec_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
  """Model FLOPs utilization as a fraction of `peak` FLOP/s; None when the peak is unknown."""
  if peak is None:
    return None
  return tokens_per_sec_per_device * flops_per_token / peak
