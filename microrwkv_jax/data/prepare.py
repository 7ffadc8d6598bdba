"""Tokenise a source once into a cache of token files: streamed, in bounded memory, on every core.

    python -m microrwkv_jax.data.prepare --dataset 'data/*.txt' --tokenizer gpt2

train.py finds the same cache (the same source, tokenizer and hold-out give the same directory)
and prepares it itself on first use when none exists. A cache directory
`{cache_dir}/{tokenizer}-{fingerprint}/` holds

    train.bin, val.bin                the token streams (uint16, or uint32 for a vocabulary over
                                      65,536 tokens); each document is followed by end-of-text; a
                                      text stream (a .txt read as written) is its tokens alone
    train_starts.bin, val_starts.bin  int64: where each document starts in its stream (a text
                                      stream is one document)
    info.json                         sizes (tokens, documents, bytes and characters of text),
                                      dtype, the entropy floor of the built-in corpus

How it stays bounded, parallel and safe:
  * Documents stream from the source (`sources`) in batches of about `piece_chars` characters.
    Worker processes split and tokenise batches (one tokenizer call per batch); the main process
    reads ahead, decides which documents are held out, and appends finished batches in source
    order, so the files are the same byte for byte whatever the number of workers or the piece
    size. At most two batches per worker are in flight: memory is a few batches per process,
    whatever the corpus's size.
  * Work happens in `{cache}.partial/`; every CHECKPOINT_SECONDS (after a written batch)
    `progress.json` records how far the files are complete (written after the files are synced).
    A rerun after a crash truncates the files to that point and continues from the next
    document (a text stream: from the byte where the files end); the result is identical.
    `{cache}` itself appears only complete (renamed into place after its info.json is written).
  * `{cache}.lock` (an exclusive file lock) makes a second process on the same cache wait for
    the first and then use its result.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import glob
import hashlib
import importlib
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
from typing import Iterator, Optional

import numpy as np

from microrwkv_jax.data import sources, stories

FORMAT_VERSION = 3
CHECKPOINT_SECONDS = 2.0      # how often progress.json records the files' good length
# Each file of a cache, with the progress counter that says how many of its items are good.
STREAM_FILES = {"train.bin": "train_tokens", "val.bin": "val_tokens",
                "train_starts.bin": "train_documents", "val_starts.bin": "val_documents"}
# The data config's defaults for what decides a cache's contents (configs/tiny.py holds the same,
# checked by tests/data/test_prepare.py), for the command line.
DEFAULTS = dict(cache_dir="data_cache", val_fraction=0.02, val_dataset=None, txt_split="stream", text_field="text",
                tfds_data_dir=None, tfds_val_split="validation", num_train_stories=40000, num_val_stories=400,
                story_seed=1234)


def check_source_config(data_cfg, dataset: Optional[str] = None) -> None:
    """One-line errors for data settings no source can use (before any work)."""
    if not 0 < data_cfg.val_fraction < 1:
        raise ValueError(f"data.val_fraction={data_cfg.val_fraction!r}: must be between 0 and 1")
    txt_split = data_cfg.get("txt_split", "stream")
    if txt_split not in sources.TXT_SPLITS:
        raise ValueError(f"data.txt_split={txt_split!r}: expected one of {', '.join(map(repr, sources.TXT_SPLITS))}")
    val_dataset = data_cfg.get("val_dataset")
    if val_dataset is not None and (not isinstance(val_dataset, str) or not val_dataset):
        raise ValueError(f"data.val_dataset={val_dataset!r}: a path or glob of held-out files, or None")
    if val_dataset and dataset is not None and (dataset == "stories" or dataset.startswith("tfds:")):
        raise ValueError(f"data.val_dataset: only for a dataset of local files, not {dataset!r} (it has its own "
                         "held-out part)")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 token files while ids fit, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def fingerprint(dataset: str, data_cfg, tokenizer_name: str) -> str:
    """A hash of what decides the token files: the source (and, for files, their sizes and
    modification times), how it is held out, and the tokenizer."""
    if dataset == "stories":
        keys = ("num_train_stories", "num_val_stories", "story_seed")
    elif dataset.startswith("tfds:"):
        keys = ("text_field", "tfds_data_dir", "tfds_val_split", "val_fraction")
    else:
        keys = ("text_field", "val_fraction", "val_dataset", "txt_split")
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, dataset, tokenizer_name, {k: data_cfg.get(k) for k in keys}],
                                  sort_keys=True, default=str).encode())
    if dataset != "stories" and not dataset.startswith("tfds:"):
        for pattern in filter(None, (dataset, data_cfg.get("val_dataset"))):
            for path in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
                st = os.stat(path)
                h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_path(dataset: str, data_cfg, tokenizer_name: str) -> pathlib.Path:
    return pathlib.Path(data_cfg.cache_dir) / f"{tokenizer_name}-{fingerprint(dataset, data_cfg, tokenizer_name)}"


def is_complete(cache: pathlib.Path) -> bool:
    return (cache / "info.json").is_file()


# --- Tokenising batches ---------------------------------------------------------------------------

def encode_batch(tokenizer, batch, dtype) -> dict:
    """A batch tokenised, as its units (documents, or one piece of a text stream) in order:
    tokens [n] (each document followed by end-of-text; a stream piece's tokens alone) and per
    unit its tokens, bytes and characters of text, and whether a document starts with it."""
    if isinstance(batch, sources.StreamPiece):
        try:
            tokens = np.asarray(tokenizer.encode_stream(batch.data), np.uint32)
        except UnicodeDecodeError as err:
            raise ValueError(f"dataset: {batch.path}: not UTF-8 text (byte {batch.offset + err.start}); the byte "
                             f"tokenizer reads any bytes") from None
        data = np.frombuffer(batch.data, np.uint8)
        unit = lambda value: np.asarray([value], np.int64)
        encoded = dict(tokens=tokens, unit_tokens=unit(tokens.size), unit_bytes=unit(data.size),
                       unit_chars=unit(int(np.count_nonzero(data & 0xC0 != 0x80))),
                       unit_starts=np.asarray([batch.first]), stream=True)
    else:
        documents = sources.batch_documents(batch)
        tokens, lengths = tokenizer.encode_documents(documents)
        encoded = dict(tokens=tokens, unit_tokens=lengths,
                       unit_bytes=np.asarray([len(d.encode("utf-8")) for d in documents], np.int64),
                       unit_chars=np.asarray([len(d) for d in documents], np.int64),
                       unit_starts=np.ones(len(documents), bool), stream=False)
    tokens = encoded["tokens"]
    if tokens.size and int(tokens.max()) >= tokenizer.vocab_size:      # before the cast could wrap it
        raise ValueError(f"tokenizer {tokenizer.name}: produced id {int(tokens.max())} outside its vocabulary")
    encoded["tokens"] = tokens.astype(dtype, copy=False)
    return encoded


# --- The partial cache: files that grow batch by batch, and the record of how far they are good ----

class PartialCache:
    """`{cache}.partial/`: the token and start files, appended batch by batch, and progress.json."""

    def __init__(self, directory: pathlib.Path, dtype):
        self.directory, self.dtype = directory, np.dtype(dtype)
        directory.mkdir(parents=True, exist_ok=True)
        self.state = None
        try:
            self.state = json.loads((directory / "progress.json").read_text())
            if not isinstance(self.state, dict) or self.state.get("dtype") != self.dtype.name:
                self.state = None
        except (OSError, ValueError):     # none yet, or unreadable: start over (the files are cut to 0)
            pass
        if self.state is None:
            # units: the source's documents, or a text stream's bytes, that the files hold
            self.state = {"dtype": self.dtype.name, "units": 0, "advanced": 0,
                          **{f"{part}_{counter}": 0 for part in ("train", "val")
                             for counter in ("tokens", "documents", "bytes", "chars")}}
        # Anything past the recorded sizes was written after the last checkpoint: cut it off.
        self.files, self.last_checkpoint = {}, -float("inf")
        for name, counter in STREAM_FILES.items():
            path = directory / name
            with open(path, "ab"):
                pass
            itemsize = self.dtype.itemsize if counter.endswith("_tokens") else 8      # starts: int64
            os.truncate(path, self.state[counter] * itemsize)
            self.files[name] = open(path, "ab")

    @property
    def resumed(self) -> bool:
        return self.state["units"] > 0

    def append(self, encoded: dict, held: np.ndarray, advanced: int) -> None:
        """Append one batch (`encode_batch`: documents, or a piece of a text stream), each unit to
        the held-out part where `held` says, with their document starts; record the new sizes every
        CHECKPOINT_SECONDS (syncing costs a disk flush; a crash redoes at most that much work)."""
        held_tokens = np.repeat(held, encoded["unit_tokens"])
        for part, mine, mine_tokens in (("train", ~held, ~held_tokens), ("val", held, held_tokens)):
            lengths = encoded["unit_tokens"][mine]
            offsets = self.state[f"{part}_tokens"] + np.cumsum(lengths) - lengths      # int64 [units]
            starts = offsets[encoded["unit_starts"][mine]]
            tokens = encoded["tokens"][mine_tokens]
            self.files[f"{part}.bin"].write(tokens.tobytes())
            self.files[f"{part}_starts.bin"].write(starts.astype(np.int64).tobytes())
            self.state[f"{part}_tokens"] += int(tokens.size)
            self.state[f"{part}_documents"] += int(starts.size)
            self.state[f"{part}_bytes"] += int(encoded["unit_bytes"][mine].sum())
            self.state[f"{part}_chars"] += int(encoded["unit_chars"][mine].sum())
        self.state["units"] += int(encoded["unit_bytes"].sum() if encoded["stream"] else held.size)
        self.state["advanced"] += advanced
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Sync the files, then record how far they are good (progress.json)."""
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
        write_atomically(self.directory / "progress.json", json.dumps(self.state))
        self.last_checkpoint = time.monotonic()

    def finish(self, info: dict, cache: pathlib.Path) -> None:
        """Write info.json and move the directory to `cache` (so it appears complete or not at all)."""
        for f in self.files.values():
            f.close()
        write_atomically(self.directory / "info.json", json.dumps(info, indent=1))
        (self.directory / "progress.json").unlink()
        if cache.exists():        # an incomplete directory under the final name (never written by us)
            shutil.rmtree(cache)
        self.directory.rename(cache)
        sync_directory(cache.parent)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sync_directory(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: pathlib.Path, say):
    """An exclusive lock on `path` (a file lock: released when the process dies)."""
    import fcntl
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process preparing {path.with_suffix('')}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- Preparing a cache -----------------------------------------------------------------------------

def prepare_cache(dataset: str, data_cfg, tokenizer, *, workers: Optional[int] = None,
                  piece_chars: int = sources.PIECE_CHARS, progress: bool = True,
                  say=lambda message: print(message, file=sys.stderr, flush=True)) -> pathlib.Path:
    """Tokenise `dataset` into its cache directory unless it is complete already; returns the
    directory. `workers` processes tokenise (default: every core; see `worker_pool`)."""
    check_source_config(data_cfg, dataset)
    cache = cache_path(dataset, data_cfg, tokenizer.name)
    if is_complete(cache):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache.with_name(cache.name + ".lock"), say):
        if is_complete(cache):            # another process prepared it while this one waited
            return cache
        streams = sources.source_streams(dataset, data_cfg, piece_chars,
                                         getattr(tokenizer, "stream_cut", sources.safe_cut))
        partial = PartialCache(cache.with_name(cache.name + ".partial"), token_dtype(tokenizer.vocab_size))
        try:
            if partial.resumed and progress:
                what = "bytes" if all(stream.text for stream in streams) else "documents"
                say(f"resuming the preparation of {cache} after {partial.state['units']:,} {what}")
            _tokenize_streams(streams, tokenizer, partial, workers or os.cpu_count() or 1, progress)
            partial.checkpoint()          # every file complete on disk before info.json is made from them
            partial.finish(_info(dataset, data_cfg, tokenizer, partial, streams), cache)
        except ValueError:       # the source is unusable as it is: nothing to resume
            partial.close()
            shutil.rmtree(partial.directory, ignore_errors=True)
            raise
        finally:
            partial.close()
    return cache


