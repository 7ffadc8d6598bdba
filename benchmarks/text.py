"""bench.py text: a user's own text on this CPU, nanoGPT's CPU recipe against our text config,
in one run, each side timed alone, in its own process, from its command.

    python bench.py text --text novel.txt [--nanogpt NANOGPT_DIR] [--out bench_out/text]

(--nanogpt defaults to $MICRORWKV_NANOGPT_DIR: nanoGPT's model.py, train.py, configurator.py and
config/, unmodified; its prepare.py downloads, so the data is written here instead.)

  1. The text is read as written (UTF-8; CRLF, BOM and all kept) and split by characters as
     nanoGPT's char-level prepare.py splits it: the first 90% to train, the last 10% held out.
     nanoGPT's data is written the way that script writes it (sorted characters, uint16 ids,
     train.bin / val.bin / meta.pkl); ours is the same two texts as files
     (`--config.dataset=train.txt --config.data.val_dataset=val.txt`).
  2. nanoGPT's own train.py (from --nanogpt, MIT, unmodified) runs its README's CPU recipe
     (NANOGPT_FLAGS, --max_iters/--lr_decay_iters from --nanogpt_iters). Its wall time from the
     command is W.
  3. Ours runs `train.py --config configs/text.py` twice, with empty data and compilation caches:
     with a budget that ends it at about W (the first target: a lower loss at nanoGPT's own wall
     time) and at about 0.45 W (the second: nanoGPT's final loss in at most half its time, with
     room for our start-up's variation). The budget is
     the target wall time less our time outside training (start-up, compiling, the final
     scores): assumed OVERHEAD_SECONDS for the first run, then what the first run took.
  4. Both models are scored by one scorer (`microrwkv_jax.training.scoring`) on the same held-out
     characters: the window score (nanoGPT's: windows of block_size, every position counted) and
     the full-context score, in nats per character. nanoGPT's first held-out character is read
     after the last training character (it has no end-of-text); ours after end-of-text.

  5. With --throughput_steps N, our trainer at nanoGPT's shapes (4 x 128, block 64, batch 12) runs
     N steps for each of --throughput_families (FAMILY:CPU_DEVICES; by default gpt on one CPU
     device, then on one per core, `cpu_devices=2`, rwkv and the hybrid):
     tokens/s from the trainer's own log, against nanoGPT's from its log (median step times).

Every figure is one JSON line (--json) with the wall time from the command, the time to the
first step, tokens/s of the training steps, and the scores.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import FLAGS, emit
from microrwkv_jax.training import scoring

REPO = pathlib.Path(__file__).resolve().parent.parent
# nanoGPT's README CPU recipe ("~3 minutes", val loss 1.88), on top of its shakespeare_char config.
NANOGPT_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--block_size=64", "--batch_size=12",
                 "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
# Ours, outside the training budget (start-up, compiling, the last step past the budget, saving,
# the final scores): assumed for the first run, then as that run measured it.
OVERHEAD_SECONDS = 12.0


def split_text(path: pathlib.Path, out: pathlib.Path) -> dict:
    """The text's first 90% / last 10% of characters: train.txt and val.txt (as written) and
    nanoGPT's data directory (sorted characters, uint16 ids)."""
    text = path.read_bytes().decode("utf-8")
    n = len(text)
    train, val = text[:int(n * 0.9)], text[int(n * 0.9):]
    (out / "train.txt").write_bytes(train.encode("utf-8"))
    (out / "val.txt").write_bytes(val.encode("utf-8"))
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = out / "nanogpt" / "data" / "text"
    data.mkdir(parents=True, exist_ok=True)
    np.asarray([stoi[c] for c in train], np.uint16).tofile(data / "train.bin")
    np.asarray([stoi[c] for c in val], np.uint16).tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return {"chars": n, "train_chars": len(train), "val_chars": len(val), "val_bytes": len(val.encode("utf-8")),
            "vocab": len(chars)}


