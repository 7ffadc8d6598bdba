"""bench.py tokenize: the World tokenizer (`world`: pyrwkv-tokenizer's encoder, our decoder) against
BlinkDL's own (the `rwkv` package's TRIE_TOKENIZER) on the same text, one after the other: MB/s
of encoding and decoding (the median of 3 runs each), and whether the ids are identical.

    python bench.py tokenize --text novel.txt [--tokenize_mb 10]    # the text repeated to 10 MB
"""

from __future__ import annotations

import pathlib
import time

from absl import app, flags

from benchmarks.common import FLAGS, emit, environment

flags.DEFINE_float("tokenize_mb", 10.0, "tokenize: MB of text (the --text file repeated or cut to this size)")


def seconds(fn, repeats: int = 3) -> tuple:
    """(median seconds of `repeats` calls of fn, its result)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2], out


def run() -> None:
    if not FLAGS.text:
        raise app.UsageError("tokenize: --text names the text to tokenise")
    import rwkv.rwkv_tokenizer as blinkdl
    from microrwkv_jax.data.tokenizers import WORLD_VOCAB, get_tokenizer
    raw = pathlib.Path(FLAGS.text).read_bytes()
    size = int(FLAGS.tokenize_mb * 2 ** 20)
    data = (raw * (size // len(raw) + 1))[:size]
    text = data.decode("utf-8", errors="ignore")
    ours = get_tokenizer("world")
    theirs = blinkdl.TRIE_TOKENIZER(str(pathlib.Path(blinkdl.__file__).parent / WORLD_VOCAB))
    ours_encode, ids = seconds(lambda: ours.encode(text))
    ours_decode, back = seconds(lambda: ours.decode(ids))
    theirs_encode, their_ids = seconds(lambda: theirs.encode(text))
    theirs_decode, _ = seconds(lambda: theirs.decode(their_ids))
    mb = len(text.encode()) / 2 ** 20
    record = {"bench": "tokenize", "text": pathlib.Path(FLAGS.text).name, "mb": mb, "tokens": len(ids),
              "identical_ids": ids == their_ids, "round_trip": back == text,
              "ours_encode_mb_per_s": mb / ours_encode, "ours_decode_mb_per_s": mb / ours_decode,
              "rwkv_package_encode_mb_per_s": mb / theirs_encode, "rwkv_package_decode_mb_per_s": mb / theirs_decode,
              "encode_speedup": theirs_encode / ours_encode, "decode_speedup": theirs_decode / ours_decode}
    emit({**environment(), **record})
