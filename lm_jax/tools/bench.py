"""Train-step benchmark of lm_jax's own `steps.make_train_step`, with an optional side-by-side PyTorch reference.

  python -m lm_jax.tools.bench --case lstm                       # one JSON line
  python -m lm_jax.tools.bench --suite                           # every case of this backend, one line each
  python -m lm_jax.tools.bench --case gpt --reference --reference_dir ../shared/reference --rounds 3

A line holds the median, min and max step seconds after `--warmup` steps (compile time apart), tokens/s, the model
FLOPs per step (`models.train_flops_per_token`), the achieved FLOP/s and MFU. The peak is the device table's on
accelerators ("peak": "device_table"); on a CPU it is measured in the same run as the median rate of a 2048³
float32 matmul ("peak": "measured"). Step times include fetching the loss, as `loss.item()` does in the reference.

The cases bert, gpt and lstm have the shapes, vocabulary, optimizer (AdamW lr 2e-5, wd 0.01, no clipping),
dropout and loss of `torch_{case}_bench.py` in the reference directory. With `--reference` the two alternate for
`--rounds` rounds (the torch script in a subprocess) and a last line gives the ratio torch / lm_jax step time
(> 1: lm_jax is faster). Known differences, each small: lm_jax decays only matrices (torch.optim.AdamW every
parameter), has no token-type embeddings or pooler and no dropout on attention weights, and uses exact GELU.
`mlm` is a small BERT masked LM (no reference): its vocabulary head runs on the masked positions only, or with
`--mlm_predictions 0` at every position, as before the gather. `gpt2-small` (bf16, cuDNN attention) is for
accelerators; `long` (a small decoder, batch 1 × 8192, chunked attention) is what `python -m
lm_jax.tools.long_context` runs for its dense vs chunked memory table. `--suite --reference` times the cases
without a reference script alone.
"""

import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from lm_jax import process
from lm_jax import configs
from lm_jax import defaults
from lm_jax import metrics
from lm_jax import models
from lm_jax import optim
from lm_jax import row_gradients
from lm_jax import steps
from lm_jax import train
from lm_jax.data import packing


@dataclasses.dataclass(frozen=True)
class Case:
  """A model and a batch: `overrides` of the default config, and the reference script that matches."""
  overrides: dict
  vocab_size: int
  batch: int
  seq: int
  reference: str | None = None  # torch script in --reference_dir
  cpu_suite: bool = True  # part of --suite on a CPU (--case runs any case anywhere)


_TRANSFORMER = {'model.name': 'transformer', 'model.num_layers': 4, 'model.d_model': 256, 'model.num_heads': 4,
                'model.mlp_dim': 1024, 'model.dropout': 0.1}
CASES = {
    # HF BertForSequenceClassification: post-LN, learned positions, dropout 0.1.
    'bert': Case({**_TRANSFORMER, 'model.task': 'classification', 'model.num_classes': 2, 'model.pre_norm': False},
                 30522, 16, 128, 'torch_bert_bench.py'),
    # HF GPT2LMHeadModel: pre-LN, learned positions, tied head, dropout 0.1, loss over the T-1 shifted targets.
    'gpt': Case({**_TRANSFORMER, 'model.task': 'lm'}, 32000, 16, 256, 'torch_gpt_bench.py'),
    # Embedding → one forward nn.LSTM(256, 256) → last hidden state → Linear(256, 2); no dropout.
    'lstm': Case({'model.name': 'lstm', 'model.task': 'classification', 'model.num_classes': 2, 'model.num_layers': 1,
                  'model.d_model': 256, 'model.dropout': 0.0, 'model.bidirectional': False, 'model.positions': 'none'},
                 30522, 16, 128, 'torch_lstm_bench.py'),
    # A small BERT masked LM (2 layers, d_model 128, 64-token rows, 15% masked): the 30522-way head is most of the
    # step unless it runs only on the masked positions (--mlm_predictions).
    'mlm': Case({'model.name': 'transformer', 'model.task': 'mlm', 'model.num_layers': 2, 'model.d_model': 128,
                 'model.num_heads': 2, 'model.mlp_dim': 512, 'model.dropout': 0.1}, 30522, 64, 64),
    # A small decoder for long sequences (dense vs chunked attention): a 512-token vocabulary keeps the head small.
    'long': Case({'model.name': 'transformer', 'model.task': 'lm', 'model.num_layers': 2, 'model.d_model': 256,
                  'model.num_heads': 4, 'model.mlp_dim': 1024, 'model.dropout': 0.0, 'model.attention': 'chunked'},
                 512, 1, 8192, cpu_suite=False),
    # GPT-2 small (124M) in bfloat16 with cuDNN attention: the accelerator MFU case.
    'gpt2-small': Case({'model.name': 'transformer', 'model.task': 'lm', 'model.num_layers': 12, 'model.d_model': 768,
                        'model.num_heads': 12, 'model.mlp_dim': 3072, 'model.dropout': 0.0,
                        'model.dtype': 'bfloat16', 'model.attention': 'cudnn'}, 50257, 16, 1024,
                       cpu_suite=False),
}

