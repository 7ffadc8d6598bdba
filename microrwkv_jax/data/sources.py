"""Documents from every kind of source, streamed: a source is read in bounded pieces and never
held whole, so preparing 40 GB of text takes the memory of a few pieces.

    stories          the built-in story corpus (`stories`): its own held-out stories
    tfds:NAME        a TFDS dataset prepared as array_record (`tfds.data_source`, no TensorFlow),
                     read by index ranges; held out: its validation split, or part of train
    a path or glob   .txt (documents separated by <|endoftext|> where the file has one, else by
                     blank lines), .jsonl (one JSON object per line) and .parquet files; the text
                     is in the field `text_field`

A source is a list of `Stream`s: each yields batches of whole documents in a fixed order, a
batch being a list of texts or, for .txt files, a `TextChunk` (text cut after a separator,
split into documents where it is tokenised). Batches, not single documents, and chunks split
by the workers, because per-document work in the reading process would cost more than
tokenising on every core saves. Sources without a validation part hold out documents by their
index (`held_out_mask`), so the split is known while streaming, without counting first.
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
PIECE_CHARS = 1 << 22         # text per batch: bytes of a .txt read at a time, characters of documents
TFDS_RECORDS = 1024           # TFDS records read at a time
PARQUET_ROWS = 1024           # parquet rows read at a time
FILE_KINDS = (".txt", ".jsonl", ".parquet")


@dataclasses.dataclass
class Stream:
    """One part of a source, read in order. `batches()` yields lists of texts or `TextChunk`s;
    `held` says whether its documents are held out (None: by their index, `held_out_mask` at
    `fraction`); `size` is its size in `unit` for progress bars: "B" (bytes of files; a batch
    advances the bar by its characters) or "doc" (records, one each)."""
    name: str
    size: int
    unit: str
    batches: Callable[[], Iterator]
    held: Optional[bool] = None
    fraction: float = 0.0

    def held_out(self, start: int, count: int) -> np.ndarray:
        """Whether each of this stream's documents start .. start + count - 1 is held out."""
        return held_out_mask(start, count, self.fraction) if self.held is None else np.full(count, self.held)


def held_out_mask(start: int, count: int, fraction: float) -> np.ndarray:
    """Whether each of documents start .. start + count - 1 of a source without a validation
    split is held out: document 0, then one every 1/fraction documents, so that n documents hold
    out 1 + floor((n - 1) * fraction) spread over the whole source (the held-out set never depends
    on the source's length)."""
    index = np.arange(start, start + count, dtype=np.float64)
    return np.floor(index * fraction) != np.floor((index - 1) * fraction)


def is_held_out(index: int, fraction: float) -> bool:
    return bool(held_out_mask(index, 1, fraction)[0])


def in_batches(texts: Iterator[str], piece_chars: int = PIECE_CHARS) -> Iterator[list]:
    """Consecutive texts in lists of at least `piece_chars` characters (the last may be smaller)."""
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= piece_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def batch_documents(batch) -> list:
    """The documents of a batch (a list of texts, or a `TextChunk`)."""
    return batch.documents() if isinstance(batch, TextChunk) else batch


def batch_chars(batch) -> int:
    return len(batch.text) if isinstance(batch, TextChunk) else sum(map(len, batch))


# --- .txt: pieces, split on a separator that may straddle them --------------------------------------

def file_has_eot(path: str, read_bytes: int = PIECE_CHARS) -> bool:
    """Whether the file contains <|endoftext|> (scanned in pieces, overlapping by the marker's length)."""
    marker, tail = EOT_TEXT.encode(), b""
    with open(path, "rb") as f:
        while piece := f.read(read_bytes):
            if marker in tail + piece:
                return True
            tail = piece[-(len(marker) - 1):]
    return False


@dataclasses.dataclass
class TextChunk:
    """Whole documents of a .txt file as one text: separated by <|endoftext|> (eot) or by blank lines."""
    text: str
    eot: bool

    def documents(self) -> list:
        """The documents, stripped, empty ones dropped."""
        parts = self.text.split(EOT_TEXT) if self.eot else BLANK_LINES.split(self.text)
        return [part for part in map(str.strip, parts) if part]


def last_separator(text: str, eot: bool) -> int:
    """Where a separator begins late in `text` (the last <|endoftext|>, or the last blank line),
    or -1. Cutting there splits no document: each side splits into the documents it holds."""
    if eot:
        return text.rfind(EOT_TEXT)
    at = text.rfind("\n\n")
    if at < 0:                   # blank lines with spaces in them only: the regular expression
        for match in BLANK_LINES.finditer(text):
            at = match.start()
    return at


