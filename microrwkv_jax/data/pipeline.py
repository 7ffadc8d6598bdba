"""Token data: a source tokenised once into cached, memory-mapped token files
(`microrwkv_jax.data.prepare`), then batches.

Sources (the `dataset` config key; `microrwkv_jax.data.sources` reads them, streamed):
  "stories"      the built-in story corpus (`microrwkv_jax.data.stories`), with its entropy floor;
  "tfds:NAME"    a TFDS text dataset prepared as array_record, read by `tfds.data_source`
                 (no TensorFlow needed); the text field is `data.text_field`;
  a path/glob    local `.txt` files, read as written as one text stream whose last val_fraction
                 is held out (or as documents, `data.txt_split`), `.jsonl` and `.parquet` files
                 (documents, text in `data.text_field`); or `data.val_dataset` is the held-out part.

Training batches are random windows of block_size + 1 tokens whose offsets are a pure function
of (seed, step), so a resumed run sees exactly the batches it would have seen. The built-in
corpus's validation uses whole held-out stories packed into windows that start at a document
start, so every scored token has its full story context (and the entropy floor applies to
exactly those tokens); any other held-out text is scored whole by `microrwkv_jax.training.scoring`.
Nothing here reads a token file whole: batches index the memory maps, the story windows read at
most MAX_VAL_TOKENS held-out tokens, and the n-gram baselines a bounded sample of the training
stream.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Optional

import numpy as np

from microrwkv_jax.data.prepare import prepare_cache

MAX_VAL_TOKENS = 1 << 22      # held-out tokens read for validation windows (all of them on the story corpus)
BASELINE_SAMPLE_TOKENS = 10_000_000    # training tokens the n-gram baselines are fitted on
BASELINE_SAMPLE_PIECES = 100           # ... in this many evenly spaced runs of the stream


@dataclasses.dataclass
class TokenData:
    train: np.ndarray            # token stream (memory-mapped uint16 or uint32), documents joined by end-of-text
    val: np.ndarray              # held-out stream
    train_doc_starts: np.ndarray  # int64 (memory-mapped): where each training document starts
    val_doc_starts: np.ndarray   # int64 (memory-mapped): where each held-out document starts in `val`
    info: dict                   # source, sizes, entropy floor (built-in corpus), cache path


def load_token_data(cache: pathlib.Path) -> TokenData:
    """Memory-map a complete cache directory's files."""
    info = json.loads((cache / "info.json").read_text())
    info["cache"] = str(cache)

    def load(name, dtype):
        path = cache / name
        return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros((0,), dtype)

    return TokenData(load("train.bin", info["dtype"]), load("val.bin", info["dtype"]),
                     load("train_starts.bin", np.int64), load("val_starts.bin", np.int64), info)


def prepare_data(dataset: str, data_cfg, tokenizer, progress: bool = True, workers: Optional[int] = None) -> TokenData:
    """Tokenise the source once into `data_cfg.cache_dir` (reused on later runs), then map it."""
    return load_token_data(prepare_cache(dataset, data_cfg, tokenizer, workers=workers, progress=progress))


# --- Batches -----------------------------------------------------------------------------------

class DocumentWindowStarts:
    """The offsets that can start a training window of block_size + 1 tokens at a document
    boundary: the end-of-text before each document (but the first), where the window still fits.
    A window from one begins with a whole document, as sampling from end-of-text does. Reads the
    memory-mapped document starts on demand: nothing the size of the corpus is held.

    `starts[i]` (an index or an int array of them) -> offsets; `size` of them."""

    def __init__(self, doc_starts: np.ndarray, num_tokens: int, block_size: int):
        # Document i's end-of-text is at doc_starts[i] - 1; it fits iff doc_starts[i] - 1 <= num_tokens - block_size - 1.
        fitting = int(np.searchsorted(doc_starts, num_tokens - block_size, side="right"))
        self.doc_starts = doc_starts[1:fitting]          # a view of the memory map
        self.size = int(self.doc_starts.size)
        if self.size == 0:
            raise ValueError(f"dataset: no document boundary leaves room for a window of block_size={block_size}")

    def __getitem__(self, index):
        return np.asarray(self.doc_starts[index]) - 1


