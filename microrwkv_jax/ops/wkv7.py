"""RWKV-7's WKV operator, the generalised delta rule, in a `lax.scan` form and a one-token step form.

Per batch row and head, with N x N float32 state S[key, value] (the transpose of BlinkDL's
[value, key] layout) and per-token vectors of N key channels:

    S_t = diag(w_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t^T v_t
    y_t = r_t S_t

RWKV-7 calls it with a = -kappa_hat (the normalised key) and b = kappa_hat * iclr, so that the
rank-one term removes part of what the state holds along kappa_hat before writing the new value;
w in [exp(-exp(-0.5)), 1) is its per-token, per-channel decay. The same calling convention as
`wkv5`:

    y, final_state = wkv7_scan(r, k, v, w, a, b, initial_state)    r, k, v, w, a, b: [B, T, H, N]
    y, final_state = wkv7_step(r, k, v, w, a, b, state)            one token: [B, H, N]

y comes back float32 from the step and in r's dtype from the scan; the state, the decays and
every product on the state are float32 whatever the activation dtype. Nothing is ever divided
by a decay.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def wkv7_step(r, k, v, w, a, b, state):
    """One token. r, k, v, w, a, b: [B, H, N]; state [B, H, N, N] -> (y [B, H, N] float32, new state)."""
    r, k, v, w, a, b = (x.astype(F32) for x in (r, k, v, w, a, b))
    removed = jnp.einsum("bhi,bhij->bhj", a, state)                    # a^T S: [B, H, N] over values
    state = (w[..., :, None] * state + b[..., :, None] * removed[..., None, :]
             + k[..., :, None] * v[..., None, :])
    return jnp.einsum("bhi,bhij->bhj", r, state), state


def wkv7_scan(r, k, v, w, a, b, initial_state):
    """The reference form: `jax.lax.scan` of `wkv7_step` over the T axis."""
    def step(state, xs):
        y, state = wkv7_step(*xs, state)
        return state, y

    time_major = [jnp.swapaxes(x, 0, 1) for x in (r, k, v, w, a, b)]      # [T, B, H, N]
    final_state, y = jax.lax.scan(step, initial_state.astype(F32), time_major)
    return jnp.swapaxes(y, 0, 1).astype(r.dtype), final_state
