"""bench.py prepare: data preparation's throughput and peak memory against a plain loop.

    python bench.py prepare [--prepare_mb 2048] [--prepare_tokenizer gpt2] [--prepare_workers 1,2]
                            [--prepare_corpus PATH]

Writes a `.txt` of generated stories (blank-line separated and read as such documents,
`--txt_split blank_lines`; repeated to --prepare_mb MiB) unless
--prepare_corpus names one, then, each in a fresh process:
  * the peer: a plain single-threaded loop, `tiktoken`'s `encode_ordinary` over every document
    of the file (read and split by the same reader), writing nothing;
  * `python -m microrwkv_jax.data.prepare` with each --prepare_workers count, writing the cache.
Each record: seconds, tokens, tokens/s, peak resident memory (the process's own VmHWM; for
prepare also the sampled peak of it and its worker processes together, `benchmarks/rss.py`)
and, for prepare, its speed relative to the peer's in the same run.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import flags

from benchmarks.common import emit

flags.DEFINE_float("prepare_mb", 2048, "prepare: MiB of generated text")
flags.DEFINE_string("prepare_tokenizer", "gpt2", "prepare: tokenizer")
flags.DEFINE_string("prepare_workers", "1,2", "prepare: worker counts to measure")
flags.DEFINE_string("prepare_corpus", None, "prepare: an existing .txt to prepare instead of generated stories")
FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent

PEER = """
import sys, time
from benchmarks.rss import own_peak_bytes
from microrwkv_jax.data import sources
from microrwkv_jax.data.tokenizers import get_tokenizer
enc = get_tokenizer(sys.argv[2]).enc
started, tokens = time.perf_counter(), 0
for chunk in sources.text_file_batches(sys.argv[1], "blank_lines"):
    for document in chunk.documents():
        tokens += len(enc.encode_ordinary(document)) + 1
print(tokens, time.perf_counter() - started, own_peak_bytes(), own_peak_bytes())
"""

OURS = """
import json, pathlib, sys, time
from benchmarks.rss import TreePeak, own_peak_bytes
from microrwkv_jax.data import prepare
started = time.perf_counter()
with TreePeak() as tree:
    assert prepare.main(sys.argv[1:]) == 0
seconds = time.perf_counter() - started
cache = next(pathlib.Path(sys.argv[sys.argv.index("--cache_dir") + 1]).glob("*/info.json"))
info = json.loads(cache.read_text())
print(info["train_tokens"] + info["val_tokens"], seconds, own_peak_bytes(), tree.peak)
"""


def write_corpus(path: pathlib.Path, mebibytes: float) -> None:
    from microrwkv_jax.data import stories
    texts, _ = stories.generate_stories(20000, 11)
    block = ("\n\n".join(texts) + "\n\n").encode()
    target = int(mebibytes * 2 ** 20)
    with open(path, "wb") as f:
        for _ in range(target // len(block)):
            f.write(block)
        f.write(block[:target % len(block)].rsplit(b"\n\n", 1)[0])     # up to the last whole story


def measure(script: str, args: list) -> tuple:
    """(tokens, seconds, the process's peak RSS, the peak RSS of it and its workers together)
    printed by `script` run in a fresh process."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.py prepare: {done.stderr.strip().splitlines()[-1]}")
    tokens, seconds, rss, tree = done.stdout.splitlines()[-1].split()
    return int(tokens), float(seconds), int(rss), int(tree)


def run() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        corpus = pathlib.Path(FLAGS.prepare_corpus or pathlib.Path(tmp) / "corpus.txt")
        if FLAGS.prepare_corpus is None:
            started = time.perf_counter()
            write_corpus(corpus, FLAGS.prepare_mb)
            print(f"wrote {corpus.stat().st_size / 2 ** 20:.0f} MiB of stories in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
        common = {"bench": "prepare", "tokenizer": FLAGS.prepare_tokenizer, "text_bytes": corpus.stat().st_size,
                  "cpu_count": os.cpu_count()}
        tokens, seconds, rss, _ = measure(PEER, [str(corpus), FLAGS.prepare_tokenizer])
        peer_rate = tokens / seconds
        emit({**common, "method": "single-threaded encode_ordinary loop (no writing)", "tokens": tokens,
              "seconds": seconds, "tokens_per_s": peer_rate, "peak_rss_bytes": rss})
        for workers in (int(w) for w in FLAGS.prepare_workers.split(",")):
            cache_dir = pathlib.Path(tmp) / f"cache-{workers}"
            tokens, seconds, rss, tree_rss = measure(OURS, ["--dataset", str(corpus), "--tokenizer",
                                                              FLAGS.prepare_tokenizer, "--cache_dir", str(cache_dir),
                                                              "--workers", str(workers), "--txt_split",
                                                              "blank_lines"])
            emit({**common, "method": f"microrwkv_jax.data.prepare, {workers} workers", "workers": workers,
                  "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_bytes": rss,
                  "peak_rss_with_workers_bytes": tree_rss, "speed_vs_loop": tokens / seconds / peer_rate})
            subprocess.run(["rm", "-rf", str(cache_dir)], check=True)
