"""bench.py load: peak host memory and time of loading a pretrained checkpoint and scoring a short
text, in a fresh process per measurement (the peak resident set above the one after start-up).

    python bench.py load --load_preset rwkv4-1b5 --out bench_out     # generates the checkpoint once
    python bench.py load --checkpoint RWKV-4-Pile-1B5-....pth        # a checkpoint on disk

The checkpoint is BlinkDL's RWKV-4 `.pth` layout in bf16 (random weights of the preset's sizes,
written by torch). Each process measures one way of loading it:

    ours-float32    `load_model(path)`: tensor by tensor into float32 parameters
    ours-bfloat16   `load_model(path, param_dtype="bfloat16")`: the checkpoint's own precision
    whole-file      the loader before it streamed: the whole file read, converted to a float32 copy,
                    then the model built from that copy
    torch.load      PyTorch reading the file (the peer: the state dict alone, no model)
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
from absl import flags

from benchmarks.common import FLAGS, emit

flags.DEFINE_string("checkpoint", None, "load: a checkpoint to measure (default: generate --load_preset's); "
                    "startup: the checkpoint sample.py samples from (default: out)")
flags.DEFINE_string("load_preset", "rwkv4-1b5", "load: the RWKV-4 preset whose sizes the generated checkpoint has")
flags.DEFINE_string("load_ways", "ours-bfloat16,ours-float32,whole-file,torch.load", "load: what to measure")

# Runs in a fresh interpreter: argv = checkpoint, way. Prints one JSON object. Memory is the
# resident set (VmRSS) and its high-water mark (VmHWM), which is reset after start-up (clear_refs)
# so that what the imports and the runtime's start touched does not hide what loading adds.
CHILD = r"""
import json, sys, time
def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
def start_measuring():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss("VmRSS")
path, way = sys.argv[1], sys.argv[2]
if way == "torch.load":
    import torch
    base = start_measuring(); t0 = time.perf_counter()
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    print(json.dumps({"load_peak_bytes": rss("VmHWM") - base, "load_s": time.perf_counter() - t0}))
    sys.exit()
from microrwkv_jax.loading import load_model, use_lean_cpu_scheduler
if way == "ours-bfloat16":
    use_lean_cpu_scheduler()         # what sample.py and train.py do for lower-precision parameters
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.families import abstract_model, torch_checkpoint_family
from microrwkv_jax.torch_checkpoint import open_torch_checkpoint, read_tensors
jnp.zeros(1).block_until_ready()     # the backend started: its own memory is part of the baseline
base = start_measuring(); t0 = time.perf_counter()
if way == "whole-file":          # the loader before it streamed: the file, a float32 copy, then the model
    ckpt = read_tensors(open_torch_checkpoint(path))
    config, readers = torch_checkpoint_family(ckpt).torch_checkpoint.read(ckpt)
    flat = {name: reader().astype(np.float32) for name, reader in readers.items()}
    model = ParamCodec(abstract_model(config)).model({name: jnp.asarray(value) for name, value in flat.items()})
else:
    model, config = load_model(path, param_dtype=way.split("-")[1])
jax.block_until_ready(nnx.state(model))
load_peak, load_s = rss("VmHWM") - base, time.perf_counter() - t0
tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (1, 16)), jnp.int32)
t0 = time.perf_counter()
logits = jax.jit(lambda m, x: m(x))(model, tokens)
finite = bool(jnp.all(jnp.isfinite(logits)))
print(json.dumps({"param_bytes": sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
                  "load_peak_bytes": load_peak, "load_s": load_s, "eval_peak_bytes": rss("VmHWM") - base,
                  "eval_s": time.perf_counter() - t0, "logits_finite": finite}))
"""


def write_blinkdl_checkpoint(path: pathlib.Path, preset: str, **overrides) -> None:
    """A BlinkDL-layout RWKV-4 `.pth` of an RWKV-4 preset's sizes (with `overrides`), bf16, random weights."""
    import torch

    from microrwkv_jax.families import model_config
    from microrwkv_jax.families.rwkv4.checkpoint_names import parameter_map
    config = model_config(preset, **overrides)
    rng = np.random.default_rng(0)
    state_dict = {}
    for _, blink_name, shape, _, _ in parameter_map(config):
        scale = 1.0 if "time_" in blink_name or ".ln" in blink_name else 0.02
        value = rng.standard_normal(shape, np.float32) * scale
        state_dict[blink_name] = torch.from_numpy(value).to(torch.bfloat16)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state_dict, tmp)
    tmp.rename(path)


def run() -> None:
    if FLAGS.checkpoint:
        path = pathlib.Path(FLAGS.checkpoint)
    else:
        path = pathlib.Path(FLAGS.out) / f"random-{FLAGS.load_preset}-bf16.pth"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            print(f"writing {path} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-c", f"from benchmarks.load import write_blinkdl_checkpoint as w; "
                            f"import pathlib; w(pathlib.Path({str(path)!r}), {FLAGS.load_preset!r})"], check=True)
    file_bytes = path.stat().st_size
    for way in FLAGS.load_ways.split(","):
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), way], capture_output=True, text=True)
        if done.returncode:
            emit({"bench": "load", "checkpoint": path.name, "way": way, "error": done.stderr.strip().splitlines()[-1:]})
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        emit({"bench": "load", "checkpoint": path.name, "file_bytes": file_bytes, "way": way, **result})