_worker_tokenizer = None     # the tokenizer of this process, when it is a worker of `worker_pool`


def _set_worker_tokenizer(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(batch, dtype) -> dict:
    return encode_batch(_worker_tokenizer, batch, dtype)


def worker_pool(tokenizer, workers: int) -> concurrent.futures.Executor:
    """Where batches are tokenised: one thread beside the main one for `workers` = 1 (reading and
    writing overlap tokenising), else `workers` processes (started fresh, each with a copy of
    the tokenizer). Processes, not threads: tokenizer calls from several threads of one process
    scaled poorly here (on 2 cores, two threads were at times slower than one; BENCHMARKS.md)."""
    if workers == 1:
        _set_worker_tokenizer(tokenizer)
        return concurrent.futures.ThreadPoolExecutor(1)
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_set_worker_tokenizer, initargs=(tokenizer,))


def _batches_after(streams: list, skip: int, counted: list) -> Iterator[tuple]:
    """(stream number, batch) for every batch of `streams` in order, after their first `skip`
    units, documents or a text stream's bytes (resuming: those are in the files already;
    `counted[s]` gets how many documents of stream s were skipped). Only skipped batches are split
    here; the others are split by the workers. A text stream resumes at the byte where the files
    end, which was a cut of the pieces before, whatever the piece size now."""
    for number, stream in enumerate(streams):
        for batch in stream.batches():
            if skip and isinstance(batch, sources.StreamPiece):
                taken = min(skip, len(batch.data))
                skip -= taken
                if taken == len(batch.data):
                    continue
                batch = sources.StreamPiece(batch.data[taken:], batch.path, batch.offset + taken,
                                            batch.first and not taken)
            if skip:
                documents = sources.batch_documents(batch)
                taken = min(skip, len(documents))
                skip -= taken
                counted[number] += taken
                batch = documents[taken:]
                if not batch:
                    continue
            yield number, batch
    if skip:
        raise ValueError("the source has fewer documents than its partial cache records; delete the .partial directory")


