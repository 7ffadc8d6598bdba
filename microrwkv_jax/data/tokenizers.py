"""Tokenizers: `byte` (UTF-8 bytes, no files), `gpt2` (tiktoken's BPE, offline from its cache) and
any Hugging Face `tokenizer.json` given by path (e.g. GPT-NeoX-20B's, for the RWKV-4 Pile
models), through the `tokenizers` library.

`gpt2` is tiktoken's `r50k_base` encoding (the same ranks as `gpt2`). Offline, put its BPE
file into a directory under the name tiktoken caches it by, and point TIKTOKEN_CACHE_DIR there;
or set MICRORWKV_GPT2_BPE to the file's path:

    mkdir -p ~/.cache/tiktoken && cp gpt2.tiktoken ~/.cache/tiktoken/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4
    export TIKTOKEN_CACHE_DIR=~/.cache/tiktoken
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TEXT = "<|endoftext|>"


def join_documents(arrays: list, eot_id: int) -> tuple:
    """Documents' token arrays as one uint32 stream, each followed by end-of-text, and the
    documents' lengths (end-of-text included), int64."""
    lengths = np.asarray([a.size + 1 for a in arrays], np.int64)
    tokens = np.empty(int(lengths.sum()), np.uint32)
    is_text = np.ones(tokens.size, bool)
    is_text[np.cumsum(lengths) - 1] = False                 # each document's end-of-text slot
    tokens[is_text] = np.concatenate(arrays) if arrays else np.zeros((0,), np.uint32)
    tokens[~is_text] = eot_id
    return tokens, lengths


class ByteTokenizer:
    """UTF-8 bytes 0..255 and end-of-text 256."""

    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list:
        return list(text.encode("utf-8"))

    def encode_documents(self, texts: list) -> tuple:
        """(uint32 tokens of `texts`, each followed by end-of-text; their lengths): what data
        preparation writes."""
        return join_documents([np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts], self.eot_id)

    def encode_stream(self, data: bytes) -> np.ndarray:
        """Tokens of a piece of a text stream (no end-of-text): every byte as it is, valid UTF-8 or not."""
        return np.frombuffer(data, np.uint8).astype(np.uint32)

    def decode(self, tokens) -> str:
        return bytes(int(t) for t in tokens if 0 <= int(t) < 256).decode("utf-8", errors="replace")


class GPT2Tokenizer:
    """tiktoken's GPT-2 BPE: 50257 tokens, end-of-text 50256."""

    name = "gpt2"
    vocab_size = 50257
    eot_id = 50256

    def __init__(self):
        import tiktoken
        path = os.environ.get("MICRORWKV_GPT2_BPE")
        if path:
            from tiktoken.load import load_tiktoken_bpe
            self.enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(path),
                                         special_tokens={"<|endoftext|>": 50256})
        else:
            try:
                # r50k_base has GPT-2's ranks and is read from one cacheable file (gpt2 needs two).
                self.enc = tiktoken.get_encoding("r50k_base")
            except Exception as err:   # tiktoken raises assorted network errors offline
                raise ValueError("tokenizer 'gpt2': tiktoken could not load its BPE file (offline?); set "
                                 "TIKTOKEN_CACHE_DIR or MICRORWKV_GPT2_BPE as the README describes") from err

    def encode(self, text: str) -> list:
        return self.enc.encode_ordinary(text)

    def encode_documents(self, texts: list) -> tuple:
        """(uint32 tokens of `texts`, each `encode`d and followed by end-of-text; their lengths).

        One tiktoken call for all of them: the texts joined by <|endoftext|>, encoded with that
        special token allowed, which tiktoken encodes between as it would each text alone. One
        long call costs far less than many short ones, returns an array (no Python list) and
        lets other threads run while it works. A text containing <|endoftext|> itself (as text,
        which `encode` keeps) is encoded alone."""
        if any(EOT_TEXT in t for t in texts):
            return join_documents([self.enc.encode_to_numpy(t, allowed_special=set(), disallowed_special=())
                                   for t in texts], self.eot_id)
        tokens = self.enc.encode_to_numpy(EOT_TEXT.join(texts) + EOT_TEXT, allowed_special={EOT_TEXT},
                                          disallowed_special=()) if texts else np.zeros((0,), np.uint32)
        ends = np.flatnonzero(tokens == self.eot_id)
        assert ends.size == len(texts), "tiktoken split the documents differently"
        return tokens, np.diff(ends, prepend=-1).astype(np.int64)

    def encode_stream(self, data: bytes) -> np.ndarray:
        """Tokens of a piece of a UTF-8 text stream (UnicodeDecodeError if it is not): `encode`'s,
        with <|endoftext|> in the text encoded as text."""
        return self.enc.encode_to_numpy(data.decode("utf-8"), allowed_special=set(), disallowed_special=())

    def decode(self, tokens) -> str:
        return self.enc.decode([int(t) for t in tokens if 0 <= int(t) < self.eot_id])


class JSONTokenizer:
    """A Hugging Face `tokenizer.json`, by path. Its end-of-text is the `<|endoftext|>` token; its
    name (which names data caches) carries a hash of the file, so an edited file is a new tokenizer."""

    def __init__(self, path):
        from tokenizers import Tokenizer
        path = pathlib.Path(path)
        try:
            data = path.read_bytes()
            self.tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as err:      # OSError, UnicodeDecodeError, the library's own parse errors
            raise ValueError(f"tokenizer {path}: not a readable tokenizer.json ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
        self.path, self.name = str(path), f"json-{hashlib.sha256(data).hexdigest()[:12]}"
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = self.tokenizer.token_to_id("<|endoftext|>")
        if self.eot_id is None:
            raise ValueError(f"tokenizer {path}: has no <|endoftext|> token to end documents with")

    def encode(self, text: str) -> list:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_documents(self, texts: list) -> tuple:
        """(uint32 tokens of `texts`, each followed by end-of-text; their lengths), encoded as a
        batch (the library's threads)."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return join_documents([np.asarray(e.ids, np.uint32) for e in encodings], self.eot_id)

    def encode_stream(self, data: bytes) -> np.ndarray:
        """Tokens of a piece of a UTF-8 text stream (UnicodeDecodeError if it is not)."""
        return np.asarray(self.encode(data.decode("utf-8")), np.uint32)

    def decode(self, tokens) -> str:
        return self.tokenizer.decode([int(t) for t in tokens if 0 <= int(t) < self.vocab_size and int(t) != self.eot_id])


TOKENIZER_CLASSES = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer}
TOKENIZERS = tuple(TOKENIZER_CLASSES)


def is_tokenizer_file(name: str) -> bool:
    return name.endswith(".json")


def tokenizer_class(name: str) -> type:
    """A built-in tokenizer's class: its `vocab_size` and `eot_id` without loading any file."""
    if name not in TOKENIZER_CLASSES:
        raise ValueError(f"tokenizer: unknown tokenizer {name!r}; expected one of {TOKENIZERS} or a tokenizer.json path")
    return TOKENIZER_CLASSES[name]


def tokenizer_vocab_size(name: str) -> int:
    """The vocabulary of a tokenizer, loading only a tokenizer.json (never a download)."""
    return JSONTokenizer(name).vocab_size if is_tokenizer_file(name) else tokenizer_class(name).vocab_size


def get_tokenizer(name: str):
    return JSONTokenizer(name) if is_tokenizer_file(name) else tokenizer_class(name)()
