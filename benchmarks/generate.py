"""bench.py generate: decoding ms/token at batch 1 for each family and context, beside its floor
(the bytes a token must read -- weights and the filled part of the caches -- at the bandwidth a
large float32 matrix-vector product reaches in the same run), its state size, and a figure
(latency, cumulative time, state memory against context). At --batch_context, also tokens/s at
each of --batches streams. For gpt2 and rwkv4, when `transformers` is installed, its GPT-2
(key/value cache) and RWKV (recurrent state) decode with the same weights in the same run, each in
a process of its own after ours (`transformers_ms_per_token` beside ours). --param_dtype bfloat16
decodes with bf16 weights and reports their logits' deviation from float32. For rwkv5, rwkv6 and
rwkv7, BlinkDL's `rwkv` package decodes the same random weights (a BlinkDL `.pth` both sides load)
in a process of its own, after ours (`rwkv_package_ms_per_token`); --size may name a preset of
theirs (e.g. rwkv7-0.1b, rwkv6-1.6b)."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import rwkv_package_peer, transformers_peers
from benchmarks.common import FLAGS, compute_dtype, emit, environment, model_size, timed
from microrwkv_jax import decoding, sampling
from microrwkv_jax.families import PRESETS, build_model, model_config


BLINKDL_PEERS = {"rwkv5": "5.2", "rwkv6": "6", "rwkv7": "7"}     # family -> the package's generation


def family_config(preset: str, size: str):
    if preset in BLINKDL_PEERS:     # a World model's size (--size rwkv7-0.1b), or ours with 64-channel heads
        if size in PRESETS and PRESETS[size][0].arch == preset:
            return model_config(size, dtype=compute_dtype())
        shape = model_size(size)
        return model_config(preset, n_layer=shape["n_layer"], n_embd=shape["n_embd"], n_head=shape["n_embd"] // 64,
                            vocab_size=65536, dtype=compute_dtype())
    common = dict(vocab_size=50257, dtype=compute_dtype(), **model_size(size))
    if preset == "published":
        return model_config("published", num_active_experts=4, **{**common, "vocab_size": 50304})
    if preset == "hybrid":   # decoding stays flat only with windowed attention everywhere
        return model_config("hybrid", gqa_window=256, **common)
    if preset == "gpt":
        return model_config("gpt", n_kv_head=common["n_head"], **common)
    if preset == "gpt2":    # 2048 learned positions, so that it decodes at context 1024 like the others
        return model_config("gpt2", **{**common, "n_kv_head": common["n_head"],
                                       "block_size": max(2048, common["block_size"])})
    if preset == "rwkv4":      # no heads; the Pile models' vocabulary
        return model_config("rwkv4", **{**common, "n_head": 1, "n_kv_head": 1, "vocab_size": 50277})
    return model_config(preset, **common)


def state_bytes(state) -> int:
    import jax
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def recurrent_ms_per_token(model, context: int, block: int, batch: int = 1) -> tuple:
    """ms per decoding step (one token for each of `batch` streams) of greedy `decoding.decode_block`
    (`block` steps) from a state at position `context`, and the state's bytes.

    The per-token cost depends on the state's shapes and position, not its contents: the state
    starts placed at `context` instead of prefilling `context` tokens; each run continues from the
    last (the state is donated, as in generation), so the position moves on by `block` per run."""
    graphdef, params = nnx.split(model)
    runs = FLAGS.warmup + FLAGS.steps
    state = model.init_state(batch, decoding.cache_capacity(context + block * (runs + 1)))
    state["pos"] = jnp.asarray(context, jnp.int32)
    size = state_bytes(state)
    token = jnp.zeros((batch,), jnp.int32)
    done = jnp.zeros((batch,), bool)
    carry = [state]
    no_prompt = np.zeros((batch, decoding.PREFILL_PIECE), np.int32)      # (nothing of a prompt left to feed)

    def fn():
        tokens, carry[0], _, _ = decoding.decode_block(graphdef, params, carry[0], no_prompt, np.int32(0), token, done,
                                                       np.int32(block), block, *decoding.sampling_options(0.0, None, None),
                                                       np.int32(0), np.int32(-1))
        tokens.block_until_ready()

    return timed(fn, FLAGS.warmup, FLAGS.steps) * 1e3 / block, size


def matvec_bytes_per_s() -> float:
    """The read bandwidth a large float32 matrix-vector product reaches here: [1, 4096] @ [4096,
    16384] (256 MiB), the rate decoding at batch 1 can at best stream its weights at."""
    w = jnp.asarray(np.random.default_rng(0).standard_normal((4096, 16384), np.float32))
    x = jnp.ones((1, 4096), jnp.float32)
    matvec = jax.jit(lambda x, w: x @ w)
    return w.nbytes / timed(lambda: matvec(x, w).block_until_ready(), 2, 9)


def bytes_read_per_token(model, state, context: int) -> int:
    """What one decoding step at batch 1 must read: every parameter, except that an input-only
    embedding table (not the output head) gives one row; and the decoding state, of whose
    attention caches only the filled slots (min(context + 1, slots)) are read."""
    output = model.output_embedding()
    total = 0
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param):
            total += node[...].nbytes
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Embed) and node.embedding[...] is not output:
            table = node.embedding[...]
            total -= table.nbytes - table.nbytes // table.shape[0]
    for leaf in jax.tree.leaves(state):
        if leaf.ndim == 4:                 # a [B, Hkv, slots, N] key or value cache
            total += leaf.nbytes * min(context + 1, leaf.shape[2]) // leaf.shape[2]
        else:
            total += leaf.nbytes
    return total


def reforward_ms_per_token(model, context: int, tokens_per_run: int = 4) -> float:
    """ms per token of `sampling.generate` for a family that reruns its window (cropped to
    block_size) for every token: no state, everything is recomputed from the window."""
    window = min(context, model.config.block_size)
    prompt = np.zeros((1, window), np.int32)
    fn = lambda: sampling.generate(model, prompt, tokens_per_run, temperature=1.0)
    return timed(fn, FLAGS.warmup, max(2, FLAGS.steps // 4)) * 1e3 / tokens_per_run


def with_param_dtype(model, param_dtype: str):
    """`model` with its parameters cast to `param_dtype` (the compute dtype stays the config's)."""
    if param_dtype == "float32":
        return model
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.merge(graphdef, jax.tree.map(lambda p: p.astype(param_dtype), params), rest)


def logits_deviation(model, reference, vocab_size: int) -> float:
    """Relative L2 distance of `model`'s logits from `reference`'s over a random 64-token prompt."""
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, vocab_size, (1, 64)), jnp.int32)
    forward = jax.jit(lambda m, x: m(x))
    a, b = np.asarray(forward(model, tokens), np.float64), np.asarray(forward(reference, tokens), np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def blinkdl_same_weights(config, out: pathlib.Path):
    """(a BlinkDL .pth of random weights of `config`, our model loaded from it as a user would)."""
    from microrwkv_jax.families import get_family
    from microrwkv_jax.loading import load_model
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{config.arch}-bench.pth"
    table = get_family(config.arch).torch_checkpoint.parameter_map(config)
    rwkv_package_peer.save_pth(rwkv_package_peer.random_state_dict(table), path,
                               "bfloat16" if FLAGS.param_dtype == "bfloat16" else "float32")
    model, _ = load_model(path, dtype=config.dtype)       # float32 parameters; --param_dtype casts them below
    return path, model


def run() -> None:
    contexts = [int(c) for c in FLAGS.contexts.split(",")]
    batches = [int(b) for b in FLAGS.batches.split(",")]
    block, runs = 16, FLAGS.warmup + FLAGS.steps
    results = []
    for preset in FLAGS.families.split(","):
        config = family_config(preset, FLAGS.size)
        # Measured again for every family: this machine's bandwidth drifts by 10-20% over minutes.
        bandwidth = matvec_bytes_per_s()
        peer, package_pth = None, None
        if preset in transformers_peers.PEER_FAMILIES and transformers_peers.available():
            peer, model = transformers_peers.saved_same_weights(config, pathlib.Path(FLAGS.out) / f"{preset}-peer")
        elif preset in BLINKDL_PEERS and rwkv_package_peer.available():
            package_pth, model = blinkdl_same_weights(config, pathlib.Path(FLAGS.out))
        else:
            model = build_model(config)
        deviation = None
        if FLAGS.param_dtype != "float32":
            reduced = with_param_dtype(model, FLAGS.param_dtype)
            deviation = logits_deviation(reduced, model, config.vocab_size)
            model = reduced
        recurrent = PRESETS[preset][0].recurrent
        family_records = []
        for context in contexts:
            if preset == "gpt2" and context + block * (runs + 1) > config.block_size:
                continue          # GPT-2's learned positions end at block_size (n_positions)
            for batch in (batches if context == FLAGS.batch_context else [1]):
                record = {"bench": "generate", "family": preset, "size": FLAGS.size, "dtype": config.dtype,
                          "param_dtype": FLAGS.param_dtype, "n_layer": config.n_layer, "n_embd": config.n_embd,
                          "batch": batch, "context": context}
                if recurrent:
                    ms, mem = recurrent_ms_per_token(model, context, block, batch)
                    state = model.init_state(batch, decoding.cache_capacity(context + block * (runs + 1)))
                    record.update(ms_per_token=ms, tokens_per_s=batch * 1e3 / ms, state_bytes=mem,
                                  state_bytes_per_stream=mem // batch)
                    if batch == 1:
                        floor = bytes_read_per_token(model, state, context) / bandwidth * 1e3
                        record.update(floor_ms_per_token=floor, floor_ratio=ms / floor,
                                      matvec_gb_per_s=bandwidth / 1e9)
                elif batch == 1:
                    ms = reforward_ms_per_token(model, context)
                    record.update(ms_per_token=ms, tokens_per_s=1e3 / ms, state_bytes=None)
                else:
                    continue
                if deviation is not None:
                    record["logits_rel_err_vs_float32"] = deviation
                family_records.append(record)
        if peer is not None:             # after ours, alone, each measurement in a process of its own
            if not FLAGS.peer_in_process:
                del model
            for record in family_records:
                # (4 steps per run beyond batch 1: transformers' batched RWKV step takes seconds on a CPU)
                measure = (transformers_peers.decode_in_this_process if FLAGS.peer_in_process
                           else transformers_peers.decode_in_own_process)
                measured = measure(peer, record["context"], block if record["batch"] == 1 else 4, FLAGS.warmup,
                                   max(2, FLAGS.steps // 2), record["batch"])
                peer_ms = measured["ms_per_token"]
                record.update(transformers_ms_per_token=peer_ms,
                              transformers_tokens_per_s=record["batch"] * 1e3 / peer_ms,
                              speedup_vs_transformers=peer_ms / record["ms_per_token"], torch=measured["torch"],
                              torch_threads=measured["torch_threads"])
            shutil.rmtree(peer)
        if package_pth is not None:      # after ours, alone, in its own process; it has no batch: streams in turn
            del model
            measured = rwkv_package_peer.ms_per_token(package_pth, BLINKDL_PEERS[preset], "cpu fp32", FLAGS.warmup,
                                                      max(2, FLAGS.steps // 2))
            package_pth.unlink()
            for record in family_records:
                record.update(rwkv_package_ms_per_token=measured["ms_per_token"],
                              rwkv_package_tokens_per_s=1e3 / measured["ms_per_token"],
                              speedup_vs_rwkv_package=record["tokens_per_s"] * measured["ms_per_token"] / 1e3,
                              rwkv_package=measured)
        for record in family_records:
            emit(record)
            results.append({**environment(), **record})
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(results, indent=1))
    plot_generate([r for r in results if r["batch"] == 1], out / "generate.png")
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
