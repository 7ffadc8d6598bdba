"""`rwkv-ops` (a Keras 3 library of RWKV operators), the JAX peer of RWKV-7's WKV: its
`generalized_delta_rule` on the JAX backend. On a CPU that is its native op, a `fori_loop` over
the tokens (its chunked kernels are CUDA, Triton and Pallas, for GPUs and TPUs); it runs here in a
virtual environment of its own, since it needs Keras 3, which this project does not install:

    python3 -m venv /tmp/rwkv_ops_venv && /tmp/rwkv_ops_venv/bin/pip install "jax==0.10.2" keras rwkv-ops
    KERAS_BACKEND=jax /tmp/rwkv_ops_venv/bin/python -m benchmarks.rwkv_ops_peer time \\
        --shape 16,1024,12,64 --out /tmp/rwkv_ops_y.npz            # one JSON line; its y saved
    python -m benchmarks.rwkv_ops_peer check /tmp/rwkv_ops_y.npz     # ours on the same inputs

(from the repository root, as modules: run as a file, benchmarks/tokenize.py would shadow the
standard library's `tokenize`).

Both modes draw the same inputs (`inputs`, numpy, seed 0) as RWKV-7 makes them: w in
[exp(-exp(-0.5)), 1), a = -kappa, b = kappa * iclr with kappa a unit vector per head. `time`
reports forward and forward+backward (every input differentiated, as `bench.py wkv` does) in
ms, best of `--repeats` after `--warmup` runs; `check` runs our `wkv7_chunked` (chunks of 16) on
the inputs and prints the relative L2 difference of y from the peer's.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def inputs(b: int, t: int, h: int, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    normal = lambda: rng.standard_normal((b, t, h, n)).astype(np.float32)
    w = np.exp(-np.exp(-0.5) * rng.uniform(0, 1, (b, t, h, n))).astype(np.float32)
    kappa = normal()
    kappa /= np.linalg.norm(kappa, axis=-1, keepdims=True)
    iclr = rng.uniform(0, 1, (b, t, h, n)).astype(np.float32)
    return dict(r=normal(), k=normal(), v=normal(), w=w, a=-kappa, b=kappa * iclr)


def best_ms(fn, args, warmup: int, repeats: int) -> float:
    import jax
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def time_peer(shape, warmup: int, repeats: int, out):
    import jax
    import jax.numpy as jnp
    from importlib.metadata import version

    from rwkv_ops import generalized_delta_rule

    b, t, h, n = shape
    x = {name: jnp.asarray(value) for name, value in inputs(b, t, h, n).items()}
    # rwkv-ops takes the decay as w' with w = exp(-exp(w')), and r, w, k, v, a, b in that order.
    log_log_w = jnp.log(-jnp.log(x["w"]))

    def forward(r, w, k, v, a, b_):
        y, state = generalized_delta_rule(r, w, k, v, a, b_, output_final_state=True)
        return y, state

    def loss(*args):
        y, state = forward(*args)
        return jnp.sum(y * y) + jnp.sum(state)

    args = (x["r"], log_log_w, x["k"], x["v"], x["a"], x["b"])
    fwd = jax.jit(forward)
    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6))))
    result = {"peer": "rwkv-ops", "version": version("rwkv-ops"), "jax": jax.__version__,
              "op": "generalized_delta_rule (native: fori_loop over tokens)", "shape": list(shape),
              "forward_ms": best_ms(fwd, args, warmup, repeats),
              "forward_backward_ms": best_ms(fwd_bwd, args, warmup, repeats),
              "date": time.strftime("%Y-%m-%d")}
    if out:
        np.savez(out, y=np.asarray(fwd(*args)[0]), shape=np.asarray(shape))
    print(json.dumps(result))


def check(path):
    import jax.numpy as jnp
    from microrwkv_jax.ops.wkv7 import wkv7_chunked
    saved = np.load(path)
    b, t, h, n = (int(d) for d in saved["shape"])
    x = {name: jnp.asarray(value) for name, value in inputs(b, t, h, n).items()}
    y, _ = wkv7_chunked(x["r"], x["k"], x["v"], x["w"], x["a"], x["b"], jnp.zeros((b, h, n, n), jnp.float32), 16)
    ours, theirs = np.asarray(y, np.float64), saved["y"].astype(np.float64)
    print(json.dumps({"rel_l2_ours_vs_rwkv_ops": float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    timing = sub.add_parser("time")
    timing.add_argument("--shape", default="16,1024,12,64")
    timing.add_argument("--warmup", type=int, default=1)
    timing.add_argument("--repeats", type=int, default=2)
    timing.add_argument("--out", default=None)
    checking = sub.add_parser("check")
    checking.add_argument("path")
    args = parser.parse_args()
    if args.mode == "time":
        time_peer(tuple(int(d) for d in args.shape.split(",")), args.warmup, args.repeats, args.out)
    else:
        check(args.path)


if __name__ == "__main__":
    main()
