"""What the chunked forms of RWKV-6's and RWKV-7's WKV share: cutting a sequence into chunks,
the relative decays inside a chunk, and the state carried from chunk to chunk.

With a decay w_t per token and key channel (log w_t <= 0), the weight that token t gives to
what token i < t wrote is a product of the decays between them, exp(c_t - c_i). Inside a chunk
of Q tokens every such product is formed from sums of log decays that never cross t or i in the
wrong direction, so no exponent is ever positive: nothing is divided by a cumulative decay and
nothing overflows, whatever the decays (down to 0.004 per token and beyond).

A chunk is cut into sub-chunks of S tokens. Pairs inside one sub-chunk get their exact weights
element by element (its S (S - 1) / 2 pairs i < t, [P, N] per sub-chunk); pairs across sub-chunks p < q go through the
boundaries between them,

    exp(before_t - upto_i) = exp(before_t - B_q) * exp(B_q - B_{p+1}) * exp(B_{p+1} - upto_i)

(B_q: the log decay up to sub-chunk q's first token), three factors each <= 1, so those
weights are matrix products. The chunks go through a `lax.scan` (T / Q steps, each chunk's
work in parallel); evaluating all chunks at once was measured 2-7x slower on the CPU, its
intermediates too large for the caches. The scan's body is rematerialised: its backward pass
recomputes a chunk from the chunk's inputs and the state reaching it, rather than storing every
intermediate of every chunk: forward+backward measured 1.6-1.7x faster at B=16, T=1024, H=12,
N=64 (`bench.py wkv`, BENCHMARKS.md), and only the state per chunk is kept.

Layout: inputs [B, T, H, N] become chunks [C, B, H, Q, N] (`to_chunks`), one chunk [B, H, Q, N]
per step; the state is [B, H, N_key, N_value], float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

F32 = jnp.float32
# Tokens per sub-chunk, by measurement (`bench.py wkv`, CPU, B=16 T=1024 H=12 N=64): 4 within 10% of
# the best for RWKV-6 and the best for RWKV-7 at chunks of 8-32; larger sub-chunks cost more element-wise work.
SUB_CHUNK = 4
# The smallest log decay the chunked forms use. A decay that underflows to 0 (RWKV-6's
# exp(-exp(d)) for d > 4.5) has log -inf, and -inf - -inf is NaN; e^-30 = 9e-14 changes no weight
# by more than that, and keeps the differences of log decays inside a sub-chunk (at most
# 3 x 30) within 8e-6 of exact.
MIN_LOG_DECAY = -30.0


def log_decays(w):
    """log w in float32, floored at MIN_LOG_DECAY (the floor taken before the log: log's gradient
    at w = 0 is infinite, and infinity times the floor's zero gradient is NaN)."""
    return jnp.log(jnp.maximum(w.astype(F32), float(np.exp(MIN_LOG_DECAY))))


def to_chunks(x, q):
    """[B, C * Q, H, N] -> [C, B, H, Q, N]: the chunks, for a `lax.scan` over them."""
    b, t, h, n = x.shape
    return x.reshape(b, t // q, q, h, n).transpose(1, 0, 3, 2, 4)


def from_chunks(x):
    """[C, B, H, Q, N] -> [B, C * Q, H, N]."""
    c, b, h, q, n = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, c * q, h, n)


def exclusive_cumsum(x, axis):
    """sum_{j < i} x_j along `axis` (exact: no difference of two running sums)."""
    total = jnp.cumsum(x, axis=axis)
    return jnp.concatenate([jnp.zeros_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis)),
                            jax.lax.slice_in_dim(total, 0, x.shape[axis] - 1, axis=axis)], axis=axis)


def suffix_sum(x, axis):
    """sum_{j > i} x_j along `axis` (exact: no difference of two running sums)."""
    total = jax.lax.cumsum(x, axis=axis % x.ndim, reverse=True)
    return jnp.concatenate([jax.lax.slice_in_dim(total, 1, x.shape[axis], axis=axis),
                            jnp.zeros_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis))], axis=axis)


