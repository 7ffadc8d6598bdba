"""Token data: read a source once, tokenise it into cached uint16 memory-mapped files, then
draw batches.

Sources (the `dataset` config key):
  "stories"      the built-in story corpus (`microrwkv_jax.data.stories`), with its entropy floor;
  "tfds:NAME"    a TFDS text dataset prepared as array_record, read by `tfds.data_source`
                 (no TensorFlow needed); the text field is `data.text_field`;
  a path/glob    local `.txt` files (documents separated by <|endoftext|> or blank lines) and
                 `.jsonl` files (one JSON object per line, text in `data.text_field`).

Training batches are random windows of block_size + 1 tokens whose offsets are a pure function
of (seed, step), so a resumed run sees exactly the batches it would have seen. Validation uses
whole held-out documents packed into windows that start at a document start, so every scored
token has its full document context (and the entropy floor applies to exactly those tokens).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Optional

import numpy as np

from microrwkv_jax.data import stories
from microrwkv_jax.data.tokenizers import encode_documents

EOT_TEXT = "<|endoftext|>"
FORMAT_VERSION = 1


@dataclasses.dataclass
class TokenData:
    train: np.ndarray            # uint16 token stream (memory-mapped), documents joined by end-of-text
    val: np.ndarray              # uint16 held-out stream
    val_doc_starts: np.ndarray   # start of each held-out document in `val`
    info: dict                   # source, sizes, entropy floor (built-in corpus), cache path


# --- Reading sources ---------------------------------------------------------------------------

def split_text_documents(text: str) -> list:
    """Documents of a .txt file: separated by <|endoftext|> if present, else by blank lines."""
    parts = text.split(EOT_TEXT) if EOT_TEXT in text else re.split(r"\n\s*\n", text)
    return [p.strip() for p in parts if p.strip()]


def read_local_documents(pattern: str, text_field: str) -> list:
    paths = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not paths:
        raise ValueError(f"dataset: no files match {pattern!r}")
    docs = []
    for path in paths:
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        docs.append(json.loads(line)[text_field])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"dataset: {path}:{n} is not a JSON object with a {text_field!r} field") from None
        elif path.endswith(".txt"):
            docs.extend(split_text_documents(pathlib.Path(path).read_text(encoding="utf-8")))
        else:
            raise ValueError(f"dataset: {path}: expected .txt or .jsonl files")
    docs = [d for d in docs if isinstance(d, str) and d.strip()]
    if not docs:
        raise ValueError(f"dataset: the files matching {pattern!r} hold no text")
    return docs


def tfds_splits(name: str, data_dir: Optional[str]) -> list:
    """The splits a prepared TFDS dataset has (read from its dataset_info, without TensorFlow)."""
    import tensorflow_datasets as tfds    # imported only here: TFDS is optional at run time
    return list(tfds.builder(name, data_dir=data_dir).info.splits.keys())


def read_tfds_documents(name: str, split: str, data_dir: Optional[str], text_field: str) -> list:
    import tensorflow_datasets as tfds
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    docs = []
    for i in range(len(source)):
        value = source[i][text_field]
        docs.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    return docs


def _source_documents(dataset: str, data_cfg):
    """(train docs, val docs, val log-probs or None)."""
    if dataset == "stories":
        train, _ = stories.generate_stories(data_cfg.num_train_stories, data_cfg.story_seed)
        val, val_logp = stories.generate_stories(data_cfg.num_val_stories, data_cfg.story_seed + 1_000_003)
        return train, val, val_logp
    if dataset.startswith("tfds:"):
        name = dataset[len("tfds:"):]
        train = read_tfds_documents(name, "train", data_cfg.tfds_data_dir, data_cfg.text_field)
        if data_cfg.tfds_val_split not in tfds_splits(name, data_cfg.tfds_data_dir):
            train, val = _holdout(train, data_cfg.val_fraction)     # no validation split: hold out from train
        else:
            val = read_tfds_documents(name, data_cfg.tfds_val_split, data_cfg.tfds_data_dir, data_cfg.text_field)
        return train, val, None
    docs = read_local_documents(dataset, data_cfg.text_field)
    train, val = _holdout(docs, data_cfg.val_fraction)
    return train, val, None


def _holdout(docs, fraction):
    n_val = max(1, int(round(len(docs) * fraction)))
    if len(docs) < 2:
        raise ValueError(f"dataset: {len(docs)} document(s); need at least 2 to hold one out for validation")
    return docs[:-n_val], docs[-n_val:]


# Data config keys that say how batches are drawn, not what the token files hold.
SAMPLING_KEYS = ("document_windows",)


def _fingerprint(dataset: str, data_cfg, tokenizer_name: str) -> str:
    h = hashlib.sha256()
    source = {k: v for k, v in (data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)).items()
              if k not in SAMPLING_KEYS}
    h.update(json.dumps([FORMAT_VERSION, dataset, tokenizer_name, source], sort_keys=True, default=str).encode())
    if dataset != "stories" and not dataset.startswith("tfds:"):
        for path in sorted(glob.glob(os.path.expanduser(dataset), recursive=True)):
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# --- Preparing and caching ---------------------------------------------------------------------

def prepare_data(dataset: str, data_cfg, tokenizer, progress: bool = True) -> TokenData:
    """Tokenise the source once into `data_cfg.cache_dir` (reused on later runs)."""
    if tokenizer.vocab_size > 2 ** 16:
        raise ValueError(f"tokenizer {tokenizer.name}: {tokenizer.vocab_size} tokens do not fit the uint16 token files")
    key = _fingerprint(dataset, data_cfg, tokenizer.name)
    cache = pathlib.Path(data_cfg.cache_dir) / f"{tokenizer.name}-{key}"
    if not (cache / "info.json").is_file():
        train_docs, val_docs, val_logp = _source_documents(dataset, data_cfg)
        train, _ = encode_documents(tokenizer, train_docs, progress, "tokenizing train")
        val, val_starts = encode_documents(tokenizer, val_docs, progress, "tokenizing val")
        info = {"dataset": dataset, "tokenizer": tokenizer.name, "train_tokens": int(train.size),
                "val_tokens": int(val.size), "train_documents": len(train_docs), "val_documents": len(val_docs)}
        if val_logp is not None:
            lengths = np.diff(np.append(val_starts, val.size))       # tokens incl. each end-of-text
            info["entropy_floor"] = stories.entropy_floor(val_docs, val_logp, lengths)
            info["val_doc_nats"] = [-float(x) for x in val_logp]
        if int(train.max(initial=0)) >= tokenizer.vocab_size or int(val.max(initial=0)) >= tokenizer.vocab_size:
            raise ValueError("tokenizer produced ids outside its vocabulary")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
        try:
            train.tofile(tmp / "train.bin")
            val.tofile(tmp / "val.bin")
            np.save(tmp / "val_doc_starts.npy", val_starts)
            (tmp / "info.json").write_text(json.dumps(info))
            try:
                tmp.rename(cache)
            except OSError:          # another process finished first: use its copy
                if not (cache / "info.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads((cache / "info.json").read_text())
    info["cache"] = str(cache)
    load = lambda name: np.memmap(cache / name, dtype=np.uint16, mode="r") if (cache / name).stat().st_size else np.zeros((0,), np.uint16)
    return TokenData(load("train.bin"), load("val.bin"), np.load(cache / "val_doc_starts.npy"), info)


# --- Batches -----------------------------------------------------------------------------------

def document_window_starts(tokens: np.ndarray, eot_id: int, block_size: int) -> np.ndarray:
    """Offsets of the end-of-text tokens that can start a window of block_size + 1 tokens: a
    window from one begins with a whole document, as sampling from end-of-text does."""
    starts = np.flatnonzero(np.asarray(tokens) == eot_id)
    starts = starts[starts <= tokens.size - block_size - 1]
    if starts.size == 0:
        raise ValueError(f"dataset: no document boundary leaves room for a window of block_size={block_size}")
    return starts


def train_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, block_size: int,
                rows: slice = slice(None), starts: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows `rows` of the global batch of random windows int32 [batch_size, block_size + 1]; a pure
    function of (seed, step). Windows start anywhere, or with `starts` (`document_window_starts`)
    at a random one of those offsets. Every process draws all offsets but reads only its own rows."""
    rng = np.random.default_rng([seed, step])
    if starts is None:
        offsets = rng.integers(0, tokens.size - block_size - 1, size=batch_size)[rows]
    else:
        offsets = starts[rng.integers(0, starts.size, size=batch_size)][rows]
    return np.stack([tokens[o:o + block_size + 1] for o in offsets]).astype(np.int32)


