"""bench.py profile-train: where a training step's time goes, from a `jax.profiler` trace.

    python bench.py profile-train --config configs/tiny.py [--steps 10]

Runs the trainer's compiled step (`ShardedSteps`, as `bench.py train`) `--steps` times under
`jax.profiler.trace`, then attributes every op the trace timed to what it computes, through the
op names XLA keeps in the compiled program: the sub-layer (the causal model names each one's ops
with `jax.named_scope`: time_mix, channel_mix, swa, gqa, moe, mlp; `head` is the fused loss,
`optimizer` the AdamW update, `other` the embedding, norms and the rest), forward or backward
(ops under autodiff's `transpose`), and matrix products (XLA's `dot` and YNNPACK fusions) or the
rest (elementwise, transposes and copies, reductions). Prints ms per step for each, largest first.
"""

from __future__ import annotations

import collections
import pathlib
import re
import tempfile

import jax
import numpy as np

from benchmarks.common import FLAGS, emit, timed
from benchmarks.profile_decode import _trace_events, op_times
from benchmarks.train import random_batch, setup
from microrwkv_jax.families import build_model

SCOPES = ("time_mix", "channel_mix", "swa", "gqa", "moe", "mlp", "head", "optimizer")
OP_NAME = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.M)


def attribute(op_name: str, instruction: str) -> tuple:
    """(scope, direction, kind) of one op of the compiled step."""
    scope = next((s for s in SCOPES if re.search(rf"(^|[/(]){s}($|[/)])", op_name)), "other")
    direction = "optimizer" if scope == "optimizer" else ("backward" if "transpose(" in op_name else "forward")
    kind = "matmul" if instruction.startswith(("dot", "ynn_fusion", "onednn", "xnn")) else "other"
    return scope, direction, kind


def run() -> None:
    cfg = FLAGS.config
    mc, codec, steps, shapes = setup(cfg, jax.devices())
    params, opt_state = steps.init(codec.flat(build_model(mc, seed=0)))
    compiled = steps.compile(params, opt_state, (cfg.batch_size, mc.block_size + 1))
    names = dict(OP_NAME.findall(compiled.as_text()))
    batch = random_batch(steps, (cfg.batch_size, mc.block_size + 1), mc.vocab_size)
    state = [params, opt_state]

    def step():
        state[0], state[1], metrics = compiled(state[0], state[1], batch, np.float32(cfg.learning_rate))
        metrics["loss"].block_until_ready()

    step_ms = timed(step, FLAGS.warmup, FLAGS.steps) * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(FLAGS.steps):
            step()
        jax.profiler.stop_trace()
        events = _trace_events(pathlib.Path(tmp))
    per_op = collections.Counter()
    for e in events:     # (op_times' filter: XLA's executor threads, not its bookkeeping spans)
        if e.get("ph") == "X" and e["name"] in names:
            per_op[e["name"]] += e.get("dur", 0)
    assert sum(per_op.values()) <= sum(op_times(events).values()) + 1
    groups = collections.Counter()
    for instruction, us in per_op.items():
        groups[attribute(names[instruction], instruction)] += us / FLAGS.steps / 1e3
    traced = sum(groups.values())
    emit({"bench": "profile-train", **shapes, "step_ms": step_ms, "traced_ms": traced,
          "top": [{"scope": s, "direction": d, "kind": k, "ms": round(ms, 2), "share": round(ms / traced, 3)}
                  for (s, d, k), ms in groups.most_common(14)],
          "by_scope": {s: round(sum(ms for (g, _, _), ms in groups.items() if g == s), 2)
                       for s in (*SCOPES, "other")},
          "matmul_share": round(sum(ms for (_, _, k), ms in groups.items() if k == "matmul") / traced, 3)})
