"""bench.py profile-decode: where a decoding token's time goes, from a `jax.profiler` trace.

    python bench.py profile-decode --size table --families rwkv,gpt --contexts 1024

Decodes `--steps` blocks of 16 tokens (greedy, batch 1) under `jax.profiler.trace`, reads the
Perfetto trace it writes and sums the device-side op times by op name (XLA's fusion or kernel
names: `dot`, `ynn_fusion...`, `while`, ...), per token. Prints the largest ones first, with
their share of the token's time.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile

from benchmarks.common import FLAGS, emit
from benchmarks.generate import family_config, recurrent_ms_per_token
from microrwkv_jax.families import build_model


def _trace_events(log_dir: pathlib.Path) -> list:
    (path,) = sorted(log_dir.rglob("*.trace.json.gz"))
    with gzip.open(path) as f:
        return json.load(f)["traceEvents"]


def op_times(events: list) -> collections.Counter:
    """Microseconds per kind of op (its name without the trailing .N: `dot`, `while`, a fusion's
    name) over the trace's complete events on XLA's executor threads (`tf_XLA...`); the Python
    thread's spans and the executor's own bookkeeping spans are left out. Ops inside a `while`
    loop count both on their own and in the `while`."""
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    times = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or not threads.get((e["pid"], e["tid"]), "").startswith("tf_XLA"):
            continue
        if e["name"].startswith(("ThreadpoolListener", "ThunkExecutor", "end: ")):
            continue
        times[re.sub(r"\.\d+$", "", e["name"])] += e.get("dur", 0)
    return times


def run() -> None:
    import jax

    block = 16
    for preset in FLAGS.families.split(","):
        config = family_config(preset, FLAGS.size)
        model = build_model(config)
        for context in (int(c) for c in FLAGS.contexts.split(",")):
            recurrent_ms_per_token(model, context, block)            # compile and warm up outside the trace
            with tempfile.TemporaryDirectory() as tmp:
                jax.profiler.start_trace(tmp, create_perfetto_trace=True)
                ms, _ = recurrent_ms_per_token(model, context, block)
                jax.profiler.stop_trace()
                times = op_times(_trace_events(pathlib.Path(tmp)))
            tokens = block * (FLAGS.warmup + FLAGS.steps)
            top = [{"op": name, "ms_per_token": round(us / tokens / 1e3, 3)} for name, us in times.most_common(12)]
            emit({"bench": "profile-decode", "family": preset, "size": FLAGS.size, "context": context,
                  "ms_per_token": ms, "top_ops": top})
