"""BlinkDL's `rwkv` package as the reference for RWKV-4/5/6/7: random checkpoints in the official
layout, and a runner that executes the package in its own process (RWKV-7 needs RWKV_V7_ON=1
set before `rwkv.model` is imported; one process per setting).

    python -m tests.families.rwkv_package RUN.json OUT.npz

RUN.json: {"v7": bool, "models": {name: path without .pth}, "tokens": [[...]], "greedy": n}.
OUT.npz: for each model, `{name}/rnn` (logits fed one token at a time, [T, V]), `{name}/seq`
(one forward over the tokens, full_output, [T, V]) and `{name}/greedy` (n greedy tokens after them).
"""

import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO


def random_state_dict(table, generation: str, seed: int):
    """{BlinkDL name: float32 numpy array} with values at trained scales, for a family's name table
    [(name, shape, ...)]: decays from 0.999 down to 0.004 per token, mixes in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, *_ in table:
        last = name.split(".")[-1] if not name.endswith((".weight", ".bias")) else ".".join(name.split(".")[-2:])
        if name.endswith("time_decay"):
            value = rng.uniform(-7.0, 1.7, shape)                     # exp(-exp(.)) in [0.004, 0.999]
        elif last in ("w0",):
            value = rng.uniform(-4.0, 2.0, shape)
        elif "time_mix" in name or "time_maa_" in name and not name.endswith(("w1", "w2")) or last.startswith("x_"):
            value = rng.uniform(0.0, 1.0, shape)
        elif last in ("k_k", "k_a"):
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
    import torch
    torch.save({k: torch.tensor(v).to(getattr(torch, dtype)) for k, v in state_dict.items()}, path)


def run_package(models: dict, tokens, greedy: int, v7: bool, workdir) -> dict:
    """The package's logits for each {name: .pth path}, in a process of its own."""
    spec = workdir / f"run_{'v7' if v7 else 'v456'}.json"
    out = workdir / f"out_{'v7' if v7 else 'v456'}.npz"
    spec.write_text(json.dumps({"v7": v7, "models": {k: str(v)[:-4] for k, v in models.items()},
                                "tokens": np.asarray(tokens).tolist(), "greedy": greedy}))
    env = {**os.environ, "RWKV_JIT_ON": "0", "RWKV_CUDA_ON": "0", "RWKV_V7_ON": "1" if v7 else "0"}
    proc = subprocess.run([sys.executable, "-m", "tests.families.rwkv_package", str(spec), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def main(spec_path, out_path):
    import torch
    torch.set_num_threads(1)
    from rwkv.model import RWKV            # RWKV_x070 when RWKV_V7_ON=1
    spec = json.loads(open(spec_path).read())
    results = {}
    for name, path in spec["models"].items():
        model = RWKV(model=path, strategy="cpu fp32") if spec["v7"] else RWKV(model=path, strategy="cpu fp32", verbose=False)
        for row, tokens in enumerate(spec["tokens"]):
            state, rnn = None, []
            for token in tokens:
                logits, state = model.forward([token], state)
                rnn.append(logits.float().numpy().copy())
            seq, _ = model.forward(list(tokens), None, full_output=True)
            generated = []
            for _ in range(spec["greedy"]):
                token = int(np.argmax(logits.float().numpy()))
                generated.append(token)
                logits, state = model.forward([token], state)
            results[f"{name}/{row}/rnn"] = np.stack(rnn)
            results[f"{name}/{row}/seq"] = seq.float().numpy()
            results[f"{name}/{row}/greedy"] = np.asarray(generated)
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
