#!/usr/bin/env python
"""Benchmarks, measured the same way every time (the code is in benchmarks/, one module each).

    python bench.py train --config configs/tinystories.py [--config.model.family=rwkv] [--steps 10]
    python bench.py train --config configs/tiny.py --compile_only --topology v5e:2x2 --config.mesh.fsdp=4
    python bench.py generate [--size table|small] [--contexts 16,64,...] [--families gpt2,rwkv4] [--out bench_out]
    python bench.py eval [--size table|small] [--families gpt2,rwkv4] [--eval_shape 1,1024]
    python bench.py wkv [--shape 16,1024,8,64] [--chunks 16,32,64,128] [--decays per_head|per_token|rwkv7]
    python bench.py attention [--attention_shape 16,384,4,1,32] [--windows 64,global]
    python bench.py vs-torch [--size small|table]
    python bench.py load [--load_preset rwkv4-1b5 | --checkpoint PATH]
    python bench.py profile-decode [--size table] [--families rwkv,gpt] [--contexts 1024]
    python bench.py profile-train --config configs/tiny.py [--steps 10]   # where a training step's time goes
    python bench.py startup [--checkpoint out]      # time to first token / first step, cold and warm
    python bench.py prepare [--prepare_mb 2048] [--prepare_workers 1,2]   # data preparation vs a plain loop
    python bench.py text --text novel.txt [--nanogpt DIR]   # a user's text: nanoGPT's CPU recipe vs configs/text.py
    python bench.py tokenize --text novel.txt [--tokenize_mb 10]   # the World tokenizer vs BlinkDL's

Every figure is printed with the device, JAX version, dtype and shapes; with --json each
measurement is one JSON object per line. For gpt2 and rwkv4, generate and eval time `transformers`'
GPT-2 and RWKV with the same weights in the same run (when it is installed); for rwkv5/6/7, generate
times BlinkDL's `rwkv` package on the same .pth in a process of its own. benchmarks/gpu.sh
runs the GPU half in one go.
"""

import os
import sys

from absl import app, logging

from benchmarks import (attention, evaluate, generate, load, prepare, profile_decode, profile_train, startup, text,
                        tokenize, train, vs_torch, wkv)
from benchmarks.common import FLAGS     # (defines the flags)

COMMANDS = {"train": train.run, "generate": generate.run, "eval": evaluate.run, "wkv": wkv.run,
            "attention": attention.run, "vs-torch": vs_torch.run, "load": load.run,
            "profile-decode": profile_decode.run, "startup": startup.run, "prepare": prepare.run,
            "text": text.run, "profile-train": profile_train.run, "tokenize": tokenize.run}


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if FLAGS.topology:      # compiling for a TPU elsewhere: this machine's own devices are its CPUs
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if FLAGS.param_dtype != "float32":
        from microrwkv_jax.loading import use_lean_cpu_scheduler
        use_lean_cpu_scheduler()         # before JAX starts: convert each weight only when used
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: bench.py {{{'|'.join(COMMANDS)}}} [flags]")
    COMMANDS[argv[1]]()


if __name__ == "__main__":
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:     # (absl's --help exits 1)
        print(__doc__.strip() + "\n\nflags:\n" + "\n".join(
            FLAGS.module_help(module).strip() for module in sorted(FLAGS.flags_by_module_dict())
            if module.startswith("benchmarks")))
        sys.exit(0)
    app.run(main)
