"""train.py on a user's own text (configs/text.py): the text as written, its last 10% held out,
both scores of all of it, a time budget that drives the schedule, eval_only, sample.py."""

import json
import subprocess
import sys

import pytest

from microrwkv_jax.data import stories
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def run(*args, check=True):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_text_file_trains_for_its_budget_and_is_scored_whole(tmp_path):
    texts, _ = stories.generate_stories(300, 7)
    raw = ("\ufeff" + "\r\n\r\n".join(texts) + "\r\n").encode()
    text = tmp_path / "my.txt"
    text.write_bytes(raw)
    out = tmp_path / "out"
    common = [f"--config.dataset={text}", f"--config.out_dir={out}", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    done = run("train.py", "--config=configs/text.py", *common, "--config.max_train_minutes=0.05",
               "--config.warmup_steps=2")
    held = int(len(raw) * 0.1)
    lines = done.stderr.strip().splitlines()
    assert "model: causal ['time_mix', 'channel_mix'] " in done.stderr and "2 device(s) (cpu)" in done.stderr
    assert f"{len(raw) - held:,} train tokens, {held:,} held-out tokens ({held:,} bytes)" in done.stderr
    assert "stopping at step " in done.stderr and "max_train_minutes=0.05 reached" in done.stderr
    summary = [line for line in lines if line.startswith(f"  held-out text of {held:,} bytes, every byte scored: "
                                                         "full context (state carried through the text) ")]
    assert len(summary) == 1 and "windows of 64 tokens (nanoGPT's score)" in summary[0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r.get("event") == "final_eval"][-1]
    assert final["full_tokens"] == final["window_tokens"] == final["val_bytes"] == held
    assert final["val_chars"] == held and final["full_nats_per_byte"] == final["full_nats_per_char"]   # (ASCII tail)
    assert 0 < final["full_nats_per_byte"] < final["window_nats_per_byte"] + 0.05
    steps = [r for r in records if "learning_rate" in r]
    rates = [r["learning_rate"] for r in steps]        # after warmup: down the cosine to the minimum at the end
    assert rates == sorted(rates, reverse=True) and 1e-4 <= rates[-1] < 1.2e-4 < rates[0] and len(rates) >= 2
    # The same command again: the budget is spent, so the run is complete and nothing trains.
    again = run("train.py", "--config=configs/text.py", *common, "--config.max_train_minutes=0.05",
                "--config.warmup_steps=2")
    assert f"{out}: this run is complete (its max_train_minutes=0.05 spent at step {final['step']}); raise " \
           "--config.max_train_minutes to train on" in again.stderr
    assert again.stderr.strip().splitlines()[-4:] == lines[-4:]
    # eval_only scores the same text the same way.
    evaluated = run("train.py", "--config=configs/text.py", *common, "--config.eval_only=True")
    assert f"eval: held-out text of {held:,} bytes, every byte scored: " in evaluated.stderr
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert again["full_nats_per_byte"] == pytest.approx(final["full_nats_per_byte"], rel=1e-5)
    # The next: line's prompt comes from the text, and sample.py continues it.
    prompt = lines[-1].split("--prompt ", 1)[1].strip('"')
    assert prompt == " ".join(texts[0].split()[:3])
    sampled = run("sample.py", "--out_dir", str(out), "--prompt", prompt, "--max_new_tokens", "40")
    assert sampled.stdout.startswith(prompt) and len(sampled.stdout) > len(prompt)


def test_a_text_with_no_room_for_a_training_window_is_one_line(tmp_path):
    (tmp_path / "small.txt").write_bytes(b"Too short for a window.\r\n")
    (tmp_path / "held.txt").write_bytes(b"Held out.\r\n")
    done = run("train.py", "--config=configs/text.py", f"--config.dataset={tmp_path / 'small.txt'}",
               f"--config.data.val_dataset={tmp_path / 'held.txt'}", f"--config.out_dir={tmp_path / 'out'}",
               f"--config.data.cache_dir={tmp_path / 'cache'}", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"train.py: error: dataset '{tmp_path / 'small.txt'}': 25 training tokens (11 held out), fewer than "
        "block_size + 2 = 66: lower model.block_size or use more text")
    assert not (tmp_path / "out").exists()
