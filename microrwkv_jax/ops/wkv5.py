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
takes all three: one decay per head in x051a's chunk loop, the others in the relative-decay form
of `ops.chunked`. The state and every decay factor are float32 whatever the activation
dtype, and decays are only ever multiplied in or raised to non-negative powers (no `w^t * w^-s`
factorisation: w^-s overflows for the strong decays that trained models learn).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from microrwkv_jax.ops.chunked import SUB_CHUNK, ChunkDecays, in_chunks, log_decays

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


def _wkv_chunk_per_token(r, k, v, log_w, u, state, sub):
    """Exact WKV over one chunk [B, H, Q, N] with a decay per token and key channel (RWKV-6), in
    parallel, by the relative decays of `ops.chunked`. u [H, 1, N]."""
    d = ChunkDecays(log_w, sub)
    y = (jnp.einsum("bhqi,bhij->bhqj", r * jnp.exp(d.before), state)
         + d.scores(r, k) @ v
         + jnp.sum(r * u * k, axis=-1, keepdims=True) * v)                          # the bonus of the token itself
    written = jnp.einsum("bhqi,bhqj->bhij", k * jnp.exp(d.after), v)
    return y, jnp.exp(d.total)[..., None] * state + written


def wkv5_chunked(r, k, v, w, u, initial_state, chunk_size: int = 64, sub_chunk: int = SUB_CHUNK):
    """The training form: exact attention-like products inside chunks of `chunk_size` tokens, the
    state carried between chunks. For one decay per head (x051a: w, u [H]), per key channel
    (RWKV-5.2: w, u [H, N]) or per token and key channel (RWKV-6: w [B, T, H, N], u [H, N]; the
    relative-decay form of `ops.chunked`, sub-chunks of `sub_chunk` tokens). T need not be a
    multiple of the chunk size: the remainder is one shorter chunk (never zero-padded, which
    would decay the state)."""
    b, t, h, n = r.shape
    dtype = r.dtype
    if w.ndim == 2:                                               # per key channel: the same for every token
        w = jnp.broadcast_to(w.astype(F32), (b, t, h, n))
    if w.ndim == 4:
        u = jnp.broadcast_to(u.astype(F32).reshape(h, -1), (h, n))[:, None, :]    # [H, 1, N]
        chunk = lambda r, k, v, log_w, state: _wkv_chunk_per_token(r, k, v, log_w, u, state, sub_chunk)
        inputs = [a.astype(F32) for a in (r, k, v)] + [log_decays(w)]
        y, state = in_chunks(chunk, inputs, initial_state, chunk_size)
        return y.astype(dtype), state
    return _wkv5_chunked_per_head(r, k, v, w, u, initial_state, chunk_size)


def _wkv5_chunked_per_head(r, k, v, w, u, initial_state, chunk_size):
    """x051a's chunked form (one decay per head): the chunks in a `lax.scan`."""
    b, t, h, n = r.shape
    dtype = r.dtype
    u = u.astype(F32)
    r, k, v = (a.astype(F32) for a in (r, k, v))
    chunk = lambda r, k, v, state: _wkv_chunk(r, k, v, w.astype(F32), u, state)
    state = initial_state.astype(F32)
    q = min(chunk_size, t)
    num_full = t // q
    outputs = []
    if num_full:
        def body(state, xs):
            y, state = chunk(*xs, state)
            return state, y

        chunks = [a[:, : num_full * q].reshape(b, num_full, q, h, n).swapaxes(0, 1) for a in (r, k, v)]
        state, y = jax.lax.scan(body, state, chunks)              # y [num_full, B, Q, H, N]
        outputs.append(y.swapaxes(0, 1).reshape(b, num_full * q, h, n))
    if t % q:
        y, state = chunk(*(a[:, num_full * q:] for a in (r, k, v)), state)
        outputs.append(y)
    y = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)
    return y.astype(dtype), state