def _tokenize_streams(streams: list, tokenizer, partial: PartialCache, workers: int, progress: bool) -> None:
    from tqdm import tqdm
    unit = streams[0].unit
    bar = tqdm(total=sum(s.size for s in streams), initial=partial.state["advanced"], unit=unit,
               unit_scale=True, unit_divisor=1024 if unit == "B" else 1000, disable=not progress,
               desc="preparing", leave=False, dynamic_ncols=True)
    counted = [0] * len(streams)           # documents of each stream in the files so far (for the hold-out)
    started, tokens_done = time.perf_counter(), 0
    with worker_pool(tokenizer, workers) as pool:
        in_flight = []        # (future, stream number, characters) in source order; at most 2 per worker

        def write_oldest():
            nonlocal tokens_done
            future, number, chars = in_flight.pop(0)
            encoded = future.result()
            units = encoded["unit_tokens"].size        # documents, or one piece of a text stream
            held = streams[number].held_out(counted[number], units)
            counted[number] += units
            advance = chars if unit == "B" else units
            partial.append(encoded, held, advance)
            tokens_done += encoded["tokens"].size
            bar.update(advance)
            bar.set_postfix_str(f"{tokens_done / max(time.perf_counter() - started, 1e-9) / 1e6:.2f}M tokens/s")

        for number, batch in _batches_after(streams, partial.state["units"], counted):
            in_flight.append((pool.submit(_encode_in_worker, batch, partial.dtype), number,
                              sources.batch_chars(batch)))
            if len(in_flight) >= 2 * workers:
                write_oldest()
        while in_flight:
            write_oldest()
    bar.close()


