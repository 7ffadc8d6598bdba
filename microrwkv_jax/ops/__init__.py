"""The WKV operators of every RWKV generation, together: each a `lax.scan` reference form and a
one-token step form (and, where training needs it, a chunked form), float32 state and decays.

    wkv4:  RWKV-4's normalised WKV (per-channel decay, running-maximum state)
    wkv5:  RWKV-5/6 and x051a: S <- diag(w) S + k^T v, y = r (S + diag(u) k^T v)
    wkv7:  RWKV-7's generalised delta rule: S <- diag(w) S + b (a^T S) + k^T v, y = r S
"""
