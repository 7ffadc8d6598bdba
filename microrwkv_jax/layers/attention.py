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
attention, so memory stays bounded by S. One token's attention (`cached_attention_one`) reads
only the filled slots, chunk by chunk, so its time grows with the context, not the capacity.
"""

from __future__ import annotations

import warnings
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from microrwkv_jax.layers.linears import STD, linear

# Cache slots per step of the one-token decoding loop: large enough that the loop's per-step
# overhead is small against reading the chunk, small enough that little past the valid end is read.
DECODE_CHUNK = 256


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

    # Logical axes of its parameters, for sharding (microrwkv_jax.sharding).
    PARAM_AXES = {
        "qkv/kernel": ("embed", "heads"),
        "qkv/bias": ("heads",),
        "proj/kernel": ("heads", "embed"),
        "proj/bias": ("embed",),
    }

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, window: Optional[int], n_layer: int,
                 *, rngs: nnx.Rngs, rope_base: Optional[float] = 10000.0, bias: bool = False, dtype=jnp.float32):
        self.n_head, self.n_kv_head, self.head_size = n_head, n_kv_head, n_embd // n_head
        self.window, self.rope_base = window, rope_base
        self.qkv = linear(n_embd, (n_head + 2 * n_kv_head) * self.head_size, rngs=rngs, bias=bias, dtype=dtype)
        self.proj = linear(n_embd, n_embd, rngs=rngs, bias=bias, dtype=dtype, std=STD / (2 * n_layer) ** 0.5)

    def init_state(self, batch: int, max_len: int, dtype=jnp.float32):
        """An empty cache: k and v [B, Hkv, S, N], S = min(window, max_len) slots (max_len for global
        attention). Heads before slots: each head's keys are contiguous, as the batched products of
        one-token decoding read them."""
        slots = max_len if self.window is None else min(self.window, max_len)
        shape = (batch, self.n_kv_head, slots, self.head_size)
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
        if q.shape[1] == 1:
            return self._decode_one(q, k, v, start, state)
        t, slots = q.shape[1], state["k"].shape[2]
        positions = start + jnp.arange(t)
        key_positions = jnp.concatenate([cache_slot_positions(start, slots), positions])
        lag = positions[:, None] - key_positions[None, :]                  # [T, S + T]
        window = slots if self.window is None else self.window
        mask = (key_positions[None, :] >= 0) & (lag >= 0) & (lag < window)
        # [B, Hkv, S, N] -> [B, S, Hkv, N], then x's own keys after the cached ones: [B, S + T, Hkv, N]
        keys = jnp.concatenate([state["k"].swapaxes(1, 2), k.astype(state["k"].dtype)], axis=1)
        values = jnp.concatenate([state["v"].swapaxes(1, 2), v.astype(state["v"].dtype)], axis=1)
        y = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype),
                                         mask=mask[None, None])
        # Only the last `slots` new keys survive in the ring buffer.
        keep = min(t, slots)
        write = jnp.mod(positions[t - keep:], slots)
        new_state = {name: state[name].at[:, :, write].set(new[:, t - keep:].swapaxes(1, 2).astype(state[name].dtype))
                     for name, new in (("k", k), ("v", v))}
        return y, new_state

    def _decode_one(self, q, k, v, start, state):
        """One token: attend over its own key and the cache's filled slots only (chunk by chunk,
        with an online softmax, so a token costs what its valid context costs, whatever the
        capacity the cache was allocated with), then write its key and value into the cache.

        The attention reads the cache as it was, never the updated one, so that the one-slot update
        can be made in place: compiled with `decoding.DECODE_COMPILER_OPTIONS`, XLA then copies no
        cache inside the decoding loop (reading the updated cache made it copy every cache twice
        per token)."""
        y = cached_attention_one(q, k, v, state["k"], state["v"], start, self.window)
        slot = jnp.mod(start, state["k"].shape[2])
        cache = {name: jax.lax.dynamic_update_slice_in_dim(state[name], new.swapaxes(1, 2).astype(state[name].dtype),
                                                           slot, axis=2)
                 for name, new in (("k", k), ("v", v))}
        return y, cache


def cached_attention_one(q, k, v, k_cache, v_cache, position, window: Optional[int], chunk: int = DECODE_CHUNK):
    """The attention output of one query at `position` over its own key and value and a
    ring-buffer cache holding the positions before it (flash-decoding, sequentially over chunks of
    the cache).

    q [B, 1, Hq, N]; k, v [B, 1, Hkv, N]; k_cache, v_cache [B, Hkv, S, N] (slot = position % S)
    -> [B, 1, Hq, N]. Visible: the last min(window, S) positions, the query's own included. Only
    the chunks holding positions < `position` are read: ceil(min(position, S) / chunk).
    Scores, running maximum and sums in float32."""
    b, _, hq, n = q.shape
    hkv, slots = k_cache.shape[1], k_cache.shape[2]
    if slots % chunk:
        chunk = slots                            # one chunk: caches smaller than, or not cut by, `chunk`
    # The slot of position - S is about to be overwritten by this token: a window wider than the
    # cache sees only S positions.
    window = slots if window is None else min(window, slots)
    groups = hq // hkv
    qg = q.reshape(b, hkv, groups, n).astype(jnp.float32) * n ** -0.5     # [B, Hkv, G, N]
    slot_positions = cache_slot_positions(position, slots)                 # [S], -1 for empty slots

    def chunk_scores(keys, key_positions):
        """Scores [B, Hkv, G, K] of the query against keys [B, Hkv, K, N], -inf where not visible."""
        visible = (key_positions >= 0) & (position - key_positions < window)          # [K]
        return jnp.where(visible, jnp.einsum("bhgn,bhkn->bhgk", qg, keys.astype(jnp.float32)), -jnp.inf)

    def add_chunk(carry, keys, values, key_positions):
        """The online softmax's running (maximum, denominator, numerator) after one more chunk."""
        running_max, denominator, numerator = carry
        scores = chunk_scores(keys, key_positions)
        new_max = jnp.maximum(running_max, jnp.max(scores, axis=-1))
        scale = jnp.exp(running_max - new_max)
        weights = jnp.exp(scores - new_max[..., None])
        return (new_max, denominator * scale + jnp.sum(weights, axis=-1),
                numerator * scale[..., None] + jnp.einsum("bhgk,bhkn->bhgn", weights, values.astype(jnp.float32)))

    # The softmax starts from the query's own key, always visible: the running maximum is finite
    # from the start, so a chunk with no visible key adds exactly nothing.
    own_score = jnp.einsum("bhgn,bhn->bhg", qg, k[:, 0].astype(jnp.float32))                # [B, Hkv, G]
    own_value = jnp.broadcast_to(v[:, 0, :, None].astype(jnp.float32), (b, hkv, groups, n))
    carry = (own_score, jnp.ones_like(own_score), own_value)
    if slots == chunk:
        # One chunk (windowed caches): one pass over the whole cache, no loop.
        carry = add_chunk(carry, k_cache, v_cache, slot_positions)
    else:
        num_chunks = (jnp.minimum(position, slots) + chunk - 1) // chunk

        def body(i, carry):
            def piece(a):
                return jax.lax.dynamic_slice_in_dim(a, i * chunk, chunk, axis=-2 if a.ndim > 1 else 0)
            return add_chunk(carry, piece(k_cache), piece(v_cache), piece(slot_positions))

        carry = jax.lax.fori_loop(0, num_chunks, body, carry)
    _, denominator, numerator = carry
    return (numerator / denominator[..., None]).reshape(b, 1, hq, n).astype(q.dtype)