def timed_command(argv: list, cwd, env=None, first_step=None) -> dict:
    """Run a command alone; its wall time, and the time until a line matching `first_step`."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, first = [], None
    for line in process.stdout:
        lines.append(line)
        if first is None and first_step is not None and re.search(first_step, line):
            first = time.perf_counter() - started
    process.wait()
    wall = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"bench.py text: {argv[1]} failed ({process.returncode}):\n{''.join(lines[-20:])}")
    return {"wall_s": wall, "first_step_s": first, "output": "".join(lines)}


def run_nanogpt(out: pathlib.Path, iters: int) -> dict:
    work = out / "nanogpt"
    source = pathlib.Path(FLAGS.nanogpt)
    for name in ("model.py", "train.py", "configurator.py"):
        shutil.copy(source / name, work / name)
    shutil.copytree(source / "config", work / "config", dirs_exist_ok=True)
    argv = [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_FLAGS, f"--max_iters={iters}",
            f"--lr_decay_iters={iters}", "--dataset=text", "--out_dir=out"]
    if iters % 250:      # (a short smoke run: it saves its checkpoint at an evaluation, every 250 iterations)
        argv.append(f"--eval_interval={iters}")
    ran = timed_command(argv, work, first_step=r"^iter 0:")
    step_ms = [float(ms) for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", ran["output"], re.M)]
    tokens_per_step = 12 * 64
    median_ms = float(np.median(step_ms[1:])) if len(step_ms) > 1 else float("nan")
    val = re.findall(r"val loss ([\d.]+)", ran["output"])
    return {"side": "nanogpt", "command": " ".join(argv[1:]), "wall_s": ran["wall_s"],
            "first_step_s": ran["first_step_s"], "steps": iters, "step_ms": median_ms,
            "tokens_per_s": tokens_per_step / median_ms * 1e3, "own_val_loss": float(val[-1]) if val else None,
            "checkpoint": str(work / "out" / "ckpt.pt")}


def score_nanogpt(checkpoint: str, out: pathlib.Path) -> dict:
    """nanoGPT's checkpoint scored by our scorer on the held-out characters (torch, its own model.py)."""
    import torch
    sys.path.insert(0, str(out / "nanogpt"))
    from model import GPT, GPTConfig     # nanoGPT's model.py
    torch.set_num_threads(2)
    ckpt = torch.load(checkpoint, map_location="cpu")
    with contextlib.redirect_stdout(sys.stderr):        # (it prints its parameter count)
        model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["state_dict" if "state_dict" in ckpt
                                                                            else "model"].items()})
    model.eval()
    data = out / "nanogpt" / "data" / "text"
    train, val = (np.fromfile(data / f"{part}.bin", np.uint16).astype(np.int32) for part in ("train", "val"))
    stream = np.concatenate([train[-1:], val])        # the first held-out character read after the last trained one
    block = ckpt["model_args"]["block_size"]
    record = {}
    for name, stride in (("window", block), ("full", block // 2)):
        nats, count = 0.0, 0
        with torch.inference_mode():
            for inputs, targets in scoring.Windows(stream, block, stride).batches(64):
                _, loss = model(torch.as_tensor(inputs, dtype=torch.long), torch.as_tensor(targets, dtype=torch.long))
                scored = int((targets >= 0).sum())
                nats += float(loss) * scored
                count += scored
        record[f"{name}_nats_per_char"] = nats / count
        record[f"{name}_chars"] = count
    return record


def run_ours(out: pathlib.Path, name: str, minutes: float) -> dict:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "MICRORWKV_COMPILATION_CACHE": str(run_dir / "jax_cache")}     # empty: a fresh machine
    argv = [sys.executable, "train.py", f"--config={FLAGS.text_config}", f"--config.dataset={out / 'train.txt'}",
            f"--config.data.val_dataset={out / 'val.txt'}", f"--config.out_dir={run_dir}",
            f"--config.data.cache_dir={run_dir / 'data_cache'}", f"--config.max_train_minutes={minutes:.4f}"]
    ran = timed_command(argv, REPO, env=env)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r.get("event") == "final_eval"][-1]
    first = [r for r in records if r.get("event") == "first_step"][0]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    run = [r for r in records if r.get("event") == "run"][0]
    done = [r for r in records if "train_seconds" in r][-1]
    return {"side": f"ours ({name})", "command": " ".join(argv[1:]), "wall_s": ran["wall_s"],
            "first_step_s": first["seconds_from_start"], "steps": done["steps"],
            "train_s": done["train_seconds"], "budget_minutes": minutes,
            "tokens_per_s": float(np.median(rates)) if rates else None, "model": run["model"],
            "block_size": run["block_size"], "batch_size": run["batch_size"],
            "window_nats_per_char": final["window_nats_per_char"], "full_nats_per_char": final["full_nats_per_char"],
            "full_context": final["full_context"], "scored_tokens": final["window_tokens"],
            "window_chars": final["val_chars"], "full_chars": final["val_chars"]}