def _info(dataset: str, data_cfg, tokenizer, partial: PartialCache, streams: list) -> dict:
    state = partial.state
    if state["train_tokens"] + state["val_tokens"] == 0:
        raise ValueError(f"dataset: {dataset!r} holds no text")
    if state["train_tokens"] == 0 or state["val_tokens"] == 0:
        what = "bytes" if all(stream.text for stream in streams) else "documents"
        fix = ("give the held-out text as data.val_dataset" if data_cfg.get("val_dataset") is None
               else "check data.val_dataset")
        raise ValueError(f"dataset: {dataset!r} gives {state[f'train_{what}']:,} training and "
                         f"{state[f'val_{what}']:,} held-out {what} (data.val_fraction={data_cfg.val_fraction}); "
                         f"need some of each: raise data.val_fraction, use more text or {fix}")
    info = {"format": FORMAT_VERSION, "dataset": dataset, "tokenizer": tokenizer.name, "dtype": partial.dtype.name,
            "text_stream": all(stream.text for stream in streams),
            **{f"{part}_{counter}": state[f"{part}_{counter}"] for counter in ("tokens", "documents", "bytes", "chars")
               for part in ("train", "val")}}
    if dataset == "stories":      # the held-out stories' exact log-probabilities give the floor
        texts, logps = sources.held_out_stories(data_cfg.num_val_stories, data_cfg.story_seed)
        starts = np.fromfile(partial.directory / "val_starts.bin", np.int64)
        lengths = np.diff(np.append(starts, state["val_tokens"]))    # tokens incl. each end-of-text
        info["entropy_floor"] = stories.entropy_floor(texts, logps, lengths)
        info["val_doc_nats"] = [-float(x) for x in logps]
    return info


