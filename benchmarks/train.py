"""bench.py train: the trainer's sharded step (`ShardedSteps`) on a random batch: step time,
tokens/s, model FLOP/s and MFU, peak memory; --compile_only reports XLA's memory analysis."""

from __future__ import annotations

import jax
import numpy as np

from benchmarks.common import FLAGS, emit, peak_memory, timed
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.data.tokenizers import tokenizer_vocab_size
from microrwkv_jax.families import build_model, model_config_from, train_flops_per_token
from microrwkv_jax.flops import device_peak_flops
from microrwkv_jax.training.steps import ShardedSteps


def run() -> None:
    cfg = FLAGS.config
    vocab = tokenizer_vocab_size(cfg.tokenizer)
    with cfg.unlocked():
        if FLAGS.dtype != "auto":
            cfg.model.dtype = FLAGS.dtype
    mc = model_config_from(cfg.model, vocab, jax.default_backend())
    model = build_model(mc, seed=0)
    codec = ParamCodec(model)
    steps = ShardedSteps(codec, cfg)
    params, opt_state = steps.init(codec.flat(model))
    del model
    rng = np.random.default_rng(0)
    batch = jax.device_put(rng.integers(0, vocab, (cfg.batch_size, mc.block_size + 1)).astype(np.int32),
                           steps.batch_sharding)
    state = [params, opt_state]
    shapes = {"bench": "train", "family": cfg.model.family, "arch": mc.arch, "dtype": mc.dtype,
              "params": sum(int(np.prod(s)) for s in codec.shapes.values()), "batch": cfg.batch_size,
              "grad_accum_steps": cfg.grad_accum_steps, "block": mc.block_size, "n_layer": mc.n_layer,
              "n_embd": mc.n_embd}
    if FLAGS.compile_only:
        memory = steps.train_step.lower(params, opt_state, batch).compile().memory_analysis()
        emit({**shapes, "compiled_temp_mb": memory.temp_size_in_bytes / 2**20,
              "compiled_argument_mb": memory.argument_size_in_bytes / 2**20})
        return

    def run_step():
        state[0], state[1], metrics = steps.train_step(state[0], state[1], batch)
        metrics["loss"].block_until_ready()

    seconds = timed(run_step, FLAGS.warmup, FLAGS.steps)
    tokens = cfg.batch_size * mc.block_size
    tok_s = tokens / seconds
    fpt = train_flops_per_token(mc, mc.block_size)
    peak = FLAGS.peak_flops or device_peak_flops()
    emit({**shapes, "step_ms": seconds * 1e3, "tokens_per_s": tok_s,
          "model_tflops_per_s": fpt * tok_s / 1e12, "mfu": (fpt * tok_s / peak) if peak else None,
          **peak_memory()})
