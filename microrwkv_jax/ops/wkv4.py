"""RWKV-4's WKV operator (normalised attention with per-channel decay), in a `lax.scan` form and
a one-token step form, numerically stable for trained decays and long sequences.

Per batch row and channel, with decay w = -exp(time_decay) < 0 and bonus u = time_first:

    y_t = (sum_{s<t} e^{(t-1-s) w + k_s} v_s + e^{u + k_t} v_t) / (sum_{s<t} e^{(t-1-s) w + k_s} + e^{u + k_t})

The state is (a, b, p): numerator and denominator sums scaled by e^{-p}, and p the running
maximum exponent, so no exponential ever overflows (the formulation of RWKV-4's CUDA kernel).
All in float32, whatever the activation dtype.

    y, state = wkv4_scan(k, v, w, u, state)     k, v: [B, T, C]; w, u: [C]; y: [B, T, C]
    y, state = wkv4_step(k, v, w, u, state)     k, v: [B, C]
    state = (a, b, p), each [B, C] float32; `wkv4_initial_state(B, C)` starts a sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32
# The running maximum starts far below any exponent (as in the reference implementations).
MIN_EXPONENT = -1e38


def wkv4_initial_state(batch: int, channels: int):
    return (jnp.zeros((batch, channels), F32), jnp.zeros((batch, channels), F32),
            jnp.full((batch, channels), MIN_EXPONENT, F32))


def wkv4_step(k, v, w, u, state):
    """One token: k, v [B, C] -> (y [B, C] float32, new state)."""
    a, b, p = state
    k, v = k.astype(F32), v.astype(F32)
    q = jnp.maximum(p, u + k)                     # the output's exponent scale
    e1, e2 = jnp.exp(p - q), jnp.exp(u + k - q)
    y = (e1 * a + e2 * v) / (e1 * b + e2)
    q = jnp.maximum(p + w, k)                     # the next state's
    e1, e2 = jnp.exp(p + w - q), jnp.exp(k - q)
    return y, (e1 * a + e2 * v, e1 * b + e2, q)


def wkv4_scan(k, v, w, u, state):
    """The sequence: k, v [B, T, C] -> (y [B, T, C] float32, final state)."""
    w, u = w.astype(F32), u.astype(F32)

    def step(carry, kv):
        y, carry = wkv4_step(kv[0], kv[1], w, u, carry)
        return carry, y

    state, y = jax.lax.scan(step, state, (jnp.swapaxes(k, 0, 1), jnp.swapaxes(v, 0, 1)))
    return jnp.swapaxes(y, 0, 1), state