def val_windows(data: TokenData, block_size: int, eot_id: int):
    """Whole held-out documents packed into windows that each start with end-of-text.

    Returns (inputs int32 [N, block_size], targets int32 [N, block_size] with -1 for padding,
    indices of the documents used, the window of each used document). A document longer than
    block_size is left out.
    """
    starts = list(data.val_doc_starts) + [data.val.size]
    rows, current, used, window_of_doc = [], [eot_id], [], []
    for i in range(len(starts) - 1):
        doc = data.val[starts[i]:starts[i + 1]].astype(np.int32)        # ends with end-of-text
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


def ngram_baselines(train: np.ndarray, inputs: np.ndarray, targets: np.ndarray, vocab_size: int) -> dict:
    """Cross-entropy (nats/token) of add-one unigram and add-0.01 bigram models fitted on train."""
    train = np.asarray(train, np.int64)
    unigram = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    unigram /= unigram.sum()
    # Bigram counts kept sparse (a dense table would be V^2 for a 50k vocabulary).
    pair_ids, pair_counts = np.unique(train[:-1] * vocab_size + train[1:], return_counts=True)
    row_totals = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    mask = targets >= 0
    x, y = inputs[mask].astype(np.int64), targets[mask].astype(np.int64)
    query = x * vocab_size + y
    pos = np.clip(np.searchsorted(pair_ids, query), 0, max(pair_ids.size - 1, 0))
    counts = np.where(pair_ids[pos] == query, pair_counts[pos], 0) if pair_ids.size else np.zeros_like(query)
    k = 0.01
    bigram = (counts + k) / (row_totals[x] + k * vocab_size)
    return {"unigram": float(-np.mean(np.log(unigram[y]))), "bigram": float(-np.mean(np.log(bigram)))}
