"""bench.py eval: evaluation throughput (tokens/s of the forward pass to logits over [B, T]) of the
pretrained families, against `transformers`' forward pass with the same weights in the same run.

    python bench.py eval [--size small|table|tiny] [--families gpt2,rwkv4] [--eval_shape 1,1024]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks import transformers_peers
from benchmarks.common import FLAGS, emit, timed
from benchmarks.generate import family_config
from microrwkv_jax.families import build_model

flags.DEFINE_string("eval_shape", "1,1024", "eval: B,T of the scored windows")


def run() -> None:
    batch, t = (int(v) for v in FLAGS.eval_shape.split(","))
    for preset in FLAGS.families.split(","):
        config = family_config(preset, FLAGS.size)
        config = config.replace(block_size=max(config.block_size, t))
        peer = None
        if preset in transformers_peers.PEER_FAMILIES and transformers_peers.available():
            peer, model = transformers_peers.same_weights(config)
        else:
            model = build_model(config)
        tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch, t))
        forward = jax.jit(lambda m, x: m(x))
        x = jnp.asarray(tokens, jnp.int32)
        seconds = timed(lambda: forward(model, x).block_until_ready(), FLAGS.warmup, FLAGS.repeats)
        record = {"bench": "eval", "family": preset, "size": FLAGS.size, "dtype": config.dtype,
                  "n_layer": config.n_layer, "n_embd": config.n_embd, "batch": batch, "seq_len": t,
                  "ms": seconds * 1e3, "tokens_per_s": batch * t / seconds}
        if peer is not None:
            import torch
            peer_seconds = transformers_peers.forward_seconds(peer, tokens, 1, FLAGS.repeats)
            record.update(transformers_ms=peer_seconds * 1e3, transformers_tokens_per_s=batch * t / peer_seconds,
                          speedup_vs_transformers=peer_seconds / seconds, torch=torch.__version__,
                          torch_threads=torch.get_num_threads())
        emit(record)
