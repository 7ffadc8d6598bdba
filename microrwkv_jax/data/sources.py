"""Documents from every kind of source, streamed: a source is read in bounded pieces and never
held whole, so preparing 40 GB of text takes the memory of a few pieces.

    stories          the built-in story corpus (`stories`): its own held-out stories
    tfds:NAME        a TFDS dataset prepared as array_record (`tfds.data_source`, no TensorFlow),
                     read by index ranges; held out: its validation split, or part of train
    a path or glob   .txt files, read as written: by default (`txt_split="stream"`) one
                     continuous stream of bytes, blank lines and line ends included, whose last
                     `val_fraction` is held out (contiguous, as nanoGPT does) unless `val_dataset`
                     names the held-out text; or, by explicit choice, documents separated by
                     <|endoftext|> (`txt_split="eot"`) or by blank lines (`"blank_lines"`).
                     .jsonl (one JSON object per line) and .parquet files are documents; the
                     text is in the field `text_field`

A source is a list of `Stream`s: each yields batches in a fixed order. A batch is a list of
documents' texts, a `TextChunk` (a .txt cut after a separator, split into documents where it is
tokenised) or a `StreamPiece` (raw bytes of a text stream, cut where tokenising the pieces
apart gives the tokens of the whole). Batches, not single documents, and chunks split by the
workers, because per-document work in the reading process would cost more than tokenising on
every core saves. Document sources without a validation part hold out documents by their index
(`held_out_mask`), so the split is known while streaming, without counting first; a text
stream is split by byte position, known from the files' sizes.
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
TXT_SPLITS = ("stream", "eot", "blank_lines")   # how a .txt is read: one stream, or documents by a separator
MAX_CARRY_PIECES = 4          # a stream with no safe cut in this many pieces is cut anyway (bounded memory)


@dataclasses.dataclass
class Stream:
    """One part of a source, read in order. `batches()` yields lists of texts or `TextChunk`s;
    `held` says whether its documents are held out (None: by their index, `held_out_mask` at
    `fraction`); `size` is its size in `unit` for progress bars: "B" (bytes of files; a batch
    advances the bar by its characters) or "doc" (records, one each); `text`: a text stream
    (`StreamPiece`s, one document)."""
    name: str
    size: int
    unit: str
    batches: Callable[[], Iterator]
    held: Optional[bool] = None
    fraction: float = 0.0
    text: bool = False

    def held_out(self, start: int, count: int) -> np.ndarray:
        """Whether each of this stream's documents start .. start + count - 1 is held out."""
        return held_out_mask(start, count, self.fraction) if self.held is None else np.full(count, self.held)


def held_out_mask(start: int, count: int, fraction: float) -> np.ndarray:
    """Whether each of documents start .. start + count - 1 of a source without a validation
    split is held out: one at the end of every 1/fraction documents, so that n documents hold out
    floor(n * fraction), never more than `fraction` of them, spread over the whole source (the
    held-out set never depends on the source's length)."""
    index = np.arange(start, start + count, dtype=np.float64)
    return np.floor((index + 1) * fraction) != np.floor(index * fraction)


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
    if isinstance(batch, StreamPiece):
        return len(batch.data)
    return len(batch.text) if isinstance(batch, TextChunk) else sum(map(len, batch))


# --- .txt as one stream: byte pieces cut where tokenisation allows ------------------------------------

@dataclasses.dataclass
class StreamPiece:
    """Consecutive bytes of a text stream: `data`, from byte `offset` of the file `path`; `first`
    for the piece that begins the stream (its start is the stream's one document start)."""
    data: bytes
    path: str
    offset: int
    first: bool


def safe_cut(buffer: bytes) -> int:
    """Where `buffer` can be cut so that tokenising both sides apart gives the tokens of the whole,
    late in it, or -1: before a space that precedes a non-space byte (GPT-2-style pre-tokenisers
    start a token there: " word", " 42", " !"), else after a line end between two non-space bytes
    (a lone "\n" is a pre-token of its own; "\r\n" is one only as a whole). The byte tokenizer is
    indifferent to cuts; the others see whole pre-tokens on each side."""
    at = len(buffer) - 1
    while True:
        at = buffer.rfind(b" ", 0, at)
        if at <= 0:
            break
        if not buffer[at + 1:at + 2].isspace():
            return at
    at = len(buffer) - 1
    while True:
        at = buffer.rfind(b"\n", 0, at)
        if at < 0:
            return -1
        after, before = buffer[at + 1:at + 2], buffer[at - 1:at] if at else b" "
        if after and not after.isspace() and not before.isspace():
            return at + 1


