"""Commands beside the three main ones, each `python -m lm_jax.tools.NAME --help`:

    bench                 train-step time, tokens/s and MFU; `--reference` alternates with the PyTorch peer
    long_context          dense vs chunked attention: peak memory and step time at long T
    attention_equivalence cuDNN vs dense vs chunked attention, outputs and gradients
    token_cache           token cache at scale: build time, resume to first step, memory
    gpu_check.sh          everything a lent GPU should check, in one call (`bash lm_jax/tools/gpu_check.sh`)
    attention_maps        attention weights of a trained run, as a PNG
    convert               a Hugging Face BERT → an lm_jax workdir
    prepare_data          builds a config's token cache ahead of time
    data_throughput       input pipeline batches/s and tokens/s for a config
"""
