"""Scoring a held-out text honestly: every held-out token is scored exactly once, and the score is
reported per token, per byte and per character of the text, so that models with other
tokenizers (nanoGPT's characters, our bytes, BPE) compare on the same text.

The held-out stream is end-of-text followed by the held-out tokens (`held_out_stream`): the
end-of-text is the context of the first token, so every held-out token, the first included, is a
target. Two scores of it:

  * the full-context score: each token predicted from everything before it in the held-out
    text. A model whose state has a constant size and no position (`Family.stateful_score`: pure
    RWKV) carries its state through the whole text (`score_carrying_state`); an attention model
    reads overlapping windows of `block` tokens, each scoring only its last `stride` targets, so
    that every token but the first `block` has at least `block - stride` tokens of context
    (`Windows(..., stride=block // 2)`);
  * the window score nanoGPT reports: the text cut into consecutive windows of `block` tokens, each
    read from its own start (`Windows(..., stride=block)`), every position counted: the loss
    averaged over all positions of `block`-token windows.

Nothing here knows a model: `Windows` makes the batches, the caller scores them (our eval step,
or nanoGPT's model in `bench.py text`).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np


def held_out_stream(val_tokens: np.ndarray, eot_id: int) -> np.ndarray:
    """int32 [1 + n]: end-of-text, then the held-out tokens (whose targets are all n of them)."""
    return np.concatenate([np.asarray([eot_id], np.int32), np.asarray(val_tokens, np.int32)])


class Windows:
    """Windows of `block` tokens over a token stream [N] whose targets are stream[1:] (N - 1 of
    them): window i reads stream[starts[i] : starts[i] + block] and scores the targets at its
    positions >= first[i], so that each target is scored by exactly one window. Consecutive
    windows start `stride` apart (stride <= block); the last is moved back to end with the stream,
    scoring only what is left."""

    def __init__(self, stream: np.ndarray, block: int, stride: int):
        if not 1 <= stride <= block:
            raise ValueError(f"stride={stride}: must be between 1 and block={block}")
        self.stream, self.block, self.stride = np.asarray(stream, np.int32), block, stride
        self.starts, self.first = self.plan(self.stream.size, block, stride)

    @staticmethod
    def plan(num_tokens: int, block: int, stride: int) -> tuple:
        """(starts int64 [W], first scored position int64 [W]) covering targets 1 .. num_tokens - 1."""
        last_target = num_tokens - 1
        starts, first, covered, start = [], [], 0, 0
        while covered < last_target:
            if start + block > last_target:          # the last window ends with the stream
                start = max(0, min(start, last_target - block))
            starts.append(start)
            first.append(covered - start)
            covered = min(start + block, last_target)
            start += stride
        return np.asarray(starts, np.int64), np.asarray(first, np.int64)

    def __len__(self) -> int:
        return int(self.starts.size)

    @property
    def num_targets(self) -> int:
        return int(self.stream.size - 1)

    def batch(self, rows: slice) -> tuple:
        """(inputs int32 [R, block], targets int32 [R, block] with -1 where not scored) of windows `rows`."""
        starts, first = self.starts[rows], self.first[rows]
        index = starts[:, None] + np.arange(self.block + 1)[None, :]               # [R, block + 1]
        inside = index < self.stream.size
        tokens = np.where(inside, self.stream[np.minimum(index, self.stream.size - 1)], self.stream[0])
        targets = np.where(inside[:, 1:] & (np.arange(self.block)[None, :] >= first[:, None]), tokens[:, 1:], -1)
        return tokens[:, :-1].astype(np.int32), targets.astype(np.int32)

    def batches(self, batch_size: int, limit: int = None) -> Iterator[tuple]:
        """(inputs, targets) of `batch_size` windows at a time, the last padded with unscored rows;
        the first `limit` windows only, if given."""
        count = len(self) if limit is None else min(limit, len(self))
        for i in range(0, count, batch_size):
            inputs, targets = self.batch(slice(i, min(i + batch_size, count)))
            pad = batch_size - inputs.shape[0]
            if pad:
                inputs = np.concatenate([inputs, np.full((pad, self.block), self.stream[0], np.int32)])
                targets = np.concatenate([targets, np.full((pad, self.block), -1, np.int32)])
            yield inputs, targets


def score_carrying_state(score_piece: Callable, init_state, stream: np.ndarray, piece: int) -> tuple:
    """(nats, targets scored) of a stream [N] scored by a model that carries its state:
    `score_piece(state, inputs [1, piece], targets [1, piece]) -> (nats, count, new state)` is
    called on consecutive pieces (the last padded with unscored targets)."""
    stream = np.asarray(stream, np.int32)
    state, nats, count = init_state, 0.0, 0
    for start in range(0, stream.size - 1, piece):
        inputs = stream[start:start + piece]
        targets = stream[start + 1:start + piece + 1]
        pad = piece - inputs.size
        inputs = np.concatenate([inputs, np.full(pad, stream[0], np.int32)])[None]
        targets = np.concatenate([targets, np.full(piece - targets.size, -1, np.int32)])[None]
        piece_nats, piece_count, state = score_piece(state, inputs, targets)
        nats += float(piece_nats)
        count += int(piece_count)
    return nats, count


def score_record(name: str, nats: float, tokens: int, text_bytes: int, text_chars: int) -> dict:
    """A score in every unit: {name}_nats_per_token, _nats_per_byte, _bits_per_byte, _nats_per_char."""
    return {f"{name}_nats_per_token": nats / max(tokens, 1), f"{name}_nats_per_byte": nats / max(text_bytes, 1),
            f"{name}_bits_per_byte": nats / max(text_bytes, 1) / math.log(2),
            f"{name}_nats_per_char": nats / max(text_chars, 1), f"{name}_tokens": tokens}