def utf8_boundary(buffer: bytes, at: int) -> int:
    """`at`, moved back to the start of the UTF-8 character it falls in (at most 3 bytes)."""
    for back in range(4):
        if at - back <= 0 or buffer[at - back] & 0xC0 != 0x80:
            return max(at - back, 0)
    return at


def byte_range_pieces(path: str, start: int, end: int, read_bytes: int,
                      cut_at=safe_cut) -> Iterator[StreamPiece]:
    """Bytes start .. end - 1 of the file `path` as `StreamPiece`s (first=False), each ending where
    `cut_at` says (`safe_cut`, or the tokenizer's own `stream_cut`); a stretch with no cut in
    MAX_CARRY_PIECES reads is cut at a character boundary (memory: at most that many reads)."""
    buffer, buffer_offset = b"", start
    with open(path, "rb") as f:
        f.seek(start)
        position = start
        while position < end:
            piece = f.read(min(read_bytes, end - position))
            if not piece:
                raise ValueError(f"dataset: {path}: changed while being read (shorter than its size)")
            position += len(piece)
            buffer += piece
            cut = cut_at(buffer)
            if cut <= 0 and len(buffer) >= MAX_CARRY_PIECES * read_bytes:
                cut = utf8_boundary(buffer, len(buffer) - 1)
            if cut > 0:
                yield StreamPiece(buffer[:cut], path, buffer_offset, False)
                buffer, buffer_offset = buffer[cut:], buffer_offset + cut
    if buffer:
        yield StreamPiece(buffer, path, buffer_offset, False)


def stream_pieces(ranges: list, read_bytes: int, cut_at=safe_cut) -> Iterator[StreamPiece]:
    """The stream made of byte ranges [(path, start, end)] of files, in order, as `StreamPiece`s;
    the first one is marked `first`."""
    first = True
    for path, start, end in ranges:
        for piece in byte_range_pieces(path, start, end, read_bytes, cut_at):
            if first:
                piece.first, first = True, False
            yield piece


def stream_split(paths: list, fraction: float) -> tuple:
    """(training ranges, held-out ranges) of the files `paths` read as one stream: the last
    floor(fraction x bytes) bytes held out, the cut moved forward to a character's start (never
    more than `fraction`)."""
    sizes = [os.path.getsize(p) for p in paths]
    total = sum(sizes)
    split = total - int(total * fraction)
    # The file holding the split, and the split moved to a UTF-8 character's first byte.
    before, train, val = 0, [], []
    for path, size in zip(paths, sizes):
        if before + size <= split:
            train.append((path, 0, size))
        elif before >= split:
            val.append((path, 0, size))
        else:
            cut = split - before
            with open(path, "rb") as f:
                f.seek(cut)
                head = f.read(4)
            while head and head[0] & 0xC0 == 0x80 and cut < size:
                head, cut = head[1:], cut + 1
            train.append((path, 0, cut))
            if cut < size:
                val.append((path, cut, size))
        before += size
    return [r for r in train if r[2] > r[1]], [r for r in val if r[2] > r[1]]


# --- .txt as documents: pieces split on a separator that may straddle them -----------------------------


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


def split_text_documents(text: str, txt_split: str) -> list:
    """Documents of one text split as `txt_split` says ("eot" or "blank_lines")."""
    return TextChunk(text, txt_split == "eot").documents()


def text_file_batches(path: str, txt_split: str, piece_chars: int = PIECE_CHARS) -> Iterator[TextChunk]:
    """A .txt file as `TextChunk`s of the documents `txt_split` separates, read `piece_chars`
    bytes at a time (UTF-8, checked)."""
    return text_chunks(_decoded_pieces(path, piece_chars), txt_split == "eot")


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


def local_files(pattern: str, key: str = "dataset") -> list:
    """The files a path or glob names, sorted; each must be .txt, .jsonl or .parquet."""
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise ValueError(f"{key}: no files match {pattern!r}")
    for path in paths:
        if not path.endswith(FILE_KINDS):
            raise ValueError(f"{key}: {path}: expected {', '.join(FILE_KINDS)} files")
    return paths