# --- Command line ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    """Prepare a dataset's token cache (what train.py would prepare on first use), with progress."""
    p = argparse.ArgumentParser(prog="python -m microrwkv_jax.data.prepare", description=main.__doc__)
    p.add_argument("--dataset", required=True, help="stories, tfds:NAME or a path/glob of .txt/.jsonl/.parquet files")
    p.add_argument("--tokenizer", default="byte", help="byte, gpt2 or a tokenizer.json path (default: byte)")
    p.add_argument("--workers", type=int, default=None, help="tokenising processes (default: every core)")
    p.add_argument("--piece_mb", type=float, default=sources.PIECE_CHARS / 2 ** 20,
                   help="text per batch, in MiB (memory: a few batches per worker)")
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key}", default=value, type=type(value) if value is not None else str,
                       help=f"as the config's data.{key} (default: {value})")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print(f"prepare: error: --workers={args.workers}: must be >= 1", file=sys.stderr)
        return 1
    if not args.piece_mb > 0:
        print(f"prepare: error: --piece_mb={args.piece_mb}: must be > 0", file=sys.stderr)
        return 1
    from microrwkv_jax.data.tokenizers import get_tokenizer
    data_cfg = {key: getattr(args, key) for key in DEFAULTS}
    started = time.perf_counter()
    try:
        tokenizer = get_tokenizer(args.tokenizer)
        cache = prepare_cache(args.dataset, _Fields(data_cfg), tokenizer, workers=args.workers,
                              piece_chars=max(1, int(args.piece_mb * 2 ** 20)))
    except (ValueError, OSError) as err:
        print(f"prepare: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    info = json.loads((cache / "info.json").read_text())
    print(f"{cache}: {info['train_tokens']:,} training tokens ({info['train_documents']:,} documents), "
          f"{info['val_tokens']:,} held out ({info['val_documents']:,} documents), {info['dtype']}; "
          f"{time.perf_counter() - started:.1f} s")
    return 0


class _Fields(dict):
    """A dict whose keys read as attributes too, like the config's data section."""
    __getattr__ = dict.__getitem__


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy's: the worker processes find the
    # functions it sends them under the module's own name.
    sys.exit(importlib.import_module("microrwkv_jax.data.prepare").main())
