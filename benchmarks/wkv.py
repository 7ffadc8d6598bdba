"""bench.py wkv: the WKV operator's forms (chunked at several chunk sizes, scan, one-token step),
forward and forward+backward (the gradient of every input, decays included).

    --decays per_head:  x051a's one decay per head (wkv5)
    --decays per_token: RWKV-6's decay per token and key channel, 0.004 to 0.999 (wkv5)
    --decays rwkv7:     RWKV-7's generalised delta rule, decays down to its clamp e^(-e^-0.5) (wkv7)

With per_token or rwkv7, x051a's chunked form at --x051a_chunk runs at the same shape in the same
process, the reference the issue's targets are stated against. Every array is an argument of
the jitted functions (never a closure constant, which XLA would fold at compile time)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import FLAGS, compute_dtype, emit, timed
from microrwkv_jax.ops import wkv5, wkv7

DECAY_CLAMP_RWKV7 = float(np.exp(-np.exp(-0.5)))


def _inputs(kind: str, shape, dtype, rng):
    """(names, arrays, indices of the arrays the gradient is taken of) of one operator call."""
    b, t, h, n = shape
    r, k, v = (jnp.asarray(rng.standard_normal(shape) * 0.5, dtype) for _ in range(3))
    s0 = jnp.zeros((b, h, n, n), jnp.float32)
    if kind == "per_head":
        w = jnp.asarray(rng.uniform(0.5, 0.999, h), jnp.float32)
        return (r, k, v, w, jnp.asarray(rng.standard_normal(h), jnp.float32), s0), (0, 1, 2)
    if kind == "per_token":
        w = jnp.asarray(rng.uniform(0.004, 0.999, shape), jnp.float32)
        return (r, k, v, w, jnp.asarray(rng.standard_normal((h, n)), jnp.float32), s0), (0, 1, 2, 3)
    w = jnp.asarray(rng.uniform(DECAY_CLAMP_RWKV7, 0.999, shape), jnp.float32)
    kappa = rng.standard_normal(shape)
    kappa /= np.linalg.norm(kappa, axis=-1, keepdims=True)
    a, b_ = jnp.asarray(-kappa, dtype), jnp.asarray(kappa * rng.uniform(0, 1, shape), dtype)
    return (r, k, v, w, a, b_, s0), (0, 1, 2, 3, 4, 5)


def _time_forms(kind, forms, args, grads_of, shape, dtype):
    b, t, h, n = shape
    for name, fn in forms:
        fwd = jax.jit(lambda *a: fn(*a)[0])
        bwd = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)[0].astype(jnp.float32) ** 2), argnums=grads_of))
        for mode, f in (("forward", fwd), ("forward+backward", bwd)):
            sec = timed(lambda: jax.block_until_ready(f(*args)), FLAGS.warmup, FLAGS.repeats)
            emit({"bench": "wkv", "decays": kind, "form": name, "mode": mode, "B": b, "T": t, "H": h,
                  "N": n, "dtype": str(dtype), "ms": sec * 1e3})


def run() -> None:
    shape = tuple(int(x) for x in FLAGS.shape.split(","))
    dtype = jnp.dtype(compute_dtype())
    kind = FLAGS.decays
    args, grads_of = _inputs(kind, shape, dtype, np.random.default_rng(0))
    chunked, scan, step = ((wkv7.wkv7_chunked, wkv7.wkv7_scan, wkv7.wkv7_step) if kind == "rwkv7"
                           else (wkv5.wkv5_chunked, wkv5.wkv5_scan, wkv5.wkv5_step))
    forms = [(f"chunked_q{q}", (lambda q: lambda *a: chunked(*a, chunk_size=q))(int(q)))
             for q in FLAGS.chunks.split(",")] + [("scan", scan)]
    _time_forms(kind, forms, args, grads_of, shape, dtype)
    if kind != "per_head" and FLAGS.x051a_chunk:
        q = FLAGS.x051a_chunk
        x051a_args, x051a_grads = _inputs("per_head", shape, dtype, np.random.default_rng(0))
        _time_forms("per_head", [(f"x051a_chunked_q{q}", lambda *a: wkv5.wkv5_chunked(*a, chunk_size=q))],
                    x051a_args, x051a_grads, shape, dtype)
    b, t, h, n = shape
    one_token = [x[:, 0] if x.ndim == 4 else x for x in args[:-1]] + [args[-1]]
    step = jax.jit(step)
    sec = timed(lambda: jax.block_until_ready(step(*one_token)), FLAGS.warmup, FLAGS.repeats)
    emit({"bench": "wkv", "decays": kind, "form": "step", "mode": "forward (one token)", "B": b, "T": 1,
          "H": h, "N": n, "dtype": str(dtype), "ms": sec * 1e3})
