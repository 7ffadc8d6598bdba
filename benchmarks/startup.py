"""bench.py startup: what a user waits for before anything happens, with JAX's persistent
compilation cache empty (cold) and filled by the previous run (warm).

    python bench.py startup [--checkpoint out] [--startup_steps 3]

* sample.py: seconds from launching the command to the first generated character on stdout
  (the prompt is empty, so the first byte printed is the first token's), and the time to first
  token that sample.py itself reports (from the start of generation).
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
