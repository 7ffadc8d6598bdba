"""Documents from every kind of source, streamed: a source is read in bounded pieces and never
held whole, so preparing 40 GB of text takes the memory of a few pieces.

    stories          the built-in story corpus (`stories`): its own held-out stories
    tfds:NAME        a TFDS dataset prepared as array_record (`tfds.data_source`, no TensorFlow),
                     read by index ranges; held out: its validation split, or part of train
    a path or glob   .txt (documents separated by <|endoftext|> where the file has one, else by
                     blank lines), .jsonl (one JSON object per line) and .parquet files; the text
                     is in the field `text_field`

A source is a list of `Stream`s: each yields batches of documents in a fixed order, as
(texts, held_out flags). Batches, not single documents, because per-document Python work would
cost more than tokenising on every core saves. Sources without a validation part hold out
documents by their index (`held_out_mask`), so the split is known while streaming, without
counting the documents first.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import json
import os
import re
from typing import Callable, Iterator, Optional

import numpy as np

from microrwkv_jax.data import stories

EOT_TEXT = "<|endoftext|>"
BLANK_LINES = re.compile(r"\n\s*\n")
READ_BYTES = 1 << 22          # bytes of a file read at a time
TFDS_RECORDS = 1024           # TFDS records read at a time
PARQUET_ROWS = 1024           # parquet rows read at a time
BATCH_DOCUMENTS = 4096        # documents per batch of line-by-line sources (.jsonl, the story corpus)
FILE_KINDS = (".txt", ".jsonl", ".parquet")


@dataclasses.dataclass
class Stream:
    """One part of a source, read in order. `batches()` yields (texts: list of str, held_out:
    bool array, one flag per text); `size` is its size in `unit` for progress bars: "B" (bytes
    of files; a document advances the bar by its length) or "doc" (records, one each)."""
    name: str
    size: int
    unit: str
    batches: Callable[[], Iterator[tuple]]


def held_out_mask(start: int, count: int, fraction: float) -> np.ndarray:
    """Whether each of documents start .. start + count - 1 of a source without a validation
    split is held out: document 0, then one every 1/fraction documents, so that n documents hold
    out 1 + floor((n - 1) * fraction) spread over the whole source (the held-out set never depends
    on the source's length)."""
    index = np.arange(start, start + count, dtype=np.float64)
    return np.floor(index * fraction) != np.floor((index - 1) * fraction)


def is_held_out(index: int, fraction: float) -> bool:
    return bool(held_out_mask(index, 1, fraction)[0])


def numbered(batches: Iterator[list], fraction: Optional[float], held: bool = False) -> Iterator[tuple]:
    """(texts, held_out) batches: held out by document index across all `batches` (`fraction`),
    or all `held` when the source says which part they are (fraction None)."""
    start = 0
    for texts in batches:
        if texts:
            yield texts, (held_out_mask(start, len(texts), fraction) if fraction is not None
                          else np.full(len(texts), held))
            start += len(texts)


def in_batches(items: Iterator, size: int = BATCH_DOCUMENTS) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- .txt: pieces, split on a separator that may straddle them --------------------------------------

def file_has_eot(path: str, read_bytes: int = READ_BYTES) -> bool:
    """Whether the file contains <|endoftext|> (scanned in pieces, overlapping by the marker's length)."""
    marker, tail = EOT_TEXT.encode(), b""
    with open(path, "rb") as f:
        while piece := f.read(read_bytes):
            if marker in tail + piece:
                return True
            tail = piece[-(len(marker) - 1):]
    return False


def split_stream(pieces: Iterator[str], eot: bool) -> Iterator[list]:
    """The documents of a text given in pieces, a list per piece: separated by <|endoftext|>
    (eot) or by blank lines, stripped, empty ones dropped. The same documents whatever the
    pieces' sizes: the text after the last separator of a piece is kept until the next one ends
    it (a separator split between pieces is found once the next piece arrives; a document longer
    than a piece is kept until it ends: memory is the longest document plus a piece)."""
    buffer = ""
    for piece in pieces:
        parts = (buffer + piece).split(EOT_TEXT) if eot else BLANK_LINES.split(buffer + piece)
        buffer = parts.pop()
        yield [part for part in map(str.strip, parts) if part]
    buffer = buffer.strip()
    yield [buffer] if buffer else []


def split_text_documents(text: str) -> list:
    """Documents of one text: separated by <|endoftext|> if present, else by blank lines."""
    return [doc for batch in split_stream(iter([text]), EOT_TEXT in text) for doc in batch]


def text_file_batches(path: str, read_bytes: int = READ_BYTES) -> Iterator[list]:
    """The documents of a .txt file, a list per `read_bytes` read (UTF-8, checked)."""
    eot = file_has_eot(path, read_bytes)
    return split_stream(_decoded_pieces(path, read_bytes), eot)


def _decoded_pieces(path: str, read_bytes: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            piece = f.read(read_bytes)
            try:
                yield decoder.decode(piece, final=not piece)
            except UnicodeDecodeError as err:
                raise ValueError(f"dataset: {path}: not UTF-8 text (byte {offset + err.start})") from None
            if not piece:
                return
            offset += len(piece)


# --- .jsonl and .parquet ------------------------------------------------------------------------

def jsonl_documents(path: str, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[text_field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"dataset: {path}:{n} is not a JSON object with a {text_field!r} field") from None
            if isinstance(text, str) and text.strip():
                yield text


def parquet_documents(path: str, text_field: str, rows: int = PARQUET_ROWS) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"dataset: {path}: reading .parquet files needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as err:       # pyarrow's own errors for a file that is not parquet
        raise ValueError(f"dataset: {path}: not a readable parquet file ({str(err).splitlines()[0][:120]})") from None
    if text_field not in table.schema_arrow.names:
        raise ValueError(f"dataset: {path}: no column {text_field!r} (columns: {table.schema_arrow.names})")
    for batch in table.iter_batches(batch_size=rows, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def local_files(pattern: str) -> list:
    """The files a path or glob names, sorted; each must be .txt, .jsonl or .parquet."""
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise ValueError(f"dataset: no files match {pattern!r}")
    for path in paths:
        if not path.endswith(FILE_KINDS):
            raise ValueError(f"dataset: {path}: expected {', '.join(FILE_KINDS)} files")
    return paths


def file_batches(path: str, text_field: str, read_bytes: int = READ_BYTES) -> Iterator[list]:
    if path.endswith(".txt"):
        return text_file_batches(path, read_bytes)
    if path.endswith(".jsonl"):
        return in_batches(jsonl_documents(path, text_field))
    return in_batches(parquet_documents(path, text_field))


def local_streams(pattern: str, text_field: str, val_fraction: float, read_bytes: int = READ_BYTES) -> list:
    """One stream over every file (documents numbered across files for the hold-out)."""
    paths = local_files(pattern)

    def batches():
        return numbered((batch for path in paths for batch in file_batches(path, text_field, read_bytes)),
                        val_fraction)

    return [Stream(pattern, sum(os.path.getsize(p) for p in paths), "B", batches)]


def read_local_documents(pattern: str, text_field: str) -> list:
    """Every document of the files `pattern` names, in order (small sources and tests)."""
    return [text for path in local_files(pattern) for batch in file_batches(path, text_field) for text in batch]


# --- TFDS ---------------------------------------------------------------------------------------

def tfds_splits(name: str, data_dir: Optional[str]) -> list:
    """The splits a prepared TFDS dataset has (read from its dataset_info, without TensorFlow)."""
    import tensorflow_datasets as tfds    # imported only here: TFDS is optional at run time
    return list(tfds.builder(name, data_dir=data_dir).info.splits.keys())


def tfds_stream(name: str, split: str, data_dir: Optional[str], text_field: str, fraction: Optional[float],
                held: bool = False) -> Stream:
    """A TFDS split read `TFDS_RECORDS` records at a time (one batched read each); held out by
    index (`fraction`) or all `held`."""
    import tensorflow_datasets as tfds
    source = tfds.data_source(name, split=split, data_dir=data_dir)

    def text(record):
        value = record[text_field]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def batches():
        return numbered(([text(r) for r in source.__getitems__(list(range(start, min(start + TFDS_RECORDS,
                                                                                      len(source)))))]
                         for start in range(0, len(source), TFDS_RECORDS)), fraction, held)

    return Stream(f"tfds:{name}/{split}", len(source), "doc", batches)


def tfds_streams(name: str, data_dir: Optional[str], text_field: str, val_split: str, val_fraction: float) -> list:
    if val_split not in tfds_splits(name, data_dir):      # no validation split: hold out from train
        return [tfds_stream(name, "train", data_dir, text_field, val_fraction)]
    return [tfds_stream(name, "train", data_dir, text_field, None, held=False),
            tfds_stream(name, val_split, data_dir, text_field, None, held=True)]


# --- The built-in corpus ----------------------------------------------------------------------------

def story_streams(num_train: int, num_val: int, seed: int) -> list:
    """The built-in corpus: `num_train` generated stories, then `num_val` held-out ones (their
    own seed; their log-probabilities give the entropy floor, `held_out_stories`)."""
    def batches(count, part_seed, held):
        return lambda: numbered(in_batches(stories.generate_stories(count, part_seed)[0]), None, held)

    return [Stream("stories/train", num_train, "doc", batches(num_train, seed, False)),
            Stream("stories/val", num_val, "doc", batches(num_val, held_out_story_seed(seed), True))]


def held_out_story_seed(seed: int) -> int:
    return seed + 1_000_003


def held_out_stories(num_val: int, seed: int) -> tuple:
    """(texts, log-probabilities) of the built-in corpus's held-out stories."""
    return stories.generate_stories(num_val, held_out_story_seed(seed))


def source_streams(dataset: str, data_cfg, read_bytes: int = READ_BYTES) -> list:
    """The streams of the source `dataset` names (see the module docstring)."""
    if dataset == "stories":
        return story_streams(data_cfg.num_train_stories, data_cfg.num_val_stories, data_cfg.story_seed)
    if dataset.startswith("tfds:"):
        return tfds_streams(dataset[len("tfds:"):], data_cfg.tfds_data_dir, data_cfg.text_field,
                            data_cfg.tfds_val_split, data_cfg.val_fraction)
    return local_streams(dataset, data_cfg.text_field, data_cfg.val_fraction, read_bytes)
