"""BlinkDL's `rwkv` package (RWKV-4/5/6 through `rwkv.model.RWKV`, RWKV-7 through `RWKV_x070`), the
peer `bench.py generate` times for rwkv5, rwkv6 and rwkv7 on the same random weights, written the
way a user holds them: a BlinkDL `.pth` in the official layout, which our side loads too.

The package runs in a process of its own (RWKV-7 needs RWKV_V7_ON=1 before `rwkv.model` is
imported), alone, after ours has finished, under its best CPU settings: strategy "cpu fp32"
(or "cpu bf16"), TorchScript on (RWKV_JIT_ON=1), torch's threads = the machine's cores,
`torch.inference_mode()`. It decodes one stream at a time (its RNN mode has no batch).

    python -m benchmarks.rwkv_package_peer PATH.pth GENERATION STRATEGY WARMUP STEPS   # prints one JSON line
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np


def available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "rwkv"))


def random_state_dict(table, seed: int = 0) -> dict:
    """{BlinkDL name: float32 array} for a family's name table [(name, shape, ...)], with values at
    trained scales: decays from 0.999 down to 0.004 per token, token-shift mixes in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, *_ in table:
        leaf = name.rsplit(".", 1)[-1] if not name.endswith((".weight", ".bias")) else name.rsplit(".", 2)[-2]
        if name.endswith("time_decay"):
            value = rng.uniform(-7.0, 1.7, shape)                     # exp(-exp(.)) in [0.004, 0.999]
        elif leaf == "w0":
            value = rng.uniform(-4.0, 2.0, shape)
        elif ("time_mix" in leaf or leaf.startswith("x_")
              or leaf.startswith("time_maa_") and not leaf.endswith(("w1", "w2"))):
            value = rng.uniform(0.0, 1.0, shape)
        elif leaf in ("k_k", "k_a"):
            value = rng.uniform(0.3, 1.2, shape)
        elif name.endswith(".weight") and len(shape) == 2 and "emb" not in name:
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        elif name.endswith(("ln1.weight", "ln2.weight", "ln0.weight", "ln_out.weight", "ln_x.weight")):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:                                                          # biases, bonuses, LoRAs, emb
            value = 0.3 * rng.standard_normal(shape)
        out[name] = value.astype(np.float32)
    return out


def save_pth(state_dict: dict, path, dtype: str = "float32") -> None:
    """`torch.save` of {name: array} as `dtype` tensors, BlinkDL's file layout."""
    import torch
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)).to(getattr(torch, dtype)) for k, v in state_dict.items()},
               path)


def ms_per_token(path, generation: str, strategy: str, warmup: int, steps: int, tokens: int = 16) -> dict:
    """The package's median ms per greedy decoding step (batch 1) of `tokens`-token runs, timed in a
    process of its own."""
    env = {**os.environ, "RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0", "RWKV_V7_ON": "1" if generation == "7" else "0"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.rwkv_package_peer", str(path), generation, strategy,
                           str(warmup), str(steps), str(tokens)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the rwkv package failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(path: str, generation: str, strategy: str, warmup: str, steps: str, tokens: str) -> None:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    from importlib.metadata import version

    from rwkv.model import RWKV
    model_path = path[:-4] if path.endswith(".pth") else path
    quiet = {} if generation == "7" else {"verbose": False}       # (RWKV_x070 has no verbose)
    model = RWKV(model=model_path, strategy=strategy, **quiet)
    with torch.inference_mode():
        logits, state = model.forward([0], None)

        def run() -> float:
            nonlocal logits, state
            started = time.perf_counter()
            for _ in range(int(tokens)):
                logits, state = model.forward([int(torch.argmax(logits))], state)
            return time.perf_counter() - started

        for _ in range(int(warmup)):
            run()
        seconds = float(np.median([run() for _ in range(int(steps))]))
    print(json.dumps({"ms_per_token": seconds * 1e3 / int(tokens), "rwkv_package": version("rwkv"),
                      "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "strategy": strategy,
                      "jit": os.environ.get("RWKV_JIT_ON")}))


if __name__ == "__main__":
    main(*sys.argv[1:])
