#!/usr/bin/env python
"""Benchmarks, measured the same way every time.

    python bench.py train --config configs/tinystories.py [--config.model.family=rwkv] [--steps 10]
    python bench.py generate [--size table|small] [--contexts 16,64,...] [--out bench_out]
    python bench.py wkv [--shape 16,1024,8,64] [--chunks 16,32,64,128]
    python bench.py attention [--attention_shape 16,384,4,1,32] [--windows 64,global]
    python bench.py vs-torch [--size small|table]

Every figure is printed with the device, JAX version, dtype and shapes; with --json each
measurement is one JSON object per line. Times are medians over --repeats runs after warm-up,
with `block_until_ready`, so compilation is never counted.
"""

from __future__ import annotations

import json
import pathlib
import resource
import statistics
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/tinystories.py", "Training config (bench.py train).",
                                lock_config=True)
flags.DEFINE_bool("json", False, "print one JSON object per measurement")
flags.DEFINE_integer("steps", 10, "timed steps (train) or decode blocks (generate)")
flags.DEFINE_integer("warmup", 2, "untimed warm-up runs")
flags.DEFINE_integer("repeats", 5, "timed repeats (wkv, vs-torch)")
flags.DEFINE_string("size", "small", "generate / vs-torch model size: 'table' (8x768, the published table), "
                    "'small' (4x256) or 'tiny'")
flags.DEFINE_string("contexts", "16,64,256,1024,4096,16384", "generate: contexts to measure")
flags.DEFINE_string("families", "hybrid,rwkv,gpt,published", "generate: model families")
flags.DEFINE_string("out", "bench_out", "generate: directory for the JSON and the PNG")
flags.DEFINE_string("shape", "16,1024,8,64", "wkv: B,T,H,N")
flags.DEFINE_string("chunks", "16,32,64,128", "wkv: chunk sizes")
flags.DEFINE_string("attention_shape", "16,384,4,1,32", "attention: B,T,Hq,Hkv,N (the tiny config's GQA)")
flags.DEFINE_string("windows", "64,global", "attention: windows to measure ('global' for none)")
flags.DEFINE_string("dtype", "auto", "compute dtype: auto (bf16 on GPU, f32 on CPU), float32, bfloat16")
flags.DEFINE_float("peak_flops", None, "device peak FLOP/s for MFU (known GPUs are detected)")
flags.DEFINE_bool("compile_only", False, "train: report XLA's memory analysis of the compiled step, run nothing")


def environment() -> dict:
    import jax
    d = jax.devices()[0]
    return {"device": getattr(d, "device_kind", d.platform), "platform": d.platform, "device_count": jax.device_count(),
            "jax": jax.__version__, "date": time.strftime("%Y-%m-%d")}


