"""bench.py wkv: the WKV operator's forms (chunked at several chunk sizes, scan, one-token step),
forward and forward+backward. --decays per_head: x051a's one decay per head; per_token: RWKV-6's
decay per token and key channel (0.004 to 0.999; the backward pass differentiates it too)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import FLAGS, compute_dtype, emit, timed
from microrwkv_jax.ops import wkv5


def run() -> None:
    b, t, h, n = (int(x) for x in FLAGS.shape.split(","))
    dtype = jnp.dtype(compute_dtype())
    rng = np.random.default_rng(0)
    r, k, v = (jnp.asarray(rng.standard_normal((b, t, h, n)) * 0.5, dtype) for _ in range(3))
    per_token = FLAGS.decays == "per_token"
    if per_token:
        w = jnp.asarray(rng.uniform(0.004, 0.999, (b, t, h, n)), jnp.float32)
        u = jnp.asarray(rng.standard_normal((h, n)), jnp.float32)
    else:
        w = jnp.asarray(rng.uniform(0.5, 0.999, h), jnp.float32)
        u = jnp.asarray(rng.standard_normal(h), jnp.float32)
    s0 = jnp.zeros((b, h, n, n), jnp.float32)
    forms = [(f"chunked_q{q}", (lambda q: lambda *a: wkv5.wkv5_chunked(*a, chunk_size=q))(int(q)))
             for q in FLAGS.chunks.split(",")] + [("scan", wkv5.wkv5_scan)]
    grads_of = (0, 1, 2, 3) if per_token else (0, 1, 2)
    for name, fn in forms:
        fwd = jax.jit(lambda r, k, v, w: fn(r, k, v, w, u, s0)[0])
        loss = lambda r, k, v, w: jnp.sum(fn(r, k, v, w, u, s0)[0].astype(jnp.float32) ** 2)
        bwd = jax.jit(jax.grad(loss, argnums=grads_of))
        for mode, f in (("forward", fwd), ("forward+backward", bwd)):
            sec = timed(lambda: jax.block_until_ready(f(r, k, v, w)), FLAGS.warmup, FLAGS.repeats)
            emit({"bench": "wkv", "decays": FLAGS.decays, "form": name, "mode": mode, "B": b, "T": t, "H": h,
                  "N": n, "dtype": str(dtype), "ms": sec * 1e3})
    step = jax.jit(lambda r, k, v, w, s: wkv5.wkv5_step(r, k, v, w, u, s))
    w0 = w[:, 0] if per_token else w
    sec = timed(lambda: jax.block_until_ready(step(r[:, 0], k[:, 0], v[:, 0], w0, s0)), FLAGS.warmup, FLAGS.repeats)
    emit({"bench": "wkv", "decays": FLAGS.decays, "form": "step", "mode": "forward (one token)", "B": b, "T": 1,
          "H": h, "N": n, "dtype": str(dtype), "ms": sec * 1e3})
