"""RWKV-4's WKV operator against a float64 numpy evaluation of its definition, and its stability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microrwkv_jax.ops.wkv4 import wkv4_initial_state, wkv4_scan, wkv4_step
from tests.helpers import rel_err


def numpy_wkv4(k, v, w, u):
    """The definition, in float64 with a log-sum-exp per output: y_t = sum_s a_ts v_s / sum_s a_ts."""
    b, t, c = k.shape
    y = np.zeros((b, t, c))
    for i in range(t):
        s = np.arange(i)
        exps = np.concatenate([(i - 1 - s)[None, :, None] * w[None, None, :] + k[:, :i],
                               (u + k[:, i])[:, None]], axis=1)             # [B, i+1, C]
        weights = np.exp(exps - exps.max(axis=1, keepdims=True))
        y[:, i] = np.sum(weights * np.concatenate([v[:, :i], v[:, i:i + 1]], axis=1), 1) / weights.sum(1)
    return y


def inputs(seed, b, t, c, decay):
    rng = np.random.default_rng(seed)
    k, v = rng.standard_normal((b, t, c)) * 2, rng.standard_normal((b, t, c))
    w = -np.exp(rng.uniform(*decay, c))          # time_decay in `decay`: w = -exp(time_decay)
    u = rng.standard_normal(c)
    return k, v, w, u


@pytest.mark.parametrize("decay", [(-6.0, -3.0), (0.0, 2.0), (-6.0, 2.0)])    # weak, strong, mixed decays
def test_scan_equals_float64_definition(decay):
    k, v, w, u = inputs(0, 2, 40, 5, decay)
    y, _ = wkv4_scan(*(jnp.asarray(a, jnp.float32) for a in (k, v, w, u)), wkv4_initial_state(2, 5))
    assert rel_err(y, numpy_wkv4(k, v, w, u)) <= 1e-5


def test_step_and_split_scans_equal_one_scan():
    k, v, w, u = (jnp.asarray(a, jnp.float32) for a in inputs(1, 2, 33, 4, (-6.0, 2.0)))
    whole, final = wkv4_scan(k, v, w, u, wkv4_initial_state(2, 4))
    first, state = wkv4_scan(k[:, :20], v[:, :20], w, u, wkv4_initial_state(2, 4))
    steps = []
    for i in range(20, 33):
        y, state = wkv4_step(k[:, i], v[:, i], w, u, state)
        steps.append(y)
    assert rel_err(jnp.concatenate([first, jnp.stack(steps, 1)], axis=1), whole) <= 1e-6
    for a, b in zip(state, final):
        assert rel_err(a, b) <= 1e-6


def test_long_sequences_with_large_keys_stay_finite():
    """4096 tokens, keys up to +-60 and decays from weak to strong: exp(60) overflows float32 at
    once without the running maximum."""
    rng = np.random.default_rng(2)
    k = jnp.asarray(rng.uniform(-60, 60, (1, 4096, 8)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((1, 4096, 8)), jnp.float32)
    w = -jnp.exp(jnp.linspace(-8.0, 3.0, 8))
    u = jnp.asarray(rng.standard_normal(8) * 5, jnp.float32)
    y, state = jax.jit(wkv4_scan)(k, v, w, u, wkv4_initial_state(1, 8))
    assert bool(jnp.all(jnp.isfinite(y))) and all(bool(jnp.all(jnp.isfinite(s))) for s in state)
    assert float(jnp.max(jnp.abs(y))) <= float(jnp.max(jnp.abs(v))) + 1e-5     # a convex combination of values