def emit(record: dict) -> None:
    record = {**environment(), **record}
    if FLAGS.json:
        print(json.dumps(record), flush=True)
    else:
        skip = {"date", "platform", "device_count"}
        print("  ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k not in skip), flush=True)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def timed(fn, warmup: int, repeats: int) -> float:
    """Median seconds of fn() (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compute_dtype() -> str:
    import jax
    if FLAGS.dtype != "auto":
        return FLAGS.dtype
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def peak_memory() -> dict:
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"peak_device_memory_mb": stats["peak_bytes_in_use"] / 2**20}
    return {"peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# --- train --------------------------------------------------------------------------------------

def bench_train() -> None:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from microrwkv_jax import flops, train_lib
    from microrwkv_jax.checkpoints import ParamCodec, build_model

    cfg = FLAGS.config
    vocab = {"byte": 257, "gpt2": 50257}[cfg.tokenizer]
    with cfg.unlocked():
        if FLAGS.dtype != "auto":
            cfg.model.dtype = FLAGS.dtype
    mc = train_lib.model_config_from(cfg, vocab)
    model = build_model(mc, seed=0)
    codec = ParamCodec(model)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = jax.device_put(codec.flat(model), rep)
    del model
    optimizer = train_lib.make_optimizer(cfg)
    opt_state = jax.jit(optimizer.init, out_shardings=rep)(params)
    step = jax.jit(train_lib.make_train_step(codec, optimizer, cfg.grad_accum_steps, cfg.moe_aux_weight,
                                             data_shards=jax.device_count(),
                                             loss_chunk_elements=cfg.get("loss_chunk_elements")),
                   in_shardings=(rep, rep, shard), out_shardings=(rep, rep, rep), donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    batch = jax.device_put(rng.integers(0, vocab, (cfg.batch_size, mc.block_size + 1)).astype(np.int32), shard)
    state = [params, opt_state]
    shapes = {"bench": "train", "family": cfg.model.family, "arch": mc.arch, "dtype": mc.dtype,
              "params": sum(int(np.prod(s)) for s in codec.shapes.values()), "batch": cfg.batch_size,
              "grad_accum_steps": cfg.grad_accum_steps, "block": mc.block_size, "n_layer": mc.n_layer,
              "n_embd": mc.n_embd}
    if FLAGS.compile_only:
        memory = step.lower(params, opt_state, batch).compile().memory_analysis()
        emit({**shapes, "compiled_temp_mb": memory.temp_size_in_bytes / 2**20,
              "compiled_argument_mb": memory.argument_size_in_bytes / 2**20})
        return

    def run_step():
        state[0], state[1], metrics = step(state[0], state[1], batch)
        metrics["loss"].block_until_ready()

    seconds = timed(run_step, FLAGS.warmup, FLAGS.steps)
    tokens = cfg.batch_size * mc.block_size
    tok_s = tokens / seconds
    fpt = flops.train_flops_per_token(mc, mc.block_size)
    peak = FLAGS.peak_flops or flops.device_peak_flops()
    emit({**shapes, "step_ms": seconds * 1e3, "tokens_per_s": tok_s,
          "model_tflops_per_s": fpt * tok_s / 1e12, "mfu": (fpt * tok_s / peak) if peak else None,
          **peak_memory()})


# --- generate ------------------------------------------------------------------------------------

def model_size(name: str) -> dict:
    if name == "table":
        return dict(n_layer=8, n_embd=768, n_head=8, expert_dim=512, block_size=1024)
    if name == "small":
        return dict(n_layer=4, n_embd=256, n_head=4, expert_dim=256, block_size=1024)
    if name == "tiny":       # for the smoke test of this script
        return dict(n_layer=2, n_embd=64, n_head=2, expert_dim=64, block_size=128)
    raise app.UsageError(f"--size={name!r}: expected 'table', 'small' or 'tiny'")


def family_config(family: str, size: str):
    from microrwkv_jax.config import ModelConfig
    common = dict(vocab_size=50257, dtype=compute_dtype(), **model_size(size))
    if family == "published":
        return ModelConfig(arch="published", num_active_experts=4, **{**common, "vocab_size": 50304})
    if family == "hybrid":   # decoding stays flat only with windowed attention everywhere
        return ModelConfig.family("hybrid", gqa_window=256, **common)
    if family == "gpt":
        return ModelConfig.family("gpt", n_kv_head=common["n_head"], **common)
    return ModelConfig.family(family, **common)


def state_bytes(state) -> int:
    import jax
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def bench_generate() -> None:
    import jax.numpy as jnp
    from flax import nnx

    from microrwkv_jax import sampling
    from microrwkv_jax.checkpoints import build_model

    contexts = [int(c) for c in FLAGS.contexts.split(",")]
    block = 16
    results = []
    for family in FLAGS.families.split(","):
        config = family_config(family, FLAGS.size)
        model = build_model(config)
        graphdef, params = nnx.split(model)
        for context in contexts:
            if family == "published":
                # The published sampler reruns the whole window (cropped to block_size) per token.
                window = min(context, config.block_size)
                tokens = jnp.zeros((1, window), jnp.int32)
                keys = sampling._row_keys(0, 1, 0)
                fn = lambda: sampling._reforward_next(graphdef, params, tokens, keys, 1.0, None, None).block_until_ready()
                ms = timed(fn, FLAGS.warmup, max(2, FLAGS.steps // 4)) * 1e3
                mem = None          # no state: everything is recomputed from the window
            else:
                # The per-token cost depends on the state's shapes and position, not its contents:
                # start from a state placed at `context` instead of prefilling `context` tokens.
                state = model.init_state(1, sampling._capacity(context + block * (FLAGS.steps + FLAGS.warmup + 1)))
                state["pos"] = jnp.asarray(context, jnp.int32)
                logits = jnp.zeros((1, config.vocab_size), jnp.float32)
                done = jnp.zeros((1,), bool)
                carry = [state]

                def fn():
                    toks, carry[0], _, _ = sampling._decode_block(graphdef, params, carry[0], logits, done, block,
                                                                  1.0, None, None, 0, -1)
                    toks.block_until_ready()

                ms = timed(fn, FLAGS.warmup, FLAGS.steps) * 1e3 / block
                mem = state_bytes(state)
            record = {"bench": "generate", "family": family, "size": FLAGS.size, "dtype": config.dtype,
                      "n_layer": config.n_layer, "n_embd": config.n_embd, "batch": 1, "context": context,
                      "ms_per_token": ms, "state_bytes": mem}
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


# --- wkv -----------------------------------------------------------------------------------------

def bench_wkv() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from microrwkv_jax import wkv

    b, t, h, n = (int(x) for x in FLAGS.shape.split(","))
    dtype = jnp.dtype(compute_dtype())
    rng = np.random.default_rng(0)
    r, k, v = (jnp.asarray(rng.standard_normal((b, t, h, n)) * 0.5, dtype) for _ in range(3))
    w = jnp.asarray(rng.uniform(0.5, 0.999, h), jnp.float32)
    u = jnp.asarray(rng.standard_normal(h), jnp.float32)
    s0 = jnp.zeros((b, h, n, n), jnp.float32)
    forms = [(f"chunked_q{q}", (lambda q: lambda *a: wkv.wkv_chunked(*a, chunk_size=q))(int(q)))
             for q in FLAGS.chunks.split(",")] + [("scan", wkv.wkv_scan)]
    for name, fn in forms:
        fwd = jax.jit(lambda r, k, v: fn(r, k, v, w, u, s0)[0])
        loss = lambda r, k, v: jnp.sum(fn(r, k, v, w, u, s0)[0].astype(jnp.float32) ** 2)
        bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        for mode, f in (("forward", fwd), ("forward+backward", bwd)):
            sec = timed(lambda: jax.block_until_ready(f(r, k, v)), FLAGS.warmup, FLAGS.repeats)
            emit({"bench": "wkv", "form": name, "mode": mode, "B": b, "T": t, "H": h, "N": n,
                  "dtype": str(dtype), "ms": sec * 1e3})
    step = jax.jit(lambda r, k, v, s: wkv.wkv_step(r, k, v, w, u, s))
    sec = timed(lambda: jax.block_until_ready(step(r[:, 0], k[:, 0], v[:, 0], s0)), FLAGS.warmup, FLAGS.repeats)
    emit({"bench": "wkv", "form": "step", "mode": "forward (one token)", "B": b, "T": 1, "H": h, "N": n,
          "dtype": str(dtype), "ms": sec * 1e3})


# --- attention -------------------------------------------------------------------------------------

def bench_attention() -> None:
    """Training attention, forward+backward: XLA's masked T x T attention against `causal_attention`
    (blocked on the CPU, cuDNN on GPUs in bf16), for each window."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from microrwkv_jax.layers.attention import causal_attention

    b, t, hq, hkv, n = (int(x) for x in FLAGS.attention_shape.split(","))
    dtype = jnp.dtype(compute_dtype())
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, t, hq, n)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((b, t, hkv, n)), dtype) for _ in range(2))
    for window in (None if w == "global" else int(w) for w in FLAGS.windows.split(",")):
        xla = lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, local_window_size=None if window is None else (window - 1, 0))
        ours = lambda q, k, v: causal_attention(q, k, v, window)
        for name, fn in (("xla_masked", xla), ("causal_attention", ours)):
            loss = lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v).astype(jnp.float32) * q.astype(jnp.float32))
            grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            sec = timed(lambda: jax.block_until_ready(grad(q, k, v)), FLAGS.warmup, FLAGS.repeats)
            emit({"bench": "attention", "impl": name, "window": window, "B": b, "T": t, "Hq": hq, "Hkv": hkv,
                  "N": n, "dtype": str(dtype), "mode": "forward+backward", "ms": sec * 1e3})


