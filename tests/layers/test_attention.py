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