def run_throughput(out: pathlib.Path, family: str, cpu_devices: int, steps: int) -> dict:
    """Tokens/s of our trainer (its loop, as train.py runs it) at nanoGPT's shapes: `family` at
    4 x 128, block 64, batch 12, on the same text, alone, in its own process."""
    run_dir = out / f"throughput_{family}_{cpu_devices}"
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [sys.executable, "train.py", f"--config={FLAGS.text_config}", f"--config.dataset={out / 'train.txt'}",
            f"--config.data.val_dataset={out / 'val.txt'}", f"--config.out_dir={run_dir}",
            f"--config.data.cache_dir={out / 'throughput_data_cache'}", f"--config.model.family={family}",
            "--config.model.n_layer=4", "--config.model.n_embd=128", "--config.model.n_head=4",
            "--config.model.n_kv_head=4", "--config.model.block_size=64", "--config.batch_size=12",
            f"--config.cpu_devices={cpu_devices}", f"--config.num_train_steps={steps}", "--config.max_train_minutes=60",
            f"--config.eval_every={steps}", f"--config.checkpoint_every={steps}"]
    timed_command(argv, REPO)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]      # (the first holds compiling)
    return {"side": f"ours {family} at nanoGPT's shapes", "family": family, "cpu_devices": cpu_devices,
            "steps": steps, "tokens_per_s": float(np.median(rates)), "command": " ".join(argv[1:])}


def run() -> None:
    out = pathlib.Path(FLAGS.out) / "text" if FLAGS.out == "bench_out" else pathlib.Path(FLAGS.out)
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    if not FLAGS.text or not pathlib.Path(FLAGS.text).is_file():
        raise SystemExit(f"bench.py text: --text={FLAGS.text}: no such file (the text of the race)")
    if not FLAGS.nanogpt or not (pathlib.Path(FLAGS.nanogpt) / "train.py").is_file():
        raise SystemExit(f"bench.py text: --nanogpt={FLAGS.nanogpt}: no nanoGPT train.py there (give the directory "
                         "with its model.py, train.py, configurator.py and config/, or set MICRORWKV_NANOGPT_DIR)")
    text = pathlib.Path(FLAGS.text)
    split = split_text(text, out)
    emit({"bench": "text", "side": "data", "text": str(text), **split})
    peer = run_nanogpt(out, FLAGS.nanogpt_iters)
    peer.update(score_nanogpt(peer.pop("checkpoint"), out))
    emit({"bench": "text", **peer})
    wall, overhead = peer["wall_s"], OVERHEAD_SECONDS
    if FLAGS.throughput_steps:        # our step against nanoGPT's at its shapes, each alone
        for family, devices in (item.split(":") for item in FLAGS.throughput_families.split(",")):
            ours = run_throughput(out, family, int(devices), FLAGS.throughput_steps)
            emit({"bench": "text", **ours, "nanogpt_tokens_per_s": peer["tokens_per_s"],
                  "vs_nanogpt": ours["tokens_per_s"] / peer["tokens_per_s"]})
    # The second run aims at 45% of W: our time outside training varies by a second or two.
    for name, fraction in (("equal_time", 1.0), ("within_half_time", 0.45)):
        minutes = FLAGS.our_minutes if FLAGS.our_minutes else max(wall * fraction - overhead, 5.0) / 60
        ours = run_ours(out, name, minutes)
        overhead = ours["wall_s"] - 60 * minutes       # what the next run's budget leaves room for, as measured
        emit({"bench": "text", **ours, "nanogpt_wall_s": wall,
              "full_vs_nanogpt": ours["full_nats_per_char"] / peer["full_nats_per_char"] - 1,
              "window_vs_nanogpt": ours["window_nats_per_char"] / peer["window_nats_per_char"] - 1,
              "reaches_nanogpt_full": ours["full_nats_per_char"] <= peer["full_nats_per_char"],
              "reaches_nanogpt_window": ours["window_nats_per_char"] <= peer["window_nats_per_char"]})
        if FLAGS.our_minutes:
            break