_CASE = flags.DEFINE_enum('case', None, list(CASES), 'Benchmark case.')
_SUITE = flags.DEFINE_bool('suite', False, 'Every case: bert, gpt, lstm, mlm on a CPU, all of them on an accelerator.')
_BATCH = flags.DEFINE_integer('batch', None, 'Global batch size; default: the case\'s.')
_SEQ = flags.DEFINE_integer('seq', None, 'Sequence length; default: the case\'s.')
_STEPS = flags.DEFINE_integer('steps', 15, 'Timed train steps.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Compute dtype; default: the case\'s.')
_ATTENTION = flags.DEFINE_string('attention', None, 'model.attention (dense | chunked | cudnn); default: the case\'s.')
_REFERENCE = flags.DEFINE_bool('reference', False, 'Alternate with the torch reference script and print the ratio.')
_REFERENCE_DIR = flags.DEFINE_string('reference_dir', os.path.join(os.path.dirname(__file__), '..', '..', '..',
                                                                   'shared', 'reference'),
                                     'Directory of torch_{bert,gpt,lstm}_bench.py.')
_REFERENCE_PYTHON = flags.DEFINE_string('reference_python', sys.executable, 'Python with torch and transformers.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'lm_jax/torch alternations with --reference.')
_MLM_PREDICTIONS = flags.DEFINE_integer(
    'mlm_predictions', -1, 'Case mlm: data.max_predictions_per_seq (-1: automatic, as training sets it; 0: the '
    'vocabulary head at every position, as before the masked positions were gathered).')


def case_config(case: Case, *, dtype=None, attention=None, overrides=None):
  """The default config (lm_jax/defaults.py) with the case's model and the reference's optimizer: AdamW, constant
  lr, no clipping; then `overrides` (dotted keys, e.g. {'model.name': 'mamba'})."""
  merged = {**case.overrides, 'optim.learning_rate': 2e-5, 'optim.weight_decay': 0.01, 'optim.warmup_steps': 0,
            'optim.schedule': 'constant', 'optim.clip_norm': 0.0}
  if dtype is not None:
    merged['model.dtype'] = dtype
  if attention is not None:
    merged['model.attention'] = attention
  return configs.override(defaults.get_config(), {**merged, **(overrides or {})})


def random_batch(task: str, vocab_size: int, batch: int, seq: int, seed: int = 0, *, mlm_probability: float = 0.15,
                 mlm_predictions: int = 0) -> dict[str, np.ndarray]:
  """Random non-pad ids (pad id 0 would be masked out); an LM predicts the next token at positions 0..T-2; a masked
  LM's rows are BERT-masked as the data masks them (id 1 plays [MASK]), at most `mlm_predictions` per row if > 0."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, vocab_size, (batch, seq), dtype=np.int32)
  if task == 'mlm':
    maskable = np.arange(vocab_size) >= 2
    return packing.bert_mask({'inputs': ids, 'targets': ids}, rng, probability=mlm_probability, mask_id=1,
                             maskable=maskable, random_ids=np.arange(2, vocab_size), global_batch=batch,
                             rows=slice(None), max_predictions=mlm_predictions)
  if task == 'classification':
    return {'inputs': ids, 'label': rng.integers(0, 2, (batch,), dtype=np.int32),
            'weights': np.ones((batch,), np.float32)}
  weights = np.ones((batch, seq), np.float32)
  weights[:, -1] = 0.0
  return {'inputs': ids, 'targets': np.roll(ids, -1, axis=1), 'weights': weights}


@functools.cache
def cpu_name() -> str:
  """The host CPU's model name (a speed-up measured on one CPU vendor may not hold on another)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


@functools.cache
def measured_cpu_peak(n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of an n³ float32 matmul under jit: the median of `repeats` after one warm-up."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(times)


def peak_flops(dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s of all devices, 'device_table' | 'measured' | 'unknown')."""
  devices = jax.devices()
  if devices[0].platform == 'cpu':
    return measured_cpu_peak(), 'measured'
  per_device = metrics.peak_flops_per_device(devices[0], dtype)
  if per_device is None:
    return None, 'unknown'
  return per_device * len(devices), 'device_table'


class Bench:
  """The compiled train step of a case, its state and batch; `run` times steps."""

  def __init__(self, name: str, *, batch=None, seq=None, dtype=None, attention=None, overrides=None,
               mlm_predictions: int = -1):
    case = CASES[name]
    self.name, self.batch, self.seq = name, batch or case.batch, seq or case.seq
    self.config = case_config(case, dtype=dtype, attention=attention,
                              overrides={'data.max_len': self.seq, 'data.max_predictions_per_seq': mlm_predictions,
                                         **(overrides or {})})
    mc = self.config.model
    self.mlm_predictions = train.mlm_predictions(self.config)
    model = models.get_model(mc, vocab_size=case.vocab_size, max_len=self.seq)
    mesh = train.make_mesh()
    optimizer = optim.make_optimizer(self.config.optim, total_steps=1)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, self.seq), jnp.int32))['params']
    self.num_params = models.count_params(params)
    state = steps.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params),
                             rng=jax.random.key(1))
    self.state = jax.device_put(state, NamedSharding(mesh, P()))
    self.batch_arrays = train.to_global(random_batch(
        mc.task, case.vocab_size, self.batch, self.seq, mlm_probability=self.config.data.mlm_probability,
        mlm_predictions=self.mlm_predictions), mesh)
    start = time.perf_counter()
    # Timed as the train loop runs it between log lines: without the norm metrics (`with_norms` False).
    rows, _ = row_gradients.for_training(model, params, self.config.optim, 1, self.batch * self.seq)
    self.step = steps.make_train_step(model, optimizer, mesh, grad_accum_steps=1, rows=rows,
                                      mlm_predictions=self.mlm_predictions).lower(
        self.state, self.batch_arrays, False).compile()
    self.compile_s = time.perf_counter() - start
    memory = self.step.memory_analysis()
    # XLA's scratch buffers (what the backward keeps, workspaces) and the step's inputs (state and batch).
    self.temp_bytes = None if memory is None else memory.temp_size_in_bytes
    self.argument_bytes = None if memory is None else memory.argument_size_in_bytes
    self.flops_per_step = self.batch * self.seq * models.train_flops_per_token(
        mc, vocab_size=case.vocab_size, seq_len=self.seq)
    if mc.task == 'mlm':
      # Useful work is the vocabulary head on the masked positions only (at most the automatic cap per row), with
      # or without --mlm_predictions: the same FLOPs for both, so their MFUs compare as their speeds do.
      masked = packing.max_predictions(self.seq, self.config.data.mlm_probability, -1)
      self.flops_per_step -= self.batch * (self.seq - masked) * 6 * mc.d_model * case.vocab_size

  def _one_step(self) -> float:
    start = time.perf_counter()
    self.state, step_metrics = self.step(self.state, self.batch_arrays, False)
    float(step_metrics['loss'])  # a host sync, as the reference's loss.item()
    return time.perf_counter() - start

  def run(self, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
      self._one_step()
    return [self._one_step() for _ in range(steps)]

  def report(self, times: list[float], peak: float | None, peak_source: str) -> dict:
    median = statistics.median(times)
    achieved = self.flops_per_step / median
    return {
        'case': self.name, 'model': self.config.model.name, 'framework': 'lm_jax', 'backend': jax.default_backend(),
        'device_kind': jax.devices()[0].device_kind, 'cpu': cpu_name(), 'cpu_cores': os.cpu_count(),
        'devices': jax.device_count(), 'batch': self.batch,
        'seq': self.seq, 'dtype': self.config.model.dtype, 'attention': self.config.model.attention,
        'params': self.num_params, **({'mlm_predictions': self.mlm_predictions} if self.mlm_predictions else {}),
        'steps': len(times), 'compile_s': self.compile_s,
        'compiled_temp_bytes': self.temp_bytes, 'compiled_argument_bytes': self.argument_bytes, 'median_s': median,
        'min_s': min(times), 'max_s': max(times), 'tokens_per_s': self.batch * self.seq / median,
        'flops_per_step': self.flops_per_step, 'achieved_flops_per_s': achieved, 'peak_flops_per_s': peak,
        'peak': peak_source, 'mfu': None if peak is None else achieved / peak,
    }


def run_reference(name: str, bench: Bench, steps: int, warmup: int) -> dict:
  """The torch script of the case in a subprocess (offline); its parsed JSON line."""
  script = os.path.join(_REFERENCE_DIR.value, CASES[name].reference)
  if not os.path.isfile(script):
    raise FileNotFoundError(f'--reference_dir={_REFERENCE_DIR.value!r} has no {CASES[name].reference}.')
  command = [_REFERENCE_PYTHON.value, script, '--steps', str(steps), '--warmup', str(warmup), '--batch',
             str(bench.batch), '--seq', str(bench.seq)]
  if name == 'bert':
    command += ['--eval-steps', '1']  # its eval pass is not compared
  result = subprocess.run(command, cwd=_REFERENCE_DIR.value, env={**os.environ, 'HF_HUB_OFFLINE': '1'},
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def compare(name: str, bench: Bench, peak, peak_source, steps: int, warmup: int, rounds: int) -> dict:
  """Alternates lm_jax and torch (lm_jax first, then torch first, …), printing each; returns the ratio line."""
  if CASES[name].reference is None:
    raise ValueError(f'--reference: case {name!r} has no reference script; cases with one: '
                     f'{", ".join(n for n, c in CASES.items() if c.reference)}.')
  ours, theirs = [], []
  for i in range(rounds):
    for framework in ('lm_jax', 'torch') if i % 2 == 0 else ('torch', 'lm_jax'):
      if framework == 'lm_jax':
        line = bench.report(bench.run(steps, warmup), peak, peak_source)
        ours.append(line['median_s'])
      else:
        line = run_reference(name, bench, steps, warmup)
        theirs.append(line['train']['median_s'])
      print(json.dumps({'round': i, **line}), flush=True)
  return {'case': name, 'comparison': 'torch_median_s / lm_jax_median_s', 'rounds': rounds,
          'lm_jax_median_s': ours, 'torch_median_s': theirs,
          'ratio_per_round': [t / o for t, o in zip(theirs, ours)],
          'ratio': statistics.median(theirs) / statistics.median(ours)}


def suite_cases() -> list[str]:
  on_accelerator = jax.default_backend() != 'cpu'
  return [name for name, case in CASES.items() if on_accelerator or case.cpu_suite]


def main(argv):
  process.start(argv)   # before the first compile: the step's buffers are reused, not page-faulted in each step
  if _SUITE.value == (_CASE.value is not None):
    raise app.UsageError('Give exactly one of --case NAME and --suite.')
  names = suite_cases() if _SUITE.value else [_CASE.value]
  for name in names:
    bench = Bench(name, batch=_BATCH.value, seq=_SEQ.value, dtype=_DTYPE.value, attention=_ATTENTION.value,
                  mlm_predictions=_MLM_PREDICTIONS.value)
    peak, peak_source = peak_flops(bench.config.model.dtype)  # a CPU's is measured once, after the first compile
    if _REFERENCE.value and (CASES[name].reference or not _SUITE.value):   # the suite times the others alone
      print(json.dumps(compare(name, bench, peak, peak_source, _STEPS.value, _WARMUP.value, _ROUNDS.value)),
            flush=True)
    else:
      print(json.dumps(bench.report(bench.run(_STEPS.value, _WARMUP.value), peak, peak_source)), flush=True)


if __name__ == '__main__':
  app.run(main)
