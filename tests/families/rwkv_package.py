"""BlinkDL's `rwkv` package as the reference for RWKV-4/5/6/7: a runner that executes the package in
its own process (RWKV-7 needs RWKV_V7_ON=1 set before `rwkv.model` is imported; one process per
setting) on checkpoints written in the official layout (`benchmarks.rwkv_package_peer`).

    python -m tests.families.rwkv_package RUN.json OUT.npz

RUN.json: {"v7": bool, "models": {name: path without .pth}, "tokens": [[...]], "greedy": n}.
OUT.npz: for each model, `{name}/rnn` (logits fed one token at a time, [T, V]), `{name}/seq`
(one forward over the tokens, full_output, [T, V]) and `{name}/greedy` (n greedy tokens after them).

A state-tuned RWKV-7 file: the package (0.8.32) loads its `time_state` tensors but, unlike for
RWKV-5/6, does not start from them; here they are its initial state, as RWKV-7 state-tuning
users pass a state to `forward` (`initial_state`).
"""

import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO


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


def initial_state(model, v7: bool):
    """The package's state list for a state-tuned RWKV-7 (per layer: token shift, the file's
    time_state [H, N_value, N_key], channel-mix shift), or None (the package's own start)."""
    import torch
    if not v7 or "blocks.0.att.time_state" not in model.z:
        return None
    state = []
    for i in range(model.n_layer):
        shift = torch.zeros(model.n_embd, dtype=model.z["emb.weight"].dtype)
        state += [shift, model.z[f"blocks.{i}.att.time_state"].float().clone(), shift.clone()]
    return state


def main(spec_path, out_path):
    import torch
    torch.set_num_threads(1)
    from rwkv.model import RWKV            # RWKV_x070 when RWKV_V7_ON=1
    spec = json.loads(open(spec_path).read())
    results = {}
    for name, path in spec["models"].items():
        model = RWKV(model=path, strategy="cpu fp32") if spec["v7"] else RWKV(model=path, strategy="cpu fp32", verbose=False)
        for row, tokens in enumerate(spec["tokens"]):
            state, rnn = initial_state(model, spec["v7"]), []
            for token in tokens:
                logits, state = model.forward([token], state)
                rnn.append(logits.float().numpy().copy())
            seq, _ = model.forward(list(tokens), initial_state(model, spec["v7"]), full_output=True)
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