class ChunkDecays:
    """The decays of chunks of Q tokens, log_w [..., Q, N] (<= 0), cut into sub-chunks of S:

    before  [..., Q, N]  log decay of the chunk's tokens before t   (the state reaching t)
    upto    [..., Q, N]  ... up to and including t
    after   [..., Q, N]  ... after t, to the chunk's end             (what t wrote, at the end)
    total   [..., N]     ... of the whole chunk
    """

    def __init__(self, log_w, sub: int):
        *lead, q, n = log_w.shape
        self.q, self.s = q, sub if q % sub == 0 else q
        self.m = q // self.s
        self.log_w = log_w
        self.before = exclusive_cumsum(log_w, -2)
        self.upto = self.before + log_w
        self.after = suffix_sum(log_w, -2)
        self.total = jnp.sum(log_w, axis=-2)
        subs = log_w.reshape(*lead, self.m, self.s, n)                       # [..., M, S, N]
        sub_before = exclusive_cumsum(subs, -2)                              # before_t - B_q
        self.into_sub = jnp.exp(sub_before)                                  # e^{before_t - B_q}
        self.out_of_sub = jnp.exp(suffix_sum(subs, -2))                      # e^{B_{p+1} - upto_i}
        sub_total = jnp.sum(subs, axis=-2)                                   # [..., M, N]
        p = jnp.arange(self.m)
        between = (p[None, None, :] > p[None, :, None]) & (p[None, None, :] < p[:, None, None])   # [q, p, p']: p < p' < q
        gap = jnp.einsum("qpr,...rn->...qpn", between.astype(F32), sub_total)  # B_q - B_{p+1}: [..., M, M, N]
        self.across = jnp.where((p[:, None] > p[None, :])[..., None], jnp.exp(gap), 0.0)   # p < q, else 0
        # Inside a sub-chunk, element by element, for its S (S - 1) / 2 pairs i < t only:
        # e^{before_t - upto_i} = e^{sub_before_t - sub_upto_i}.
        self.later, self.earlier = (np.asarray(ix) for ix in np.tril_indices(self.s, -1))   # the pairs (t, i)
        self.inside = jnp.exp(sub_before[..., self.later, :] - (sub_before + subs)[..., self.earlier, :])   # [..., M, P, N]
        pairs = np.zeros((len(self.later), self.s * self.s), np.float32)
        pairs[np.arange(len(self.later)), self.later * self.s + self.earlier] = 1.0
        self.place_pairs = jnp.asarray(pairs)                                # [P, S * S]: pair -> (t, i)

    def scores(self, x, y):
        """M[..., t, i] = sum_n x_tn y_in exp(before_t - upto_i) for i < t (0 for i >= t): the
        weight of token i's y as token t's x reads the state before t. x, y: [..., Q, N]."""
        *lead, q, n = x.shape
        m, s = self.m, self.s
        xs, ys = x.reshape(*lead, m, s, n), y.reshape(*lead, m, s, n)
        # Across sub-chunks: (x_t e^{before_t - B_q}) diag(e^{B_q - B_{p+1}}) (y_i e^{B_{p+1} - upto_i}).
        across = jnp.einsum("...qjn,...qpn,...pkn->...qjpk", xs * self.into_sub, self.across,
                            ys * self.out_of_sub)                            # [..., M, S, M, S]
        inside = jnp.sum(xs[..., self.later, :] * ys[..., self.earlier, :] * self.inside, axis=-1)   # [..., M, P]
        inside = (inside @ self.place_pairs).reshape(*lead, m, s, s)         # [..., M, S(t), S(i)], 0 for i >= t
        same = jnp.eye(m, dtype=bool)[:, None, :, None]                      # [M, 1, M, 1]
        full = jnp.where(same, inside[..., :, :, None, :], across)           # [..., M, S, M, S]
        return full.reshape(*lead, q, q)

    def scores_inclusive(self, x, y):
        """`scores` as token t reads the state after its own write: exp(upto_t - upto_i) for
        i <= t (= w_t exp(before_t - upto_i), and 1 on the diagonal)."""
        strict = self.scores(x * jnp.exp(self.log_w), y)
        return strict + jnp.sum(x * y, axis=-1)[..., :, None] * jnp.eye(x.shape[-2], dtype=x.dtype)


def in_chunks(chunk_fn, inputs, initial_state, chunk_size: int):
    """Run `chunk_fn(one chunk [B, H, Q, N] of each input ..., state) -> (y [B, H, Q, N], state)`
    over the [B, T, H, N] inputs' whole chunks in a `lax.scan` (one chunk's work at a time stays
    in the caches), then once over the remainder (one shorter chunk, never zero-padded: padding
    would decay the state). Returns (y [B, T, H, N] float32, final state)."""
    t = inputs[0].shape[1]
    q = min(chunk_size, t)
    whole = t // q * q

    @jax.checkpoint     # the backward pass recomputes each chunk from its inputs and its state
    def body(state, chunk):
        y, state = chunk_fn(*chunk, state)
        return state, y

    state, y = jax.lax.scan(body, initial_state.astype(F32), [to_chunks(x[:, :whole], q) for x in inputs])
    outputs = [from_chunks(y)]
    if whole < t:
        y, state = chunk_fn(*(to_chunks(x[:, whole:], t - whole)[0] for x in inputs), state)
        outputs.append(from_chunks(y[None]))
    return (outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)), state
