"""What every benchmark shares: its flags, the environment record, JSON output and timing.

Every figure is printed with the device, JAX version, dtype and shapes; with --json each
measurement is one JSON object per line. Times are medians over --repeats runs after warm-up,
with `block_until_ready`, so compilation is never counted.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time

from absl import app, flags
from ml_collections import config_flags

from microrwkv_jax.config import resolve_dtype

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
flags.DEFINE_string("families", "hybrid,rwkv,gpt,published,gpt2,rwkv4", "generate, eval: model families")
flags.DEFINE_string("out", "bench_out", "generate: directory for the JSON and the PNG")
flags.DEFINE_string("batches", "1", "generate: streams decoded together, measured at --batch_context")
flags.DEFINE_integer("batch_context", 256, "generate: the context at which --batches are measured")
flags.DEFINE_bool("peer_in_process", False, "generate: time transformers' peers inside this process, after ours "
                  "(as before issue #26), not each in a process of its own")
flags.DEFINE_string("param_dtype", "float32", "generate: the weights' dtype (bfloat16: bf16 storage, "
                    "float32 compute and WKV state)")
flags.DEFINE_string("shape", "16,1024,8,64", "wkv: B,T,H,N")
flags.DEFINE_string("chunks", "16,32,64,128", "wkv: chunk sizes")
flags.DEFINE_enum("decays", "per_head", ["per_head", "per_token", "rwkv7"], "wkv: x051a's decay per head, RWKV-6's per "
                  "token and key channel, or RWKV-7's generalised delta rule")
flags.DEFINE_integer("x051a_chunk", 32, "wkv: with --decays per_token or rwkv7, also time x051a's chunked form at this "
                     "chunk size and the same shape (0: not)")
flags.DEFINE_string("attention_shape", "16,384,4,1,32", "attention: B,T,Hq,Hkv,N (the tiny config's GQA)")
flags.DEFINE_string("windows", "64,global", "attention: windows to measure ('global' for none)")
flags.DEFINE_string("dtype", "auto", "compute dtype: auto (bf16 on GPU, f32 on CPU), float32, bfloat16")
flags.DEFINE_float("peak_flops", None, "device peak FLOP/s for MFU (known GPUs are detected)")
flags.DEFINE_bool("compile_only", False, "train: report XLA's memory analysis of the compiled step, run nothing")
flags.DEFINE_string("text", None, "text: the text file of the race (e.g. a 2 MB novel)")
flags.DEFINE_string("nanogpt", os.environ.get("MICRORWKV_NANOGPT_DIR"), "text: a directory with nanoGPT's model.py, "
                    "train.py, configurator.py and config/ (MIT, unmodified; default: $MICRORWKV_NANOGPT_DIR)")
flags.DEFINE_integer("nanogpt_iters", 2000, "text: nanoGPT's max_iters (and lr_decay_iters), its README's recipe")
flags.DEFINE_string("text_config", "configs/text.py", "text: our config")
flags.DEFINE_integer("throughput_steps", 300, "text: steps of our trainer at nanoGPT's shapes, for tokens/s (0: none)")
flags.DEFINE_string("throughput_families", "gpt:1,gpt:2,rwkv:2,hybrid:2", "text: FAMILY:CPU_DEVICES whose tokens/s "
                    "at nanoGPT's shapes are measured")
flags.DEFINE_float("our_minutes", None, "text: our training budget (default: ends our run at nanoGPT's wall time, "
                   "then at half of it)")
flags.DEFINE_string("topology", None, "train --compile_only: compile for this TPU topology (e.g. v5e:2x2, v5p:2x2x1) "
                    "on this machine, without a TPU; needs libtpu (the tpu-compile extra)")


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
    return resolve_dtype(FLAGS.dtype, jax.default_backend())


def peak_memory() -> dict:
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"peak_device_memory_mb": stats["peak_bytes_in_use"] / 2**20}
    return {"peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def model_size(name: str) -> dict:
    if name == "table":
        return dict(n_layer=8, n_embd=768, n_head=8, expert_dim=512, block_size=1024)
    if name == "small":
        return dict(n_layer=4, n_embd=256, n_head=4, expert_dim=256, block_size=1024)
    if name == "tiny":       # for the smoke test of this script
        return dict(n_layer=2, n_embd=64, n_head=2, expert_dim=64, block_size=128)
    raise app.UsageError(f"--size={name!r}: expected 'table', 'small' or 'tiny'")
