"""bench.py generate: decoding ms/token at batch 1 for each family and context, its state size,
and a figure (latency, cumulative time, state memory against context). For gpt2 and rwkv4, when
`transformers` is installed, its GPT-2 (key/value cache) and RWKV (recurrent state) decode with
the same weights in the same run: `transformers_ms_per_token` beside ours."""

from __future__ import annotations

import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import transformers_peers
from benchmarks.common import FLAGS, compute_dtype, emit, environment, model_size, timed
from microrwkv_jax import decoding, sampling
from microrwkv_jax.families import PRESETS, build_model, model_config


def family_config(preset: str, size: str):
    common = dict(vocab_size=50257, dtype=compute_dtype(), **model_size(size))
    if preset == "published":
        return model_config("published", num_active_experts=4, **{**common, "vocab_size": 50304})
    if preset == "hybrid":   # decoding stays flat only with windowed attention everywhere
        return model_config("hybrid", gqa_window=256, **common)
    if preset == "gpt":
        return model_config("gpt", n_kv_head=common["n_head"], **common)
    if preset == "gpt2":
        return model_config("gpt2", **{**common, "n_kv_head": common["n_head"]})
    if preset == "rwkv4":      # no heads; the Pile models' vocabulary
        return model_config("rwkv4", **{**common, "n_head": 1, "n_kv_head": 1, "vocab_size": 50277})
    return model_config(preset, **common)


def state_bytes(state) -> int:
    import jax
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def recurrent_ms_per_token(model, context: int, block: int) -> tuple:
    """ms per token of greedy `decoding.decode_block` (`block` tokens) from a state at position `context`,
    and the state's bytes.

    The per-token cost depends on the state's shapes and position, not its contents: every run
    starts from the same state, placed at `context`, instead of prefilling `context` tokens."""
    graphdef, params = nnx.split(model)
    state = model.init_state(1, decoding.cache_capacity(context + block))
    state["pos"] = jnp.asarray(context, jnp.int32)
    logits = jnp.zeros((1, model.config.vocab_size), jnp.float32)
    done = jnp.zeros((1,), bool)

    def fn():
        tokens, _, _, _ = decoding.decode_block(graphdef, params, state, logits, done, block, 0.0, None, None, 0, -1)
        tokens.block_until_ready()

    return timed(fn, FLAGS.warmup, FLAGS.steps) * 1e3 / block, state_bytes(state)


def reforward_ms_per_token(model, context: int, tokens_per_run: int = 4) -> float:
    """ms per token of `sampling.generate` for a family that reruns its window (cropped to
    block_size) for every token: no state, everything is recomputed from the window."""
    window = min(context, model.config.block_size)
    prompt = np.zeros((1, window), np.int32)
    fn = lambda: sampling.generate(model, prompt, tokens_per_run, temperature=1.0)
    return timed(fn, FLAGS.warmup, max(2, FLAGS.steps // 4)) * 1e3 / tokens_per_run


def run() -> None:
    contexts = [int(c) for c in FLAGS.contexts.split(",")]
    block = 16
    results = []
    for preset in FLAGS.families.split(","):
        config = family_config(preset, FLAGS.size)
        peer = None
        if preset in transformers_peers.PEER_FAMILIES and transformers_peers.available():
            peer, model = transformers_peers.same_weights(config)     # the peer in the same run
        else:
            model = build_model(config)
        for context in contexts:
            if preset == "gpt2" and context + block > config.block_size:
                continue          # GPT-2's learned positions end at block_size (n_positions)
            if PRESETS[preset][0].recurrent:
                ms, mem = recurrent_ms_per_token(model, context, block)
            else:
                ms, mem = reforward_ms_per_token(model, context), None
            record = {"bench": "generate", "family": preset, "size": FLAGS.size, "dtype": config.dtype,
                      "n_layer": config.n_layer, "n_embd": config.n_embd, "batch": 1, "context": context,
                      "ms_per_token": ms, "state_bytes": mem}
            if peer is not None:
                import torch
                record.update(transformers_ms_per_token=transformers_peers.decode_ms_per_token(
                    peer, context, block, FLAGS.warmup, max(2, FLAGS.steps // 2)),
                    torch=torch.__version__, torch_threads=torch.get_num_threads())
                record["speedup_vs_transformers"] = record["transformers_ms_per_token"] / ms
            emit(record)
            results.append({**environment(), **record})
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(results, indent=1))
    plot_generate(results, out / "generate.png")
    print(f"wrote {out / 'generate.json'} and {out / 'generate.png'}", file=sys.stderr)


def plot_generate(results, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for family in dict.fromkeys(r["family"] for r in results):
        rows = [r for r in results if r["family"] == family]
        ctx = np.asarray([r["context"] for r in rows], float)
        ms = np.asarray([r["ms_per_token"] for r in rows])
        axes[0].plot(ctx, ms, marker="o", label=family)
        # Cumulative time to generate up to each context: integral of the per-token latency.
        grid = np.arange(1, ctx.max() + 1)
        cum = np.cumsum(np.interp(grid, ctx, ms)) / 1e3
        axes[1].plot(grid, cum, label=family)
        if rows[0]["state_bytes"] is not None:
            axes[2].plot(ctx, [r["state_bytes"] / 2**20 for r in rows], marker="o", label=family)
    titles = ("per-token latency (ms)", "cumulative generation time (s)", "decoding state (MiB)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    env = environment()
    fig.suptitle(f"MicroRWKV decoding, batch 1, {results[0]['size']} size, {results[0]['dtype']}, "
                 f"{env['device']}, jax {env['jax']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
