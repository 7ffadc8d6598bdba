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
    y, final_state = wkv7_chunked(r, k, v, w, a, b, initial_state, chunk_size)     training
    y, final_state = wkv7(r, k, v, w, a, b, state, chunk_size=None)   step / chunked / scan

The chunked form (a UT transform of each chunk): inside a chunk of Q tokens, with
u_t = a_t^T S_{t-1} (what the rank-one term reads) and relative decays exp(c_t - c_i) (ops.chunked),

    u_t = (a_t e^{before_t})^T S_0 + sum_{i<t} A_ti u_i + K_ti v_i     A = scores(a, b), K = scores(a, k)
    y_t = (r_t e^{upto_t})^T S_0 + sum_{i<=t} Rb_ti u_i + Rk_ti v_i     (inclusive scores of r)

so U = (I - A)^{-1} ((a e^{before}) S_0 + K V), one unit lower-triangular inverse per chunk,
and the chunk's end state is diag(e^{total}) S_0 + (b e^{after})^T U + (k e^{after})^T V.

y comes back float32 from the step and in r's dtype from the scan; the state, the decays and
every product on the state are float32 whatever the activation dtype. Nothing is ever divided
by a decay.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from microrwkv_jax.ops.chunked import SUB_CHUNK, ChunkDecays, in_chunks, log_decays

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


def unit_lower_inverse(a):
    """(I - A)^{-1} for strictly lower-triangular A [..., Q, Q], by forward substitution row by
    row: X_t = e_t + A_t X, rows of X above t final when row t is formed (A_ti = 0 for i >= t,
    so the rows not yet formed, still e_i, add nothing). XLA's CPU triangular solve was measured
    to hang (a deadlock, no CPU used) inside this scan's gradient, so the solve is written out:
    a `fori_loop` of Q - 1 matrix-vector products, which compiles in half the time of the
    unrolled loop and runs as fast (`bench.py wkv`)."""
    q = a.shape[-1]
    eye = jnp.eye(q, dtype=a.dtype)
    rows = a.ndim - 2

    def next_row(t, x):
        a_t = jax.lax.dynamic_index_in_dim(a, t, axis=rows, keepdims=False)            # [..., Q]
        row = eye[t] + jnp.einsum("...i,...ij->...j", a_t, x)
        return jax.lax.dynamic_update_index_in_dim(x, row, t, axis=rows)

    return jax.lax.fori_loop(1, q, next_row, jnp.broadcast_to(eye, a.shape))


def _wkv7_chunk(r, k, v, log_w, a, b, state, sub):
    """Exact RWKV-7 WKV over one chunk [B, H, Q, N], in parallel: a triangular solve and matrix
    products."""
    d = ChunkDecays(log_w, sub)
    rhs = jnp.einsum("bhqi,bhij->bhqj", a * jnp.exp(d.before), state) + d.scores(a, k) @ v
    u = unit_lower_inverse(d.scores(a, b)) @ rhs                  # [B, H, Q, N]: a_t^T S_{t-1}
    y = (jnp.einsum("bhqi,bhij->bhqj", r * jnp.exp(d.upto), state)
         + d.scores_inclusive(r, b) @ u + d.scores_inclusive(r, k) @ v)
    written = (jnp.einsum("bhqi,bhqj->bhij", b * jnp.exp(d.after), u)
               + jnp.einsum("bhqi,bhqj->bhij", k * jnp.exp(d.after), v))
    return y, jnp.exp(d.total)[..., None] * state + written


def wkv7_chunked(r, k, v, w, a, b, initial_state, chunk_size: int = 64, sub_chunk: int = SUB_CHUNK):
    """The training form: every chunk of `chunk_size` tokens in parallel (a triangular solve and
    matrix products), the state carried between chunks. T need not be a multiple of the chunk
    size: the remainder is one shorter chunk."""
    inputs = [x.astype(F32) for x in (r, k, v)] + [log_decays(w)] + [x.astype(F32) for x in (a, b)]
    chunk = lambda r, k, v, log_w, a, b, state: _wkv7_chunk(r, k, v, log_w, a, b, state, sub_chunk)
    y, state = in_chunks(chunk, inputs, initial_state, chunk_size)
    return y.astype(r.dtype), state


def wkv7(r, k, v, w, a, b, state, chunk_size=None):
    """The form for the input: the step form for one token, else the chunked form of `chunk_size`
    tokens (None: the scan). All inputs [B, T, H, N]."""
    if r.shape[1] == 1:
        y, state = wkv7_step(*(x[:, 0] for x in (r, k, v, w, a, b)), state)
        return y[:, None].astype(r.dtype), state
    if chunk_size is None:
        return wkv7_scan(r, k, v, w, a, b, state)
    return wkv7_chunked(r, k, v, w, a, b, state, chunk_size)
