"""Causal attention: the blocked training forms against masked full attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microrwkv_jax.layers.attention import prefix_blocks_attention, windowed_attention
from tests.helpers import rel_err


@pytest.mark.parametrize("b, t, hq, hkv, window, blocks", [
    (2, 29, 4, 4, 8, None), (3, 64, 4, 1, 16, None), (1, 33, 2, 2, 16, None),   # window < T/2: W-blocks
    (2, 29, 4, 1, None, 3), (1, 64, 2, 2, None, 6), (2, 40, 4, 2, 25, 4), (1, 7, 2, 1, None, 1)])
def test_blocked_attention_equals_masked_full_attention(b, t, hq, hkv, window, blocks):
    rng = np.random.default_rng(t)
    q = jnp.asarray(rng.standard_normal((b, t, hq, 16)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, t, hkv, 16)), jnp.float32) for _ in range(2))
    lag = np.arange(t)[:, None] - np.arange(t)[None, :]
    mask = jnp.asarray((lag >= 0) & (lag < (window or t)))[None, None]
    expected = jax.nn.dot_product_attention(q, k, v, mask=mask)
    ours = windowed_attention(q, k, v, window) if blocks is None else prefix_blocks_attention(q, k, v, window, blocks)
    assert rel_err(ours, expected) <= 1e-6


@pytest.mark.parametrize("slots, window, chunk, history", [
    (1024, None, 256, 5),        # a large cache, barely filled: only the first chunk is read
    (1024, None, 256, 700),      # three of four chunks filled
    (512, None, 128, 512),       # full
    (64, 64, 16, 200),           # a windowed ring buffer that has wrapped around three times
    (256, 256, 256, 300),        # a windowed cache of exactly one chunk (no loop), wrapped
    (48, 48, 256, 30),           # a cache smaller than one chunk
    (96, 100, 32, 500),          # fewer slots than the window (the cache was made for a short sequence)
    (64, None, 16, 0)])          # the first token: an empty cache, only its own key
def test_one_token_cached_attention_equals_a_float64_reference(slots, window, chunk, history):
    """One query at position `history`, with its own key and value, over a ring buffer holding
    the positions before it, against float64 numpy softmax attention over the keys the window
    sees once this token is written."""
    from microrwkv_jax.layers.attention import cached_attention_one
    rng = np.random.default_rng(slots + history)
    b, hq, hkv, n = 2, 4, 2, 16
    keys_by_position = rng.standard_normal((b, history + 1, hkv, n))
    values_by_position = rng.standard_normal((b, history + 1, hkv, n))
    k_cache, v_cache = np.zeros((b, slots, hkv, n)), np.zeros((b, slots, hkv, n))
    for p in range(history):                           # what the ring buffer holds now
        k_cache[:, p % slots], v_cache[:, p % slots] = keys_by_position[:, p], values_by_position[:, p]
    q = rng.standard_normal((b, 1, hq, n))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    heads_first = lambda a: f32(a.swapaxes(1, 2))                                  # the cache's [B, Hkv, S, N]
    ours = cached_attention_one(f32(q), f32(keys_by_position[:, history:]), f32(values_by_position[:, history:]),
                                heads_first(k_cache), heads_first(v_cache), jnp.asarray(history), window, chunk)
    visible = [p for p in range(history + 1) if history - p < min(window or slots, slots)]
    keys = np.repeat(keys_by_position[:, visible], hq // hkv, axis=2)              # [B, K, Hq, N]
    values = np.repeat(values_by_position[:, visible], hq // hkv, axis=2)
    scores = np.einsum("bhn,bkhn->bhk", q[:, 0], keys) / np.sqrt(n)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    expected = np.einsum("bhk,bkhn->bhn", weights / weights.sum(-1, keepdims=True), values)[:, None]
    assert rel_err(ours, expected) <= 1e-5