def text_chunks(pieces: Iterator[str], eot: bool) -> Iterator[TextChunk]:
    """A text given in pieces, as chunks of whole documents: each piece is cut at its last
    separator, and the rest waits for the next piece. The same documents whatever the pieces'
    sizes (a separator split between pieces is found once the next piece arrives); a document
    longer than a piece is kept until it ends (memory: the longest document plus a piece)."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        cut = last_separator(buffer, eot)
        if cut > 0:
            yield TextChunk(buffer[:cut], eot)
            buffer = buffer[cut:]
    if buffer.strip():
        yield TextChunk(buffer, eot)


def split_text_documents(text: str) -> list:
    """Documents of one text: separated by <|endoftext|> if present, else by blank lines."""
    return TextChunk(text, EOT_TEXT in text).documents()


def text_file_batches(path: str, piece_chars: int = PIECE_CHARS) -> Iterator[TextChunk]:
    """A .txt file as `TextChunk`s, read `piece_chars` bytes at a time (UTF-8, checked)."""
    eot = file_has_eot(path, piece_chars)
    return text_chunks(_decoded_pieces(path, piece_chars), eot)


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


def file_batches(path: str, text_field: str, piece_chars: int = PIECE_CHARS) -> Iterator:
    if path.endswith(".txt"):
        return text_file_batches(path, piece_chars)
    if path.endswith(".jsonl"):
        return in_batches(jsonl_documents(path, text_field), piece_chars)
    return in_batches(parquet_documents(path, text_field), piece_chars)


def local_streams(pattern: str, text_field: str, val_fraction: float, piece_chars: int = PIECE_CHARS) -> list:
    """One stream over every file (documents numbered across files for the hold-out)."""
    paths = local_files(pattern)

    def batches():
        return (batch for path in paths for batch in file_batches(path, text_field, piece_chars))

    return [Stream(pattern, sum(os.path.getsize(p) for p in paths), "B", batches, fraction=val_fraction)]


def read_local_documents(pattern: str, text_field: str) -> list:
    """Every document of the files `pattern` names, in order (small sources and tests)."""
    return [text for path in local_files(pattern) for batch in file_batches(path, text_field)
            for text in batch_documents(batch)]


# --- TFDS ---------------------------------------------------------------------------------------

def tfds_splits(name: str, data_dir: Optional[str]) -> list:
    """The splits a prepared TFDS dataset has (read from its dataset_info, without TensorFlow)."""
    import tensorflow_datasets as tfds    # imported only here: TFDS is optional at run time
    return list(tfds.builder(name, data_dir=data_dir).info.splits.keys())


def tfds_stream(name: str, split: str, data_dir: Optional[str], text_field: str, held: Optional[bool],
                fraction: float = 0.0) -> Stream:
    """A TFDS split read `TFDS_RECORDS` records at a time (one batched read each)."""
    import tensorflow_datasets as tfds
    source = tfds.data_source(name, split=split, data_dir=data_dir)

    def text(record):
        value = record[text_field]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def batches():
        for start in range(0, len(source), TFDS_RECORDS):
            yield [text(r) for r in source.__getitems__(list(range(start, min(start + TFDS_RECORDS, len(source)))))]

    return Stream(f"tfds:{name}/{split}", len(source), "doc", batches, held, fraction)


def tfds_streams(name: str, data_dir: Optional[str], text_field: str, val_split: str, val_fraction: float) -> list:
    if val_split not in tfds_splits(name, data_dir):      # no validation split: hold out from train
        return [tfds_stream(name, "train", data_dir, text_field, None, val_fraction)]
    return [tfds_stream(name, "train", data_dir, text_field, False),
            tfds_stream(name, val_split, data_dir, text_field, True)]


# --- The built-in corpus ----------------------------------------------------------------------------

def story_streams(num_train: int, num_val: int, seed: int) -> list:
    """The built-in corpus: `num_train` generated stories, then `num_val` held-out ones (their
    own seed; their log-probabilities give the entropy floor, `held_out_stories`)."""
    def batches(count, part_seed):
        return lambda: in_batches(stories.generate_stories(count, part_seed)[0])

    return [Stream("stories/train", num_train, "doc", batches(num_train, seed), held=False),
            Stream("stories/val", num_val, "doc", batches(num_val, held_out_story_seed(seed)), held=True)]


def held_out_story_seed(seed: int) -> int:
    return seed + 1_000_003


def held_out_stories(num_val: int, seed: int) -> tuple:
    """(texts, log-probabilities) of the built-in corpus's held-out stories."""
    return stories.generate_stories(num_val, held_out_story_seed(seed))


def source_streams(dataset: str, data_cfg, piece_chars: int = PIECE_CHARS) -> list:
    """The streams of the source `dataset` names (see the module docstring)."""
    if dataset == "stories":
        return story_streams(data_cfg.num_train_stories, data_cfg.num_val_stories, data_cfg.story_seed)
    if dataset.startswith("tfds:"):
        return tfds_streams(dataset[len("tfds:"):], data_cfg.tfds_data_dir, data_cfg.text_field,
                            data_cfg.tfds_val_split, data_cfg.val_fraction)
    return local_streams(dataset, data_cfg.text_field, data_cfg.val_fraction, piece_chars)
