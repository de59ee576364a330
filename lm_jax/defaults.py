"""The default config: every key lm_jax reads, documented here. Experiment files state only what differs.

`experiments/base.py` is this config; an experiment file starts from it (or from another experiment) and changes
a few keys. Tools that build their own configs (the benchmark, tests) start here too, so the package never imports
`experiments/`.
Any key can be overridden on the command line, e.g. `--config.optim.learning_rate=3e-4`; a misspelled key or a
value of the wrong type is an error before anything is built.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 12345                      # one seed: init, dropout (folded in per step), shuffling, MLM masks
  c.init_from = ''                    # '' = from scratch; else a workdir or an Orbax checkpoint step dir
  c.init_from_reinit = ''             # regex over param paths ('/'-joined) kept fresh rather than loaded, e.g. 'head'
  c.distributed = False               # multi-host: join the job (main's --coordinator_address etc., or SLURM/TPU env)

  c.data = d = ml_collections.ConfigDict()
  d.name = 'imdb_reviews'             # imdb_reviews | wikipedia | text_files | csv | jsonl | mqar
  d.tfds_name = 'imdb_reviews/plain_text'   # TFDS dataset/config, e.g. 'wikipedia/20230601.en'
  d.tfds_data_dir = ''                # '' = TFDS default (~/tensorflow_datasets) or $TFDS_DATA_DIR
  d.download = True                   # let TFDS download and prepare when the data is not in tfds_data_dir
  d.paths = ''                        # glob of local files (text_files, csv, jsonl), comma-separated globs allowed
  d.text_column = 'text'              # csv / jsonl field holding the text
  d.label_column = 'label'            # csv / jsonl field holding the label: a class name or an integer id
  d.label_names = ()                  # class names in id order; () = sorted names (or integer ids as they are)
  d.validation_paths = ''             # glob of your validation files (any local source); nothing is then carved
  d.test_paths = ''                   # glob of your test files (any local source): evaluated into results.json
  d.max_len = 256                     # tokens per example (classification: truncate + pad; lm/mlm: packed length)
  d.tokenizer = 'sentencepiece'       # sentencepiece | wordpiece | bytes
  d.vocab_size = 8000                 # sentencepiece vocab size (wordpiece and bytes take theirs from the vocab)
  d.wordpiece_vocab = ''              # path to a BERT vocab.txt (tokenizer = wordpiece)
  d.lowercase = True                  # lowercase before wordpiece (bert-base-uncased)
  d.tokenizer_train_docs = 20000      # documents sampled from the train split to train sentencepiece
  d.validation_fraction = 0.1         # share of the train split held out (deterministically) as validation,
                                      # unless validation_paths is given
  d.use_unsupervised = False          # imdb_reviews: add the 50k unlabelled reviews (lm/mlm pretraining only)
  d.mlm_probability = 0.15            # BERT masking: of the chosen positions 80% [MASK], 10% random, 10% kept
  d.max_predictions_per_seq = -1      # masked positions per row at most; the MLM head runs only on them. -1 = mean
                                      # + 3 std of the masked count (caps ~0.1% of rows); 0 = no cap, head everywhere
  d.max_documents = -1                # cap on documents read per split (-1 = all); for quick local runs
  d.cache_dir = ''                    # token cache dir; '' = beside the data (TFDS dir/lm_jax_cache, .lm_jax_cache)
  d.mqar = ml_collections.ConfigDict()
  d.mqar.num_pairs = 8                # key-value pairs per example
  d.mqar.num_queries = 8              # queried keys per example (scored positions)
  d.mqar.num_train = 1_000_000        # training examples, generated on use: none repeats while steps × batch <= this
  d.mqar.num_eval = 2000              # held-out validation examples (a separate stream, generated once)

  c.model = m = ml_collections.ConfigDict()
  m.name = 'transformer'              # transformer | rnn | lstm | gru | linear_attention | mamba | rg_lru | griffin
  m.task = 'classification'           # classification | lm | mlm (mlm: transformer only)
  m.num_layers = 4
  m.d_model = 256                     # transformer width; RNN hidden size
  m.num_heads = 4
  m.num_kv_heads = 0                  # key/value heads (GQA), each shared by num_heads / this; 0 = num_heads, 1 = MQA
  m.mlp_dim = 1024
  m.dropout = 0.1
  m.attention_bias = 'none'           # none | relative (learned relative-position bias b per head) | alibi
  m.positions = 'learned'             # learned | sinusoidal | rope (rotary, in attention) | none (RNNs need none)
  m.rope_theta = 10000.0              # RoPE base: pair i of a head turns by position · rope_theta^(-2i/head_dim)
  m.attention_window = 0              # causal sliding window of this many latest keys; 0 = all (griffin: 1024)
  m.mlp = 'gelu'                      # gelu (W2·hidden_act(W1·x)) | swiglu (W2·(silu(Wg·x) * W1·x), Llama)
  m.norm = 'layernorm'                # layernorm | rmsnorm (Llama, Mamba, Griffin)
  m.use_bias = True                   # biases in the attention/MLP dense layers and LayerNorms (False: Llama)
  m.state_dim = 16                    # mamba: SSM state size N per channel
  m.conv_width = 4                    # mamba, rg_lru, griffin: width of the short causal depthwise convolution
  m.smeared_keys = False              # each key mixes in the previous token's (learned per head; Olsson et al. 2022)
  m.pre_norm = True                   # pre-LN (stable from scratch); False = post-LN as in BERT
  m.pooling = 'cls'                   # classification pooling: cls | mean (over non-pad tokens)
  m.bidirectional = True              # RNN classifier reads both directions
  m.fast_rnn = True                   # RNNs run the CPU schedule (models/rnn_fast.py); False = rnn.py's plain scan
  m.tie_embeddings = True             # LM/MLM output head shares the token embedding
  m.num_classes = 0                   # classes of a classifier; 0 = as many as the data has (set by the trainer)
  m.dtype = 'float32'                 # compute dtype: float32 | bfloat16 (params and softmax stay float32)
  m.attention = 'dense'               # dense (lm_jax.attention) | chunked (online softmax, long T) | cudnn (GPU)
  m.hidden_act = 'gelu'               # transformer MLP activation: gelu (exact) | gelu_new (tanh approximation)
  m.layer_norm_eps = 1e-6             # transformer LayerNorm epsilon (BERT: 1e-12)
  m.type_vocab_size = 0               # token-type (segment A/B) embeddings, type 0 unless given; 0 = none (BERT: 2)
  m.max_position_embeddings = 0       # learned position table size, >= data.max_len; 0 = data.max_len (BERT: 512)
  m.pooler = False                    # BERT's pooler (dense + tanh over [CLS]) before the classifier head
  m.remat = 'none'                    # recompute in the backward pass, per layer: none | full (keep only each layer's
                                      # input) | dots (keep matmul outputs, recompute the rest); same math, less memory
  m.scan_layers = False               # layers as one nn.scan (compile time flat in depth; params stacked on axis 0)

  c.mesh = ml_collections.ConfigDict()   # device mesh axes (lm_jax/sharding.py); their product = all devices
  c.mesh.data = -1                    # data-parallel replicas; -1 = the devices the other axes leave
  c.mesh.fsdp = 1                     # params and optimizer state split over these devices (ZeRO-3 / FSDP)
  c.mesh.tensor = 1                   # attention heads, MLP units and vocabulary split over these (Megatron)

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 3e-4              # peak, after warmup
  o.warmup_steps = 500                # linear warmup from 0
  o.schedule = 'linear'               # decay after warmup: linear (to 0) | cosine | constant
  o.name = 'adamw'                    # adamw | adafactor (paper defaults, reads no b1/b2/eps) | lion | sgd (momentum)
  o.b1 = 0.9                          # adamw: first-moment decay; lion: interpolation; sgd: momentum (0 = plain)
  o.b2 = 0.999                        # adamw: second-moment decay; lion: momentum decay (its paper: 0.99)
  o.eps = 1e-8                        # adamw only
  o.weight_decay = 0.01               # decoupled (p -= lr·wd·p), every optimizer; only on matrices (not biases, norms)
  o.row_gradients = True              # adamw only: a table only looked up updates from the rows the batch touched,
                                      # equal to the dense update (lm_jax/row_gradients.py); train.py logs the path
  o.clip_norm = 1.0                   # global-norm gradient clipping (0 = off)
  o.grad_accum_steps = 1              # micro-batches accumulated per update

  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 16                   # global, split over mesh.data × mesh.fsdp (must divide by it)
  t.eval_batch_size = 64
  t.num_epochs = 3                    # used when num_steps <= 0
  t.num_steps = -1                    # total optimizer steps; > 0 overrides num_epochs
  t.log_every_steps = 10
  t.eval_every_steps = 500
  t.checkpoint_every_steps = 500
  t.max_to_keep = 3
  t.best_metric = 'accuracy'          # validation metric whose best checkpoint is always kept
  t.best_mode = 'max'                 # max | min
  t.max_eval_batches = -1             # cap per evaluation (-1 = the whole split)
  t.skip_nonfinite_steps = False      # True: a step with a NaN/Inf loss or gradient is skipped (and counted), not fatal
  return c
