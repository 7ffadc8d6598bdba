"""The WKV operator of RWKV-5 and RWKV-6 (and of MicroRWKV's x051a, which is RWKV-5's with one
decay per head), in three forms: chunked (training), scan (reference), step (decoding).

Per batch row and head, with key/value channels N and an N x N float32 state S[key, value]:

    y_t     = r_t @ (S_t + diag(u) k_t^T v_t)
    S_{t+1} = diag(w_t) S_t + k_t^T v_t

so, for a constant per-head decay, y_t = sum_{s<t} w^(t-s-1) (r_t . k_s) v_s + u (r_t . k_t) v_t
+ w^t r_t @ S_0. The decay w multiplies the state's key rows:

    x051a, RWKV-5.1:  w [H]             one decay per head
    RWKV-5.2:         w [H, N]          one per key channel
    RWKV-6:           w [B, T, H, N]    one per token and key channel (data-dependent)

and the bonus u is [H] or [H, N]. All three forms share one calling convention:

    y, final_state = wkv5_*(r, k, v, w, u, initial_state)

    r, k, v:        [B, T, H, N]   (any float dtype; y comes back in r's dtype)
    initial_state:  [B, H, N, N]   float32 (zeros to start a sequence)

`wkv5_step` takes one token: r, k, v [B, H, N] and w [H], [H, N] or [B, H, N]. `wkv5_chunked`
takes one decay per head. The state and every decay factor are float32 whatever the activation
dtype, and decays are only ever multiplied in or raised to non-negative powers (no `w^t * w^-s`
factorisation: w^-s overflows for the strong decays that trained models learn).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def key_rows(a):
    """A decay or bonus ([H], [H, N] or [B, H, N]) as a float32 factor of the state's key rows,
    broadcasting against [B, H, N, N]."""
    a = a.astype(F32)
    return a[:, None, None] if a.ndim == 1 else a[..., None]


def wkv5_step(r, k, v, w, u, state):
    """One token. r, k, v: [B, H, N]; state [B, H, N, N] -> (y [B, H, N] float32, new state)."""
    r, k, v = (a.astype(F32) for a in (r, k, v))
    kv = k[..., :, None] * v[..., None, :]                       # [B, H, N, N]
    y = jnp.einsum("bhi,bhij->bhj", r, state + key_rows(u) * kv)
    return y, key_rows(w) * state + kv


def wkv5_scan(r, k, v, w, u, initial_state):
    """The reference form: `jax.lax.scan` of `wkv5_step` over the T axis. A per-token decay
    w [B, T, H, N] is scanned with the tokens."""
    per_token = w.ndim == 4

    def step(state, xs):
        rt, kt, vt, wt = xs
        y, state = wkv5_step(rt, kt, vt, wt if per_token else w, u, state)
        return state, y

    time_major = [jnp.swapaxes(a, 0, 1) for a in (r, k, v)]     # [T, B, H, N]
    decays = jnp.swapaxes(w, 0, 1) if per_token else jnp.zeros((r.shape[1],), F32)
    final_state, y = jax.lax.scan(step, initial_state.astype(F32), (*time_major, decays))
    return jnp.swapaxes(y, 0, 1).astype(r.dtype), final_state


def wkv5(r, k, v, w, u, state, chunk_size=None):
    """The form for the input: the step form for one token, else the chunked form of `chunk_size`
    tokens (None: the scan). r, k, v [B, T, H, N]; w [H], [H, N] or per token [B, T, H, N]."""
    if r.shape[1] == 1:
        y, state = wkv5_step(r[:, 0], k[:, 0], v[:, 0], w if w.ndim < 4 else w[:, 0], u, state)
        return y[:, None], state
    if chunk_size is None:
        return wkv5_scan(r, k, v, w, u, state)
    return wkv5_chunked(r, k, v, w, u, state, chunk_size)


def _wkv_chunk(r, k, v, w, u, state):
    """Exact WKV over one chunk of Q tokens, in parallel. r, k, v: [B, Q, H, N] float32."""
    q = r.shape[1]
    t = jnp.arange(q)
    log_w = jnp.log(w)                                            # [H], < 0
    # Intra-chunk weights D[h, t, s] = w^(t-s-1) for s < t, u on the diagonal, 0 above it.
    lag = t[:, None] - t[None, :] - 1                             # t - s - 1
    past = jnp.exp(log_w[:, None, None] * jnp.maximum(lag, 0)[None])
    decay_matrix = jnp.where(lag >= 0, past, 0.0)
    decay_matrix = jnp.where(lag == -1, u[:, None, None], decay_matrix)   # [H, Q, Q]

    scores = jnp.einsum("bthn,bshn->bhts", r, k) * decay_matrix
    y = jnp.einsum("bhts,bshn->bthn", scores, v)
    # Contribution of the state at the chunk start, decayed by w^t.
    decay_in = jnp.exp(log_w[None, :] * t[:, None])               # [Q, H] = w^t
    y = y + jnp.einsum("bthn,bhnm->bthm", r * decay_in[None, :, :, None], state)
    # State at the chunk end: w^Q S + sum_s w^(Q-1-s) k_s^T v_s.
    decay_out = jnp.exp(log_w[None, :] * (q - 1 - t)[:, None])    # [Q, H]
    new_state = jnp.exp(log_w * q)[None, :, None, None] * state + jnp.einsum(
        "bshn,bshm->bhnm", k * decay_out[None, :, :, None], v)
    return y, new_state


def _wkv_chunk_per_token(r, k, v, log_w, u, state):
    """Exact WKV over one chunk of Q tokens with a decay per token and key channel (RWKV-6), in
    parallel. r, k, v, log_w: [B, Q, H, N] float32 (log_w <= 0); u [H, N]. Every decay is a product
    of the decays between two tokens of the chunk, exp(c_t - c_{s+1}) with c the running sum of
    log_w, whose exponent is never positive: nothing is divided by a cumulative decay."""
    q = r.shape[1]
    upto = jnp.cumsum(log_w, axis=1)                              # c_{t+1}: the decays of tokens 0..t
    before = upto - log_w                                         # c_t: of tokens 0..t-1
    t = jnp.arange(q)
    earlier = (t[None, :] < t[:, None])[None, :, :, None, None]   # [1, Q(t), Q(s), 1, 1]: s < t
    exponent = jnp.where(earlier, before[:, :, None] - upto[:, None], -jnp.inf)   # [B, Q, Q, H, N]
    scores = jnp.einsum("bthn,bshn,btshn->bhts", r, k, jnp.exp(exponent))
    bonus = jnp.sum(r * u * k, axis=-1)                           # [B, Q, H]: the current token's
    y = jnp.einsum("bhts,bshm->bthm", scores, v) + bonus[..., None] * v
    y = y + jnp.einsum("bthn,bhnm->bthm", r * jnp.exp(before), state)
    total = upto[:, -1]                                           # [B, H, N]
    new_state = jnp.exp(total)[..., None] * state + jnp.einsum(
        "bshn,bshm->bhnm", k * jnp.exp(total[:, None] - upto), v)
    return y, new_state


def wkv5_chunked(r, k, v, w, u, initial_state, chunk_size: int = 64):
    """The training form: exact attention-like products inside chunks of `chunk_size` tokens, the
    state carried between chunks by `lax.scan`. For one decay per head (x051a: w, u [H]) or one per
    token and key channel (RWKV-6: w [B, T, H, N], u [H, N]). T need not be a multiple of the chunk
    size: the remainder is one shorter chunk (never zero-padded, which would decay the state)."""
    b, t, h, n = r.shape
    dtype = r.dtype
    per_token = w.ndim == 4
    u = u.astype(F32)
    r, k, v = (a.astype(F32) for a in (r, k, v))
    inputs = (r, k, v, jnp.log(w.astype(F32))) if per_token else (r, k, v)
    chunk = ((lambda r, k, v, log_w, state: _wkv_chunk_per_token(r, k, v, log_w, u if u.ndim == 2 else u[:, None],
                                                                  state))
             if per_token else (lambda r, k, v, state: _wkv_chunk(r, k, v, w.astype(F32), u, state)))
    state = initial_state.astype(F32)
    q = min(chunk_size, t)
    num_full = t // q
    outputs = []
    if num_full:
        def body(state, xs):
            y, state = chunk(*xs, state)
            return state, y

        chunks = [a[:, : num_full * q].reshape(b, num_full, q, h, n).swapaxes(0, 1) for a in inputs]
        state, y = jax.lax.scan(body, state, chunks)              # y [num_full, B, Q, H, N]
        outputs.append(y.swapaxes(0, 1).reshape(b, num_full * q, h, n))
    if t % q:
        y, state = chunk(*(a[:, num_full * q:] for a in inputs), state)
        outputs.append(y)
    y = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)
    return y.astype(dtype), state
