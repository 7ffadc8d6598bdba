"""bench.py runs each subcommand and prints the documented JSON fields (no timing is asserted)."""

import json
import pathlib
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
    rows = bench("wkv", "--shape", "1,16,1,4", "--chunks", "8", "--repeats", "1", "--warmup", "0", "--decays",
                 "per_token")
    assert {(r["decays"], r["form"], r["mode"]) for r in rows} >= {("per_token", "chunked_q8", "forward+backward"),
                                                                 ("per_token", "scan", "forward+backward"),
                                                                 ("per_head", "x051a_chunked_q32", "forward+backward")}
    rows = bench("wkv", "--shape", "1,16,1,4", "--chunks", "8", "--repeats", "1", "--warmup", "0", "--decays",
                 "rwkv7", "--x051a_chunk", "8")
    assert [(r["decays"], r["form"], r["mode"]) for r in rows] == [
        ("rwkv7", "chunked_q8", "forward"), ("rwkv7", "chunked_q8", "forward+backward"), ("rwkv7", "scan", "forward"),
        ("rwkv7", "scan", "forward+backward"), ("per_head", "x051a_chunked_q8", "forward"),
        ("per_head", "x051a_chunked_q8", "forward+backward"), ("rwkv7", "step", "forward (one token)")]
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
    assert row["dtype"] == "bfloat16" and row["temp_gib"] > 0 and "step_ms" not in row
    assert row["target"] == "cpu" and row["device_memory_gib"] is None and row["flops_per_device"] > 0


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
                 "--warmup", "0", "--batches", "1,3", "--batch_context", "16", "--out", str(tmp_path))
    assert [(r["family"], r["context"], r["batch"]) for r in rows] == [
        ("gpt2", 16, 1), ("gpt2", 16, 3), ("gpt2", 200, 1), ("rwkv4", 16, 1), ("rwkv4", 16, 3), ("rwkv4", 200, 1)]
    assert all(r["transformers_ms_per_token"] > 0 and r["speedup_vs_transformers"] > 0 for r in rows)
    single = [r for r in rows if r["batch"] == 1]
    assert all(r["floor_ms_per_token"] > 0 and r["floor_ratio"] == r["ms_per_token"] / r["floor_ms_per_token"]
               for r in single)
    # The floor counts the filled part of GPT-2's cache: more at context 200 than at 16.
    assert single[1]["floor_ms_per_token"] * single[1]["matvec_gb_per_s"] > \
        single[0]["floor_ms_per_token"] * single[0]["matvec_gb_per_s"]
    batched = [r for r in rows if r["batch"] == 3]
    assert all(r["state_bytes_per_stream"] == r["state_bytes"] // 3 and r["tokens_per_s"] > 0 for r in batched)
    rows = bench("eval", "--size", "tiny", "--families", "gpt2,rwkv4", "--eval_shape", "2,64", "--repeats", "1",
                 "--warmup", "0")
    assert [(r["family"], r["batch"], r["seq_len"]) for r in rows] == [("gpt2", 2, 64), ("rwkv4", 2, 64)]
    assert all(r["tokens_per_s"] > 0 and r["transformers_tokens_per_s"] > 0 for r in rows)


def test_the_decoding_floor_counts_weights_an_input_row_and_the_filled_cache():
    """bytes_read_per_token, by hand: RWKV-4 reads every parameter but one row of its untied input
    embedding, and its state; GPT-2 reads its tied head whole, one row of its position table, and
    of its key/value caches only the filled slots."""
    import jax
    from flax import nnx

    from benchmarks.generate import bytes_read_per_token
    from microrwkv_jax.families import build_model, model_config
    nbytes = lambda tree: sum(leaf.nbytes for leaf in jax.tree.leaves(tree))
    rwkv4 = build_model(model_config("rwkv4", n_layer=1, n_embd=32, vocab_size=97))
    state = rwkv4.init_state(1)
    embedding_rows = 128                                     # 97 padded to a multiple of 64
    assert bytes_read_per_token(rwkv4, state, 10) == nbytes(nnx.state(rwkv4)) - (embedding_rows - 1) * 32 * 4 \
        + nbytes(state)
    gpt2 = build_model(model_config("gpt2", n_layer=1, n_embd=32, n_head=2, n_kv_head=2, vocab_size=97, block_size=64))
    state = gpt2.init_state(1, 64)                          # k and v [1, 2 heads, 64 slots, 16]
    cache = 2 * 2 * 64 * 16 * 4
    for context in (10, 63):                                # context + 1 slots filled
        assert bytes_read_per_token(gpt2, state, context) == nbytes(nnx.state(gpt2)) - (64 - 1) * 32 * 4 \
            + cache * (context + 1) // 64 + 4               # + the int32 position


def test_prepare_against_the_plain_loop(gpt2_bpe):
    rows = bench("prepare", "--prepare_mb", "1", "--prepare_workers", "1,2")
    assert [r.get("workers") for r in rows] == [None, 1, 2]
    assert len({r["tokens"] for r in rows}) == 1 and rows[0]["text_bytes"] > 0.9 * 2 ** 20
    assert all(r["peak_rss_bytes"] > 0 and r["tokens_per_s"] > 0 for r in rows) and rows[2]["speed_vs_loop"] > 0


def test_profile_train_attributes_the_step_to_sub_layers():
    (row,) = bench("profile-train", "--config", str(REPO / "configs/tiny.py"), "--config.model.n_layer=1",
                   "--config.model.n_embd=32", "--config.model.block_size=32", "--config.batch_size=2",
                   "--steps", "2", "--warmup", "1")
    assert row["step_ms"] > 0 and 0 < row["matmul_share"] < 1
    for scope in ("time_mix", "channel_mix", "swa", "gqa", "moe", "head", "optimizer"):
        assert row["by_scope"][scope] > 0, (scope, row["by_scope"])
    assert {t["direction"] for t in row["top"]} >= {"forward", "backward"}


def test_text_race_smoke(tmp_path):
    """bench.py text end to end, shortened: nanoGPT's own train.py and ours on the same text,
    both scored by one scorer on the same held-out characters."""
    import os
    nanogpt = os.environ.get("MICRORWKV_NANOGPT_DIR")
    if not nanogpt or not (pathlib.Path(nanogpt) / "train.py").is_file():
        pytest.skip("nanoGPT's files not available: set MICRORWKV_NANOGPT_DIR to a directory with its model.py, "
                    "train.py, configurator.py and config/ (.ci/run sets it)")
    from microrwkv_jax.data import stories
    texts, _ = stories.generate_stories(400, 11)
    text = tmp_path / "text.txt"
    text.write_bytes(("\r\n\r\n".join(texts) + "\r\n").encode())
    rows = bench("text", "--text", str(text), "--nanogpt", nanogpt, "--nanogpt_iters", "10", "--our_minutes", "0.03",
                 "--throughput_steps", "12", "--throughput_families", "gpt:2", "--out", str(tmp_path / "race"))
    data, peer, throughput, ours = rows
    assert (throughput["family"], throughput["cpu_devices"], throughput["steps"]) == ("gpt", 2, 12)
    assert throughput["tokens_per_s"] > 0 and throughput["vs_nanogpt"] > 0
    chars = len(text.read_bytes().decode())
    assert data["val_chars"] == chars - int(chars * 0.9) and data["train_chars"] == int(chars * 0.9)
    assert peer["side"] == "nanogpt" and peer["steps"] == 10 and peer["wall_s"] > 0 and peer["tokens_per_s"] > 0
    assert ours["side"] == "ours (equal_time)" and ours["wall_s"] > 0 and ours["first_step_s"] > 0
    for row in (peer, ours):       # the same held-out characters, every one scored, both ways
        assert row["window_chars"] == data["val_chars"] and 0 < row["full_nats_per_char"] < 6
    assert peer["full_chars"] == data["val_chars"]


def test_generate_times_the_rwkv_package_beside_rwkv7_and_tokenize_compares_world_tokenizers(tmp_path):
    pytest.importorskip("rwkv", reason="BlinkDL's rwkv package is the test extra: pip install -e '.[test]'")
    rows = bench("generate", "--size", "tiny", "--contexts", "16", "--families", "rwkv7", "--steps", "1",
                 "--warmup", "0", "--batches", "1,2", "--batch_context", "16", "--out", str(tmp_path))
    assert [(r["family"], r["context"], r["batch"]) for r in rows] == [("rwkv7", 16, 1), ("rwkv7", 16, 2)]
    for r in rows:
        assert r["rwkv_package_ms_per_token"] > 0 and r["rwkv_package"]["strategy"] == "cpu fp32"
        assert r["speedup_vs_rwkv_package"] == pytest.approx(r["tokens_per_s"] * r["rwkv_package_ms_per_token"] / 1e3)
    assert not list(tmp_path.glob("*.pth"))              # the shared weights are removed after
    text = tmp_path / "text.txt"
    text.write_text("Hello, world! 日本語 and emoji 😀.\n" * 50, encoding="utf-8")
    (row,) = bench("tokenize", "--text", str(text), "--tokenize_mb", "0.05")
    assert row["identical_ids"] and row["round_trip"] and row["tokens"] > 0
    assert row["ours_encode_mb_per_s"] > 0 and row["encode_speedup"] > 0
