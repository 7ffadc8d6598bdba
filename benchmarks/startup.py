"""bench.py startup: what a user waits for before anything happens, with JAX's persistent
compilation cache empty (cold) and filled by the previous run (warm).

    python bench.py startup [--checkpoint out] [--startup_steps 3]

* sample.py: seconds from launching the command to the first generated character on stdout
  (the prompt is empty, so the first byte printed is the first token's), and the time to first
  token that sample.py itself reports (from the start of generation).
* new prompts: after one warm-up generation, the time to first token of prompts of new lengths
  (up to block_size) with new sampling options, in the same process with no compilation cache
  (nothing may compile anew), and through sample.py in fresh processes on the warm cache.
* train.py: seconds from launching the command to the end of the first training step (its
  `first_step` record in metrics.jsonl), for configs/tiny.py with a prepared data cache.

Each run is a fresh process with its own cache directory (MICRORWKV_COMPILATION_CACHE): run 1
finds it empty, run 2 finds what run 1 compiled, run 3 has the cache turned off.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from absl import flags

from benchmarks.common import emit

flags.DEFINE_integer("startup_steps", 3, "startup: training steps of each train.py run")
FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent


def first_output_seconds(args, env) -> tuple:
    """(seconds from launch to the first byte on stdout, the process's stderr, its exit status)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(1)
    first = time.perf_counter() - started
    _, err = proc.communicate()
    return first, err.decode(errors="replace"), proc.returncode


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = pathlib.Path(tmp) / "jax-cache"
        env = {**os.environ, "MICRORWKV_COMPILATION_CACHE": str(cache)}
        for label, extra in (("cold", {}), ("warm", {}), ("cache off", {"MICRORWKV_COMPILATION_CACHE": "off"})):
            seconds, err, status = first_output_seconds(
                [sys.executable, "sample.py", "--ckpt", FLAGS.checkpoint or "out", "--max_new_tokens", "100",
                 "--seed", "0"],
                {**env, **extra})
            if status != 0:
                raise SystemExit(f"bench.py startup: sample.py failed: {err.strip().splitlines()[-1]}")
            reported = re.search(r"time to first token (\d+) ms", err)
            emit({"bench": "startup", "command": "sample.py", "cache": label,
                  "seconds_to_first_token_from_launch": seconds,
                  "sample_py_reported_ttft_s": int(reported.group(1)) / 1e3 if reported else None})
        # New prompt lengths and options through sample.py, each in a fresh process on the warm cache.
        for prompt, options in NEW_PROMPTS:
            seconds, err, status = first_output_seconds(
                [sys.executable, "sample.py", "--ckpt", FLAGS.checkpoint or "out", "--max_new_tokens", "100",
                 "--prompt", prompt, *options], env)
            if status != 0:
                raise SystemExit(f"bench.py startup: sample.py failed: {err.strip().splitlines()[-1]}")
            reported = re.search(r"time to first token (\d+) ms", err)
            emit({"bench": "startup", "command": "sample.py, a new prompt", "cache": "warm",
                  "prompt_chars": len(prompt), "options": " ".join(options),
                  "sample_py_reported_ttft_s": int(reported.group(1)) / 1e3 if reported else None})
        new_prompts_in_process(FLAGS.checkpoint or "out")
        data_cache = pathlib.Path(tmp) / "data_cache"
        for label, extra in (("cold", {}), ("warm", {}), ("cache off", {"MICRORWKV_COMPILATION_CACHE": "off"})):
            out = pathlib.Path(tmp) / f"run-{label.replace(' ', '-')}"
            done = subprocess.run([sys.executable, "train.py", "--config=configs/tiny.py", f"--config.out_dir={out}",
                                   f"--config.data.cache_dir={data_cache}",
                                   f"--config.num_train_steps={FLAGS.startup_steps}", "--config.eval_every=1000",
                                   "--config.checkpoint_every=1000"],
                                  cwd=REPO, env={**env, **extra}, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"bench.py startup: train.py failed: {done.stderr.strip().splitlines()[-1]}")
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            first = next(r for r in records if r.get("event") == "first_step")
            # The first run also generates and tokenises the story corpus (later runs reuse it).
            emit({"bench": "startup", "command": "train.py configs/tiny.py", "cache": label,
                  "data_cache": "made by this run" if label == "cold" else "reused",
                  "seconds_to_first_step_from_launch": first["seconds_from_start"]})


# Prompts of new lengths (up to the tiny config's block_size, 384 bytes) with new options.
NEW_PROMPTS = [("One day", ["--temperature", "0.7"]),
               ("Once upon a time, there was a little girl named Lily. She", ["--top_k", "20"]),
               ("Once upon a time, there was a small bunny named Tom. " * 6, ["--top_p", "0.9", "--temperature", "1.1"])]


def new_prompts_in_process(checkpoint) -> None:
    """Time to first token of prompts of new lengths and new options, in this process, with no
    persistent compilation cache, after one warm-up generation: whatever compiles anew shows."""
    import numpy as np

    from microrwkv_jax.loading import load_model_and_tokenizer
    from microrwkv_jax.sampling import generate

    model, config, tokenizer = load_model_and_tokenizer(str(REPO / checkpoint) if not os.path.isabs(checkpoint)
                                                        else checkpoint)

    def first_token_seconds(text, **options):
        prompt = np.asarray([tokenizer.encode(text) if text else [tokenizer.eot_id]], np.int32)
        started, first = time.perf_counter(), []
        generate(model, prompt, 20, on_tokens=lambda t: first or first.append(time.perf_counter()), **options)
        return first[0] - started, prompt.shape[1]

    warm_up, _ = first_token_seconds("", temperature=0.8)
    emit({"bench": "startup", "command": "generate() in one process, warm-up", "cache": "none",
          "seconds_to_first_token": warm_up})
    for text, options in [("One day", dict(temperature=0.7)),
                          ("Once upon a time, there was a girl", dict(temperature=1.0, top_k=20)),
                          ("Tom saw a frog at the pond. " * 8, dict(temperature=1.1, top_p=0.9)),
                          ("a" * (config.block_size - 1), dict(temperature=0.0))]:
        seconds, tokens = first_token_seconds(text, **options)
        emit({"bench": "startup", "command": "generate() in one process, a new prompt", "cache": "none",
              "prompt_tokens": tokens, "options": options, "seconds_to_first_token": seconds})
