"""bench.py runs each subcommand and prints the documented JSON fields (no timing is asserted)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow      # every test here runs bench.py in a subprocess


def bench(*args):
    done = subprocess.run([sys.executable, str(REPO / "bench.py"), *args, "--json"], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_wkv_and_train_subcommands():
    rows = bench("wkv", "--shape", "1,16,1,4", "--chunks", "8", "--repeats", "1", "--warmup", "0")
    assert {(r["form"], r["mode"]) for r in rows} >= {("chunked_q8", "forward+backward"), ("scan", "forward"),
                                                     ("step", "forward (one token)")}
    assert all(r["ms"] > 0 and r["device"] and r["jax"] for r in rows)
    rows = bench("attention", "--attention_shape", "1,32,2,1,8", "--windows", "8,global", "--repeats", "1",
                 "--warmup", "0")
    assert [(r["impl"], r["window"]) for r in rows] == [("xla_masked", 8), ("causal_attention", 8),
                                                       ("xla_masked", None), ("causal_attention", None)]
    (row,) = bench("train", "--config", str(REPO / "configs/rwkv.py"), "--config.model.n_layer=1",
                   "--config.model.n_embd=32", "--config.model.block_size=32", "--config.batch_size=2",
                   "--steps", "1", "--warmup", "0")
    assert row["tokens_per_s"] > 0 and "mfu" in row and row["batch"] == 2 and row["block"] == 32
    (row,) = bench("train", "--config", str(REPO / "configs/tiny.py"), "--config.model.n_layer=1",
                   "--config.model.n_embd=32", "--config.model.block_size=32", "--config.batch_size=2",
                   "--dtype", "bfloat16", "--compile_only")
    assert row["dtype"] == "bfloat16" and row["compiled_temp_mb"] > 0 and "step_ms" not in row


def test_generate_writes_json_and_png(tmp_path):
    rows = bench("generate", "--size", "tiny", "--contexts", "16,200", "--families", "rwkv,published",
                 "--steps", "1", "--warmup", "0", "--out", str(tmp_path))
    assert [(r["family"], r["context"]) for r in rows] == [("rwkv", 16), ("rwkv", 200), ("published", 16),
                                                           ("published", 200)]
    assert all(r["ms_per_token"] > 0 for r in rows)
    assert (tmp_path / "generate.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "generate.json").read_text())) == 4


def test_vs_torch_reports_speedup():
    pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")
    rows = bench("vs-torch", "--size", "tiny", "--repeats", "1", "--warmup", "0")
    assert [r["what"] for r in rows] == ["forward", "train_step", "head_gemms"]
    assert rows[1]["model_gflop"] > 0 and rows[2]["jax_gflop_per_s"] > 0
    assert all(r["speedup"] > 0 for r in rows)


def test_load_reports_peak_memory_of_every_way(tmp_path):
    pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")
    from benchmarks.load import write_blinkdl_checkpoint
    path = tmp_path / "rwkv4-tiny.pth"
    write_blinkdl_checkpoint(path, "rwkv4", n_layer=1, n_embd=64, vocab_size=97)
    rows = bench("load", "--checkpoint", str(path))
    assert [r["way"] for r in rows] == ["ours-bfloat16", "ours-float32", "whole-file", "torch.load"]
    assert all(r["file_bytes"] == path.stat().st_size and r["load_peak_bytes"] > 0 for r in rows)
    assert [r["param_bytes"] for r in rows[:3]] == [rows[1]["param_bytes"] // 2, rows[1]["param_bytes"],
                                                     rows[1]["param_bytes"]]
    assert all(r["logits_finite"] for r in rows[:3])


def test_generate_and_eval_time_transformers_beside_gpt2_and_rwkv4(tmp_path):
    pytest.importorskip("transformers", reason="transformers is the test extra: pip install -e '.[test]'")
    rows = bench("generate", "--size", "tiny", "--contexts", "16,200", "--families", "gpt2,rwkv4", "--steps", "1",
                 "--warmup", "0", "--out", str(tmp_path))
    # GPT-2 stops at its learned positions (block_size 128 at this size): no row for context 200.
    assert [(r["family"], r["context"]) for r in rows] == [("gpt2", 16), ("rwkv4", 16), ("rwkv4", 200)]
    assert all(r["transformers_ms_per_token"] > 0 and r["speedup_vs_transformers"] > 0 for r in rows)
    rows = bench("eval", "--size", "tiny", "--families", "gpt2,rwkv4", "--eval_shape", "2,64", "--repeats", "1",
                 "--warmup", "0")
    assert [(r["family"], r["batch"], r["seq_len"]) for r in rows] == [("gpt2", 2, 64), ("rwkv4", 2, 64)]
    assert all(r["tokens_per_s"] > 0 and r["transformers_tokens_per_s"] > 0 for r in rows)
