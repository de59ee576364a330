"""cuDNN vs dense vs chunked attention: outputs and gradients against a float32 dense reference, and their times.

  python -m lm_jax.tools.attention_equivalence                    # GPU: bf16, B=4, T=2048, 12 heads of 64
  python -m lm_jax.tools.attention_equivalence --tiny             # any backend: small shapes; cuDNN only on a GPU

All three take the same bfloat16 q, k, v, a causal and padding mask and an ALiBi-like bias; the reference is
`dot_product_attention` on the same values upcast to float32 at 'highest' matmul precision. Prints one JSON line per
implementation (max |error| of the output and of dq, dk, dv; forward+backward milliseconds) and exits non-zero
when an error exceeds --tolerance.
"""

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm_jax import attention

IMPLEMENTATIONS = {
    'dense': attention.dot_product_attention,
    'chunked': attention.chunked_dot_product_attention,
    'cudnn': lambda q, k, v, *, bias, mask: jax.nn.dot_product_attention(
        q, k, v, bias=bias.astype(q.dtype), mask=mask, implementation='cudnn'),
}


def inputs(batch, length, heads, head_dim, dtype):
  kq, kk, kv, kw = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (batch, length, heads, head_dim), dtype) for key in (kq, kk, kv))
  lengths = np.linspace(length // 2, length, batch).astype(int)  # each row a different amount of padding
  ids = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  mask = attention.combine_masks(attention.causal_mask(length), attention.padding_mask(ids))
  distance = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]
  bias = -jnp.asarray([2.0 ** -(h + 1) for h in range(heads)])[None, :, None, None] * jnp.abs(distance)[None, None]
  return q, k, v, bias, mask, jax.random.normal(kw, q.shape, jnp.float32)


def loss_and_grads(fn, q, k, v, bias, mask, weights):
  loss = lambda q, k, v: jnp.sum(fn(q, k, v, bias=bias, mask=mask).astype(jnp.float32) * weights)
  return jax.jit(jax.value_and_grad(lambda q, k, v: loss(q, k, v), argnums=(0, 1, 2)))


def milliseconds(fn, *args, repeats=5):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tiny', action='store_true', help='B=2, T=128, 4 heads of 32: runs anywhere in seconds.')
  parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'])
  parser.add_argument('--chunk', type=int, default=None, help='chunked: query and key block (default 512; tiny 32).')
  parser.add_argument('--tolerance', type=float, default=0.05, help='max |error| / max |reference|, per tensor.')
  args = parser.parse_args()
  shape = (2, 128, 4, 32) if args.tiny else (4, 2048, 12, 64)
  q, k, v, bias, mask, weights = inputs(*shape, jnp.dtype(args.dtype))
  upcast = [x.astype(jnp.float32) for x in (q, k, v)]
  with jax.default_matmul_precision('highest'):
    reference = loss_and_grads(attention.dot_product_attention, *upcast, bias, mask, weights)
    ref_out = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, bias=bias, mask=mask))(*upcast)
    _, ref_grads = reference(*upcast)
  chunk = args.chunk or (32 if args.tiny else 512)
  IMPLEMENTATIONS['chunked'] = functools.partial(attention.chunked_dot_product_attention, query_chunk=chunk,
                                                 key_chunk=chunk)
  names = [n for n in IMPLEMENTATIONS if n != 'cudnn' or jax.default_backend() == 'gpu']
  if 'cudnn' not in names:
    print(json.dumps({'implementation': 'cudnn', 'skipped': f'needs a GPU; backend is {jax.default_backend()}'}))
  failed = False
  for name in names:
    fn = IMPLEMENTATIONS[name]
    out = jax.jit(lambda q, k, v, fn=fn: fn(q, k, v, bias=bias, mask=mask))(q, k, v)
    step = loss_and_grads(fn, q, k, v, bias, mask, weights)
    _, grads = step(q, k, v)
    errors = {}
    for label, got, want in [('out', out, ref_out)] + list(zip(('dq', 'dk', 'dv'), grads, ref_grads)):
      errors[label] = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)) / jnp.max(jnp.abs(want)))
    ok = all(e <= args.tolerance for e in errors.values())
    failed |= not ok
    print(json.dumps({'implementation': name, 'shape_BTHD': shape, 'dtype': args.dtype, 'backend':
                      jax.default_backend(), 'relative_max_error': errors, 'ok': ok,
                      'fwd_bwd_ms': milliseconds(step, q, k, v)}), flush=True)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