def is_text_stream(paths: list, txt_split: str, key: str = "dataset") -> bool:
    """Whether the files are read as one text stream (.txt files with txt_split="stream"); a
    stream of .txt mixed with document files is refused."""
    if txt_split != "stream" or not any(p.endswith(".txt") for p in paths):
        return False
    others = [p for p in paths if not p.endswith(".txt")]
    if others:
        raise ValueError(f"{key}: {others[0]}: .txt files are read as one stream (data.txt_split='stream') and "
                         "cannot be mixed with .jsonl/.parquet documents; give them separately or set "
                         "data.txt_split to 'eot' or 'blank_lines'")
    return True


def file_batches(path: str, text_field: str, txt_split: str, piece_chars: int = PIECE_CHARS) -> Iterator:
    if path.endswith(".txt"):
        return text_file_batches(path, txt_split, piece_chars)
    if path.endswith(".jsonl"):
        return in_batches(jsonl_documents(path, text_field), piece_chars)
    return in_batches(parquet_documents(path, text_field), piece_chars)


def local_streams(pattern: str, data_cfg, piece_chars: int = PIECE_CHARS, cut_at=safe_cut) -> list:
    """The streams of local files: a text stream split by position (or by `val_dataset`), cut into
    pieces where `cut_at` says, or documents (numbered across files for the hold-out, or held out
    as `val_dataset`'s files)."""
    txt_split, text_field = data_cfg.get("txt_split", "stream"), data_cfg.text_field
    val_pattern = data_cfg.get("val_dataset")
    paths = local_files(pattern)
    val_paths = local_files(val_pattern, "data.val_dataset") if val_pattern else None
    size = lambda ranges: sum(end - start for _, start, end in ranges)

    if is_text_stream(paths, txt_split):
        if val_paths is not None:
            if not is_text_stream(val_paths, txt_split, "data.val_dataset"):
                raise ValueError(f"data.val_dataset: {val_paths[0]}: the training text is a stream of .txt files, "
                                 "so the held-out text must be .txt too")
            train = [(p, 0, os.path.getsize(p)) for p in paths]
            val = [(p, 0, os.path.getsize(p)) for p in val_paths]
        else:
            train, val = stream_split(paths, data_cfg.val_fraction)
        return [Stream(f"{pattern} (train)", size(train), "B", lambda: stream_pieces(train, piece_chars, cut_at),
                       held=False, text=True),
                Stream(f"{pattern} (held out)", size(val), "B", lambda: stream_pieces(val, piece_chars, cut_at),
                       held=True, text=True)]

    def batches(files):
        return lambda: (batch for path in files for batch in file_batches(path, text_field, txt_split, piece_chars))

    if val_paths is not None:
        return [Stream(pattern, sum(map(os.path.getsize, paths)), "B", batches(paths), held=False),
                Stream(val_pattern, sum(map(os.path.getsize, val_paths)), "B", batches(val_paths), held=True)]
    return [Stream(pattern, sum(map(os.path.getsize, paths)), "B", batches(paths), fraction=data_cfg.val_fraction)]


def read_local_documents(pattern: str, text_field: str, txt_split: str = "eot") -> list:
    """Every document of the files `pattern` names, in order (small sources and tests)."""
    return [text for path in local_files(pattern) for batch in file_batches(path, text_field, txt_split)
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


def source_streams(dataset: str, data_cfg, piece_chars: int = PIECE_CHARS, cut_at=safe_cut) -> list:
    """The streams of the source `dataset` names (see the module docstring); a text stream is cut
    into pieces where `cut_at` says (a tokenizer's `stream_cut` where it has one)."""
    if dataset == "stories":
        return story_streams(data_cfg.num_train_stories, data_cfg.num_val_stories, data_cfg.story_seed)
    if dataset.startswith("tfds:"):
        return tfds_streams(dataset[len("tfds:"):], data_cfg.tfds_data_dir, data_cfg.text_field,
                            data_cfg.tfds_val_split, data_cfg.val_fraction)
    return local_streams(dataset, data_cfg, piece_chars, cut_at)