# --- vs-torch ------------------------------------------------------------------------------------

def bench_vs_torch() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from tests import torch_reference as ref

    from microrwkv_jax.checkpoints import ParamCodec
    from microrwkv_jax.convert import config_from_model_args, params_from_state_dict
    from microrwkv_jax import flops, train_lib

    ref.WKV_FORM["chunked"] = True          # the published code's chunked WKV, not the test's token loop
    size = model_size(FLAGS.size)
    args = dict(vocab_size=50304, num_experts=4, num_active_experts=4, dim=size["n_embd"], dropout=0.0,
                bias=False, **size)
    batch, t = {"table": (16, 1024), "small": (8, 512), "tiny": (2, 64)}[FLAGS.size]
    dtype = compute_dtype()
    # PyTorch on the GPU when there is one, with bf16 autocast where JAX computes in bf16.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    tmodel = ref.PublishedTorchModel(args)
    config = config_from_model_args(args).replace(dtype=dtype)
    from microrwkv_jax.checkpoints import model_from_flat_params
    model = model_from_flat_params(config, params_from_state_dict({k: v.numpy() for k, v in tmodel.state_dict().items()}, config))
    tmodel = tmodel.to(device)
    codec = ParamCodec(model)
    idx = np.random.default_rng(0).integers(0, 50257, (batch, t + 1)).astype(np.int64)
    shapes = {"B": batch, "T": t, "n_layer": size["n_layer"], "n_embd": size["n_embd"], "dtype": dtype,
              "torch": torch.__version__, "torch_device": device, "torch_threads": torch.get_num_threads()}

    # forward
    x_t = torch.as_tensor(idx[:, :-1]).to(device)
    def torch_forward():
        with torch.no_grad(), autocast():
            tmodel(x_t)
        sync()
    params = codec.flat(model)
    fwd = jax.jit(lambda p, x: codec.model(p)(x))
    x_j = jnp.asarray(idx[:, :-1], jnp.int32)
    jax_s = timed(lambda: fwd(params, x_j).block_until_ready(), FLAGS.warmup, FLAGS.repeats)
    torch_s = timed(torch_forward, 1, FLAGS.repeats)
    emit({"bench": "vs-torch", "what": "forward", **shapes, "jax_ms": jax_s * 1e3, "torch_ms": torch_s * 1e3,
          "speedup": torch_s / jax_s})

    # train step: AdamW on the same loss, same batch
    opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4)
    y_t = torch.as_tensor(idx[:, 1:]).to(device)
    def torch_step():
        with autocast():
            logits = tmodel(x_t)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), y_t.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
    optimizer = optax.adamw(1e-4)
    opt_state = optimizer.init(params)
    step = jax.jit(train_lib.make_train_step(codec, optimizer, 1, 0.0), donate_argnums=(0, 1))
    batch_j = jnp.asarray(idx, jnp.int32)
    st = [params, opt_state]
    def jax_step():
        st[0], st[1], m = step(st[0], st[1], batch_j)
        m["loss"].block_until_ready()
    jax_s = timed(jax_step, FLAGS.warmup, FLAGS.repeats)
    torch_s = timed(torch_step, 1, FLAGS.repeats)
    step_gflop = flops.train_flops_per_token(config, t) * batch * t / 1e9    # model FLOPs, see flops.py
    emit({"bench": "vs-torch", "what": "train_step", **shapes, "jax_ms": jax_s * 1e3, "torch_ms": torch_s * 1e3,
          "speedup": torch_s / jax_s, "jax_tokens_per_s": batch * t / jax_s, "torch_tokens_per_s": batch * t / torch_s,
          "model_gflop": step_gflop, "jax_gflop_per_s": step_gflop / jax_s, "torch_gflop_per_s": step_gflop / torch_s})

    # What neither side can beat: the output head's three GEMMs (logits, d_x, d_embedding) alone.
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in
              ((batch * t, size["n_embd"]), (args["vocab_size"], size["n_embd"]), (batch * t, args["vocab_size"]))]
    on_jax = [jnp.asarray(a, jnp.dtype(dtype)) for a in arrays]
    on_torch = [torch.as_tensor(a).to(device, getattr(torch, dtype)) for a in arrays]
    gemms = lambda x, e, g: (x @ e.T, g @ e, g.T @ x)
    jax_gemms = jax.jit(gemms)
    jax_s = timed(lambda: jax.block_until_ready(jax_gemms(*on_jax)), FLAGS.warmup, FLAGS.repeats)
    torch_s = timed(lambda: (gemms(*on_torch), sync()), 1, FLAGS.repeats)
    (m, k), n = arrays[0].shape, arrays[1].shape[0]
    gflop = 3 * 2 * m * k * n / 1e9
    emit({"bench": "vs-torch", "what": "head_gemms", **shapes, "gemm": [m, k, n],
          "jax_ms": jax_s * 1e3, "torch_ms": torch_s * 1e3, "speedup": torch_s / jax_s,
          "jax_gflop_per_s": gflop / jax_s, "torch_gflop_per_s": gflop / torch_s})


COMMANDS = {"train": bench_train, "generate": bench_generate, "wkv": bench_wkv, "attention": bench_attention,
            "vs-torch": bench_vs_torch}


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: bench.py {{{'|'.join(COMMANDS)}}} [flags]")
    COMMANDS[argv[1]]()


if __name__ == "__main__":
    app.run(main)
