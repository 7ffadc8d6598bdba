"""bench.py attention: training attention, forward+backward: XLA's masked T x T attention
against `causal_attention` (blocked on the CPU, cuDNN on GPUs in bf16), for each window."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import FLAGS, compute_dtype, emit, timed
from microrwkv_jax.layers.attention import causal_attention


def run() -> None:
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