def train_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, block_size: int,
                rows: slice = slice(None), starts: Optional[DocumentWindowStarts] = None) -> np.ndarray:
    """Rows `rows` of the global batch of random windows int32 [batch_size, block_size + 1]; a pure
    function of (seed, step). Windows start anywhere, or with `starts` (`DocumentWindowStarts`)
    at a random one of those offsets. Every process draws all offsets but reads only its own rows."""
    rng = np.random.default_rng([seed, step])
    if starts is None:
        offsets = rng.integers(0, tokens.size - block_size - 1, size=batch_size)[rows]
    else:
        offsets = starts[rng.integers(0, starts.size, size=batch_size)][rows]
    return np.stack([tokens[o:o + block_size + 1] for o in offsets]).astype(np.int32)


def val_windows(data: TokenData, block_size: int, eot_id: int, max_tokens: int = MAX_VAL_TOKENS):
    """Whole held-out documents packed into windows that each start with end-of-text.

    Returns (inputs int32 [N, block_size], targets int32 [N, block_size] with -1 for padding,
    indices of the documents used, the window of each used document). A document longer than
    block_size is left out; documents are read in order until `max_tokens` held-out tokens.
    """
    doc_starts, count = data.val_doc_starts, int(data.val_doc_starts.size)
    rows, current, used, window_of_doc, read = [], [eot_id], [], [], 0
    for i in range(count):
        start, end = int(doc_starts[i]), int(doc_starts[i + 1]) if i + 1 < count else int(data.val.size)
        read += end - start
        if read > max_tokens and used:
            break
        doc = data.val[start:end].astype(np.int32)        # ends with end-of-text
        if doc.size > block_size:
            continue
        if len(current) + doc.size > block_size + 1:
            rows.append(current)
            current = [eot_id]
        current.extend(doc.tolist())
        used.append(i)
        window_of_doc.append(len(rows))
    if len(current) > 1:
        rows.append(current)
    if not rows:
        raise ValueError(f"dataset: no held-out document fits block_size={block_size}")
    inputs = np.full((len(rows), block_size), eot_id, np.int32)
    targets = np.full((len(rows), block_size), -1, np.int32)
    for r, row in enumerate(rows):
        inputs[r, : len(row) - 1] = row[:-1]
        targets[r, : len(row) - 1] = row[1:]
    return inputs, targets, np.asarray(used, np.int64), np.asarray(window_of_doc, np.int64)


def floor_for_documents(info: dict, used_docs: np.ndarray, num_target_tokens: int) -> Optional[float]:
    """Entropy floor in nats per scored token for the held-out documents actually scored."""
    if "val_doc_nats" not in info:
        return None
    return float(np.sum(np.asarray(info["val_doc_nats"])[used_docs]) / num_target_tokens)


def training_sample(train: np.ndarray, max_tokens: int = BASELINE_SAMPLE_TOKENS,
                    pieces: int = BASELINE_SAMPLE_PIECES) -> list:
    """The training stream (int64), whole if it has at most `max_tokens` tokens, else `pieces`
    evenly spaced runs of max_tokens // pieces tokens: a fixed-size sample of the whole stream."""
    if train.size <= max_tokens:
        return [np.asarray(train, np.int64)]
    run = max_tokens // pieces
    offsets = np.linspace(0, train.size - run, pieces).astype(np.int64)
    return [np.asarray(train[o:o + run], np.int64) for o in offsets]


def ngram_baselines(train: np.ndarray, inputs: np.ndarray, targets: np.ndarray, vocab_size: int) -> dict:
    """Cross-entropy (nats/token) of add-one unigram and add-0.01 bigram models fitted on at most
    BASELINE_SAMPLE_TOKENS of the training stream (`training_sample`; all of it on the story corpus)."""
    runs = training_sample(train)
    unigram = sum(np.bincount(r, minlength=vocab_size) for r in runs).astype(np.float64) + 1.0
    unigram /= unigram.sum()
    # Bigram counts kept sparse (a dense table would be V^2 for a 50k vocabulary); pairs within runs.
    pair_ids, pair_counts = np.unique(np.concatenate([r[:-1] * vocab_size + r[1:] for r in runs]),
                                      return_counts=True)
    row_totals = sum(np.bincount(r[:-1], minlength=vocab_size) for r in runs).astype(np.float64)
    mask = targets >= 0
    x, y = inputs[mask].astype(np.int64), targets[mask].astype(np.int64)
    query = x * vocab_size + y
    pos = np.clip(np.searchsorted(pair_ids, query), 0, max(pair_ids.size - 1, 0))
    counts = np.where(pair_ids[pos] == query, pair_counts[pos], 0) if pair_ids.size else np.zeros_like(query)
    k = 0.01
    bigram = (counts + k) / (row_totals[x] + k * vocab_size)
    return {"unigram": float(-np.mean(np.log(unigram[y]))), "bigram": float(-np.mean(np.log(bigram)))}
