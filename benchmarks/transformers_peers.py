"""`transformers`' GPT-2 and RWKV with the weights of our gpt2 / rwkv4 models, the peers that
`bench.py generate` and `bench.py eval` time in the same run. The weights go the way a user's
would: the Hugging Face model is saved as a directory and our model loaded from it.

`bench.py generate` times the peer's decoding in a process of its own, after ours, under its best
CPU settings (`torch.inference_mode()`, torch's threads = the machine's cores): inside the JAX
process its step was slower (BENCHMARKS.md, "Peer figures that reproduce").

    python -m benchmarks.transformers_peers DIR CONTEXT BLOCK WARMUP REPEATS BATCH   # one JSON line
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PEER_FAMILIES = ("gpt2", "rwkv4")


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def hf_model(config):
    """A randomly initialised `transformers` model of our config's sizes, in eval mode."""
    import torch
    import transformers
    torch.manual_seed(0)
    if config.arch == "gpt2":
        hf_config = transformers.GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size,
                                            n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head)
        return transformers.GPT2LMHeadModel(hf_config).eval()
    hf_config = transformers.RwkvConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd,
                                        num_hidden_layers=config.n_layer, context_length=config.block_size,
                                        intermediate_size=config.mlp_ratio * config.n_embd)
    return transformers.RwkvForCausalLM(hf_config).eval()


def same_weights(config):
    """(transformers model, our model with the same weights, loaded from its saved directory)."""
    from microrwkv_jax.loading import load_model
    hf = hf_model(config)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model, _ = load_model(tmp, dtype=config.dtype)
    return hf, model


def saved_same_weights(config, directory):
    """(the peer's saved directory, our model loaded from it): for timing the peer in its own process."""
    from microrwkv_jax.loading import load_model
    hf_model(config).save_pretrained(directory)
    model, _ = load_model(directory, dtype=config.dtype)
    return directory, model


def decode_in_own_process(directory, context: int, block: int, warmup: int, repeats: int, batch: int) -> dict:
    """`decode_ms_per_token` of the saved peer, in a fresh process (nothing else running)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.transformers_peers", str(directory), str(context),
                           str(block), str(warmup), str(repeats), str(batch)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"transformers' decoding failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def decode_in_this_process(directory, context: int, block: int, warmup: int, repeats: int, batch: int) -> dict:
    """`decode_ms_per_token` of the saved peer in the benchmark's own process, beside JAX, with
    torch's default threads and `no_grad`: how the figures before issue #26 were taken."""
    import torch
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    return {"ms_per_token": decode_ms_per_token(hf, context, block, warmup, repeats, batch), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def decode_ms_per_token(hf, context: int, block: int, warmup: int, repeats: int, batch: int = 1) -> float:
    """ms per step (a token for each of `batch` streams) of greedy one-token steps with `transformers`'
    cache (GPT-2: the key/value cache of `context` tokens; RWKV: its recurrent state after them),
    median of `repeats`."""
    import torch
    prompt = torch.as_tensor(np.random.default_rng(0).integers(0, hf.config.vocab_size, (batch, context)))
    rwkv = hf.config.model_type == "rwkv"
    with torch.no_grad():
        prefilled = hf(prompt, use_cache=True)
        saved = prefilled.state if rwkv else prefilled.past_key_values
        first = prefilled.logits[:, -1:].argmax(-1)

        def run():
            # RWKV updates its state in place and GPT-2 grows its cache: start each run from the prefill.
            cache = [s.clone() for s in saved] if rwkv else saved
            token = first
            started = time.perf_counter()
            for _ in range(block):
                out = hf(token, state=cache, use_cache=True) if rwkv else hf(token, past_key_values=cache, use_cache=True)
                cache = out.state if rwkv else out.past_key_values
                token = out.logits[:, -1:].argmax(-1)
            elapsed = time.perf_counter() - started
            if not rwkv:
                cache.crop(-block)          # back to the prefilled `context` tokens
            return elapsed

        for _ in range(warmup):
            run()
        return float(np.median([run() for _ in range(repeats)])) * 1e3 / block


def forward_seconds(hf, tokens: np.ndarray, warmup: int, repeats: int) -> float:
    """Median seconds of `transformers`' forward pass (logits, no cache) over tokens [B, T]."""
    import torch
    x = torch.as_tensor(tokens)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            started = time.perf_counter()
            hf(x, use_cache=False)
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return float(np.median(times))


def main(directory: str, context: str, block: str, warmup: str, repeats: str, batch: str) -> None:
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count() or 1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.inference_mode():
        ms = decode_ms_per_token(hf, int(context), int(block), int(warmup), int(repeats), int(batch))
    print(json.dumps({"ms_per_token": ms, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                      "transformers": transformers.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:])
