"""Tokenizers: `byte` (UTF-8 bytes, no files), `gpt2` (tiktoken's BPE, offline from its cache),
`world` (BlinkDL's RWKV World tokenizer, for RWKV-5/6/7) and any Hugging Face `tokenizer.json`
given by path (e.g. GPT-NeoX-20B's, for the RWKV-4 Pile models), through the `tokenizers` library.

`world` is greedy longest-match over the bytes of `rwkv_vocab_v20230424.txt` (65,529 tokens of
1 to 128 bytes; id 0 is end-of-text), encoded by `pyrwkv-tokenizer` (Rust; the same ids as
BlinkDL's `rwkv` package, tested) and decoded here. Its vocabulary file is the one bundled with
`pyrwkv-tokenizer`, or $MICRORWKV_WORLD_VOCAB, or any path ending in `.txt` given as the tokenizer.

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


WORLD_VOCAB = "rwkv_vocab_v20230424.txt"
WORLD_VOCAB_VARIABLE = "MICRORWKV_WORLD_VOCAB"


def world_vocab_path() -> pathlib.Path:
    """The World vocabulary: $MICRORWKV_WORLD_VOCAB, else the file pyrwkv-tokenizer bundles, else
    the one in BlinkDL's `rwkv` package."""
    named = os.environ.get(WORLD_VOCAB_VARIABLE)
    if named:
        return pathlib.Path(named)
    import importlib.util
    for package in ("pyrwkv_tokenizer", "rwkv"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            candidate = pathlib.Path(list(spec.submodule_search_locations)[0]) / WORLD_VOCAB
            if candidate.is_file():
                return candidate
    raise ValueError(f"tokenizer 'world': no {WORLD_VOCAB} found; install pyrwkv-tokenizer or set {WORLD_VOCAB_VARIABLE}")


def read_world_vocab(path) -> list:
    """The tokens of a World vocabulary file as bytes, by id (id 0, end-of-text, is b""). Each line
    is `id repr(token) byte-length`; the repr is read as a literal (never evaluated as code), and a
    line that does not parse, a repeated id or token, or a wrong length is refused naming the line."""
    import ast
    path = pathlib.Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"tokenizer {path}: not a readable World vocabulary ({type(err).__name__})") from None
    by_id, seen = {0: b""}, set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            first, last = line.index(" "), line.rindex(" ")
            index, length = int(line[:first]), int(line[last:])
            token = ast.literal_eval(line[first:last].strip())
            token = token.encode("utf-8") if isinstance(token, str) else token
            ok = isinstance(token, bytes) and len(token) == length and 0 < index < WorldTokenizer.vocab_size
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            ok = False
        if not ok or index in by_id or token in seen:
            raise ValueError(f"tokenizer {path}: line {number} is not `id repr(token) length` of a new "
                             "token: not a World vocabulary")
        by_id[index] = token
        seen.add(token)
    tokens = [b""] * (max(by_id) + 1)
    for index, token in by_id.items():
        tokens[index] = token
    return tokens


