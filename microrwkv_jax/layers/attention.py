"""Causal self-attention with rotary positions, grouped key/value heads and an optional window.

One module serves both attention sub-layers of the hybrid block:
  * sliding-window attention (SWA): n_kv_head = n_head, window W;
  * grouped-query attention (GQA): n_kv_head < n_head, global or windowed.

Training (`causal_attention`) uses cuDNN's fused kernel on GPUs in bf16/fp16. Elsewhere XLA's
`jax.nn.dot_product_attention` computes all T x T scores and masks them, so the work the mask
throws away is skipped by cutting the queries into blocks: with a window W < T/2 each block of
W queries attends to its own and the previous block of keys (2W scores per query); otherwise
each query block attends to the keys up to its own end (about 60% of the T x T scores).

Decoding keeps a key/value cache of S slots: a ring buffer (slot = position % S) with S =
window for windowed attention, or S = the longest sequence to be generated for global
attention, so memory and time per token stay bounded by S.
"""

from __future__ import annotations

import warnings
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from microrwkv_jax.layers.linears import STD, linear


def rotary_embedding(x, positions, base: float):
    """Rotate channel pairs (i, i + N/2) of x [B, T, H, N] by angle position * base^(-2i/N)."""
    n = x.shape[-1]
    inv_freq = base ** (-jnp.arange(0, n // 2, dtype=jnp.float32) * 2 / n)
    angle = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]      # [T, N/2]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def cache_slot_positions(num_tokens_before, num_slots: int):
    """Position held by each ring-buffer slot after `num_tokens_before` tokens were written
    (slot s holds the latest position p < num_tokens_before with p % num_slots == s; -1 if none)."""
    last = num_tokens_before - 1
    p = last - jnp.mod(last - jnp.arange(num_slots), num_slots)
    return jnp.where(p >= 0, p, -1)


def windowed_attention(q, k, v, window: int):
    """Causal attention to the last `window` positions (itself included), computed in blocks.

    q [B, T, Hq, N], k and v [B, T, Hkv, N] -> [B, T, Hq, N]. Queries are cut into blocks of
    `window` positions; block i attends to key blocks i - 1 and i (a zero block before the
    first), under the mask 0 <= query position - key position < window."""
    b, t, hq, n = q.shape
    hkv = k.shape[2]
    num_blocks = -(-t // window)
    pad = num_blocks * window - t
    query_blocks = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b * num_blocks, window, hq, n)

    def key_blocks(a):     # [B * num_blocks, 2W, Hkv, N]: the previous block, then the block itself
        a = jnp.pad(a, ((0, 0), (window, pad), (0, 0), (0, 0))).reshape(b, num_blocks + 1, window, hkv, n)
        return jnp.concatenate([a[:, :-1], a[:, 1:]], axis=2).reshape(b * num_blocks, 2 * window, hkv, n)

    lag = jnp.arange(window)[:, None] + window - jnp.arange(2 * window)[None, :]     # query - key position
    in_window = (lag >= 0) & (lag < window)                                          # [W, 2W]
    not_before_start = (jnp.arange(num_blocks)[:, None, None] > 0) | (jnp.arange(2 * window) >= window)
    mask = jnp.broadcast_to(in_window & not_before_start, (b, num_blocks, window, 2 * window))
    y = jax.nn.dot_product_attention(query_blocks, key_blocks(k), key_blocks(v),
                                     mask=mask.reshape(b * num_blocks, 1, window, 2 * window))
    return y.reshape(b, num_blocks * window, hq, n)[:, :t]


def prefix_blocks_attention(q, k, v, window: Optional[int], num_blocks: int):
    """Causal attention (to the last `window` positions, or all) with the queries cut into
    `num_blocks` blocks, each attending only to the keys up to its own end: (n + 1) / 2n of the
    T x T scores. q [B, T, Hq, N], k and v [B, T, Hkv, N] -> [B, T, Hq, N]."""
    t = q.shape[1]
    bounds = [round(i * t / num_blocks) for i in range(num_blocks + 1)]
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        lag = jnp.arange(start, end)[:, None] - jnp.arange(end)[None, :]     # query - key position
        mask = (lag >= 0) if window is None else (lag >= 0) & (lag < window)
        outputs.append(jax.nn.dot_product_attention(q[:, start:end], k[:, :end], v[:, :end],
                                                    mask=mask[None, None]))
    return jnp.concatenate(outputs, axis=1)


def causal_attention(q, k, v, window: Optional[int]):
    """Causal (optionally windowed) attention for training: q [B, T, Hq, N], k and v
    [B, T, Hkv, N] -> [B, T, Hq, N]."""
    t = q.shape[1]
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(
                q, k, v, is_causal=True, implementation="cudnn",
                local_window_size=None if window is None or window >= t else (window - 1, 0))
        except (NotImplementedError, ValueError, RuntimeError) as err:   # shapes or a cuDNN it does not take
            warnings.warn(f"cuDNN attention unavailable ({err}); using XLA's attention", stacklevel=2)
    if window is not None and 2 * window < t:
        return windowed_attention(q, k, v, window)
    # Up to 6 blocks of at least 64 queries: more blocks skip little more and cost more kernels.
    return prefix_blocks_attention(q, k, v, window, num_blocks=max(1, min(6, t // 64)))


class CausalSelfAttention(nnx.Module):
    """Causal multi-head attention with `n_kv_head` key/value heads and an optional window.

    One fused projection gives [q heads | k heads | v heads] (GPT-2's `c_attn` layout);
    rope_base=None leaves positions to the model (GPT-2's learned position embedding)."""

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, window: Optional[int], n_layer: int,
                 *, rngs: nnx.Rngs, rope_base: Optional[float] = 10000.0, bias: bool = False, dtype=jnp.float32):
        self.n_head, self.n_kv_head, self.head_size = n_head, n_kv_head, n_embd // n_head
        self.window, self.rope_base = window, rope_base
        self.qkv = linear(n_embd, (n_head + 2 * n_kv_head) * self.head_size, rngs=rngs, bias=bias, dtype=dtype)
        self.proj = linear(n_embd, n_embd, rngs=rngs, bias=bias, dtype=dtype, std=STD / (2 * n_layer) ** 0.5)

    def init_state(self, batch: int, max_len: int, dtype=jnp.float32):
        """An empty cache: S = min(window, max_len) slots (max_len for global attention)."""
        slots = max_len if self.window is None else min(self.window, max_len)
        shape = (batch, slots, self.n_kv_head, self.head_size)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def __call__(self, x, *, start=0, state=None):
        """x: [B, T, C]; start: position of x[:, 0] (int or traced scalar); state: a cache from
        `init_state` holding the `start` tokens before x, or None for a fresh sequence.
        Returns (out [B, T, C], new cache or None, no aux)."""
        b, t, _ = x.shape
        n, hq, hkv = self.head_size, self.n_head, self.n_kv_head
        q, k, v = jnp.split(self.qkv(x).reshape(b, t, hq + 2 * hkv, n), [hq, hq + hkv], axis=2)
        if self.rope_base is not None:
            positions = start + jnp.arange(t)
            q = rotary_embedding(q, positions, self.rope_base)
            k = rotary_embedding(k, positions, self.rope_base)
        if state is None:
            y, new_state = causal_attention(q, k, v, self.window), None
        else:
            y, new_state = self._attend_with_cache(q, k, v, start, state)
        return self.proj(y.reshape(b, t, hq * n)), new_state, {}

    def _attend_with_cache(self, q, k, v, start, state):
        """Attend from x's queries to the cached keys and x's own keys, then write x's keys."""
        t, slots = q.shape[1], state["k"].shape[1]
        positions = start + jnp.arange(t)
        key_positions = jnp.concatenate([cache_slot_positions(start, slots), positions])
        lag = positions[:, None] - key_positions[None, :]                  # [T, S + T]
        window = slots if self.window is None else self.window
        mask = (key_positions[None, :] >= 0) & (lag >= 0) & (lag < window)
        keys = jnp.concatenate([state["k"], k.astype(state["k"].dtype)], axis=1)
        values = jnp.concatenate([state["v"], v.astype(state["v"].dtype)], axis=1)
        y = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype),
                                         mask=mask[None, None])
        # Only the last `slots` new keys survive in the ring buffer.
        keep = min(t, slots)
        write = jnp.mod(positions[t - keep:], slots)
        new_state = {"k": state["k"].at[:, write].set(k[:, t - keep:].astype(state["k"].dtype)),
                     "v": state["v"].at[:, write].set(v[:, t - keep:].astype(state["v"].dtype))}
        return y, new_state