def utf8_prefix(data: bytes) -> bytes:
    """`data` without a UTF-8 character its last (up to 3) bytes begin but do not finish."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:                            # a lead byte: complete only if its length fits
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if need <= back else data[:-back]
    return data


def _rust_world_tokenizer(path: str):
    from pyrwkv_tokenizer import WorldTokenizer as RustWorldTokenizer
    try:
        return RustWorldTokenizer(path)
    except Exception as err:        # (a Rust panic is a BaseException of its own: let it through loudly)
        raise ValueError(f"tokenizer {path}: pyrwkv-tokenizer cannot read it ({type(err).__name__})") from None


class WorldTokenizer:
    """BlinkDL's RWKV World tokenizer: greedy longest match over bytes; 65,536 ids (65,530 used),
    end-of-text 0. Text is encoded by pyrwkv-tokenizer; bytes that are not UTF-8 by the same
    greedy rule here; decoding is here (the Rust decoder panics on ids that end mid-character)."""

    vocab_size = 65536
    eot_id = 0

    def __init__(self, path=None):
        path = pathlib.Path(path) if path else world_vocab_path()
        self.tokens = read_world_vocab(path)
        self.token_bytes = np.asarray([len(t) for t in self.tokens], np.int64)      # by id
        self.max_token_bytes = int(self.token_bytes.max())
        digest = hashlib.sha256(b"\0".join(self.tokens)).hexdigest()[:12]
        self.path, self.name = str(path), "world" if digest == WORLD_DIGEST else f"world-{digest}"
        self.fast = _rust_world_tokenizer(self.path)
        self._ids, self._prefixes = None, None

    def __getstate__(self):      # to worker processes: the Rust tokenizer is rebuilt there, not pickled
        return {k: v for k, v in self.__dict__.items() if k not in ("fast", "_ids", "_prefixes")}

    def __setstate__(self, state):
        self.__dict__.update(state, _ids=None, _prefixes=None)
        self.fast = _rust_world_tokenizer(self.path)

    def encode(self, text: str) -> list:
        return self.fast.encode(text)

    def encode_documents(self, texts: list) -> tuple:
        """(uint32 tokens of `texts`, each followed by end-of-text; their lengths)."""
        return join_documents([np.asarray(ids, np.uint32) for ids in self.fast.encode_batch(texts)], self.eot_id)

    def encode_bytes(self, data: bytes) -> list:
        """Greedy longest match over any bytes (valid UTF-8 or not), in Python: what BlinkDL's
        TRIE_TOKENIZER.encodeBytes gives."""
        if self._ids is None:
            self._ids = {token: i for i, token in enumerate(self.tokens) if token}
            self._prefixes = {token[:n] for token in self._ids for n in range(1, len(token) + 1)}
        ids, prefixes, out, at = self._ids, self._prefixes, [], 0
        while at < len(data):
            best, end = at + 1, at + 1
            while end <= len(data) and data[at:end] in prefixes:
                if data[at:end] in ids:
                    best = end
                end += 1
            out.append(ids[data[at:best]])
            at = best
        return out

    def encode_stream(self, data: bytes) -> np.ndarray:
        """Tokens of a piece of a text stream: every byte as it is, valid UTF-8 or not."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return np.asarray(self.encode_bytes(data), np.uint32)
        return np.asarray(self.fast.encode(text), np.uint32)

    def stream_cut(self, buffer: bytes) -> int:
        """Where a stream's `buffer` (starting at a token boundary) can be cut so that tokenising
        both sides apart gives the tokens of the whole, late in it, or -1: the start of the last
        token that begins at least `max_token_bytes` before the buffer's end. Greedy longest match
        decides a token from the next max_token_bytes bytes only, so every token before it is final."""
        whole = utf8_prefix(buffer)                 # (a character cut at the end is left out)
        usable = len(whole) - self.max_token_bytes
        if usable <= 0:
            return -1
        ends = np.cumsum(self.token_bytes[self.encode_stream(whole)])   # where each token ends
        starts = ends[ends <= usable]
        return int(starts[-1]) if starts.size else -1

    def decode_bytes(self, tokens) -> bytes:
        """The bytes of `tokens` (end-of-text and ids outside the vocabulary dropped)."""
        ids = tokens if isinstance(tokens, list) else np.asarray(tokens, np.int64).reshape(-1).tolist()
        if ids and not (min(ids) >= 0 and max(ids) < len(self.tokens)):
            ids = [i for i in ids if 0 <= i < len(self.tokens)]
        return b"".join(map(self.tokens.__getitem__, ids))         # (end-of-text, id 0, is b"")

    def decode(self, tokens) -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")


# sha256 of the standard vocabulary's tokens (b"\0".join by id): the file from BlinkDL's rwkv package,
# pyrwkv-tokenizer's copy (LF line ends) and the CRLF one read the same.
WORLD_DIGEST = "72bdf50043ab"

TOKENIZER_CLASSES = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer, "world": WorldTokenizer}
TOKENIZERS = tuple(TOKENIZER_CLASSES)


def is_tokenizer_file(name: str) -> bool:
    return name.endswith((".json", ".txt"))


def tokenizer_class(name: str) -> type:
    """A built-in tokenizer's class: its `vocab_size` and `eot_id` without loading any file."""
    if name not in TOKENIZER_CLASSES:
        raise ValueError(f"tokenizer: unknown tokenizer {name!r}; expected one of {TOKENIZERS}, a tokenizer.json "
                         "or a World vocabulary .txt path")
    return TOKENIZER_CLASSES[name]


def tokenizer_vocab_size(name: str) -> int:
    """The vocabulary of a tokenizer, loading only a tokenizer.json (never a download)."""
    if name.endswith(".txt"):
        return WorldTokenizer.vocab_size
    return JSONTokenizer(name).vocab_size if is_tokenizer_file(name) else tokenizer_class(name).vocab_size


def get_tokenizer(name: str):
    """A tokenizer by name: built-in, a tokenizer.json path, or a World vocabulary (.txt) path."""
    if name.endswith(".txt"):
        return WorldTokenizer(name)
    return JSONTokenizer(name) if is_tokenizer_file(name) else tokenizer_class(name)()
