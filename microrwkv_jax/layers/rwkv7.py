"""RWKV-7 "Goose" time mixing (BlinkDL's x070): the generalised delta rule with a per-token decay,
an in-context learning rate and a value residual from the first layer. The RWKV-7 family's
blocks use it, and so can the causal hybrid (sub-layer "time_mix7").

    dx = x_{t-1} - x;  x_{r,w,k,v,a,g} = x + dx * x_{r,w,k,v,a,g}
    r, k, v = W_{r,k,v} x_{r,k,v}                                     heads of N channels
    w = exp(-e^-0.5 sigmoid(w0 + tanh(x_w w1) w2))                    decay in [e^(-e^-0.5), 1), float32
    a = sigmoid(a0 + (x_a a1) a2)                                     in-context learning rate
    g = sigmoid(x_g g1) g2                                            the output gate (LoRA)
    kappa = normalise_per_head(k * k_k);  k = k * (1 + (a - 1) * k_a)
    layer 0: v_first = v;  later layers: v = v + (v_first - v) * sigmoid(v0 + (x_v v1) v2)
    y = WKV7(r, k, v, w, -kappa, kappa * a)      (BlinkDL's S[value, key]:
                                                  S <- S diag(w) - S kappa (kappa a)^T + v k^T)
    y = GroupNorm_H(y) + (sum_head(r * k * r_k)) v;  out = W_o (y * g)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.layers.linears import linear
from microrwkv_jax.layers.normalization import HeadGroupNorm
from microrwkv_jax.layers.rwkv import LN_X_EPS, heads_state, time_state_param, token_shift
from microrwkv_jax.ops.wkv7 import wkv7

DECAY_SCALE = math.exp(-0.5)      # w = exp(-e^-0.5 * sigmoid(.)): each token keeps at least e^(-e^-0.5) = 0.545
MIXES = ("r", "w", "k", "v", "a", "g")


def default_lora_ranks(n_embd: int) -> tuple:
    """(decay, in-context learning rate, value residual, gate) ranks by the rule of RWKV-LM's
    RWKV-v7/train_temp for the width C: multiples of 32, at least 32, of 2.5 sqrt(C), 2.5 sqrt(C),
    1.7 sqrt(C), 5 sqrt(C) (at C = 768 the 0.1B World model's 64, 64, 32, 128)."""
    rank = lambda x: max(32, int(round(x / 32)) * 32)
    root = n_embd ** 0.5
    return rank(2.5 * root), rank(2.5 * root), rank(1.7 * root), rank(5 * root)


def channel_profiles(c: int, n: int):
    """BlinkDL's per-channel init profiles over C channels in heads of N: `linear` from -0.5 to
    0.5, `zigzag` a signed square within each head (-1 .. 1), and the ramp i / C."""
    i = np.arange(c)
    linear_c = i / (c - 1) - 0.5
    zigzag = ((i % n) - (n - 1) / 2) / ((n - 1) / 2)
    return linear_c, zigzag * np.abs(zigzag), i / c


def orthogonal(gain: float):
    """An orthogonal initializer (torch's nn.init.orthogonal_, gain `gain`); zeros at gain 0."""
    return nnx.initializers.orthogonal(scale=gain) if gain else nnx.initializers.zeros


def time_mix7_flops(c: int, n: int, lora_ranks: tuple, n_layer: int) -> float:
    """Forward FLOPs per token and layer, averaged over the L layers: r, k, v, o, the LoRAs (the
    value residual's in every layer but the first) and the delta rule's state products (about
    8 C N: the decay, a^T S, the rank-one and k^T v updates, r S)."""
    d_w, d_a, d_v, d_g = lora_ranks
    loras = d_w + d_a + d_g + d_v * (n_layer - 1) / n_layer
    return 2 * (4 * c * c + 2 * c * loras) + 8 * c * n


class TimeMix7(nnx.Module):
    """RWKV-7 time mixing, initialised as RWKV-LM's RWKV-v7/train_temp initialises a model to train
    from scratch. Parameter names are BlinkDL's (x_r, w0, w1, w2, ..., r_k)."""

    # Logical axes of its parameters, for sharding (microrwkv_jax.sharding); the first match wins.
    PARAM_AXES = {
        "output/kernel": ("heads", "embed"),
        "ln_x/*": ("heads",),
        "*/kernel": ("embed", "heads"),             # receptance, key, value
        "r_k": ("heads", "embed"),                  # [H, N]
        "?1": ("embed", "lora"),                    # LoRAs w, a, v, g: [C, D] and [D, C]
        "?2": ("lora", "embed"),
        "time_state": ("heads", None, None),        # [H, N, N], state tuning
        "*": ("embed",),                            # x_*, w0, a0, v0, k_k, k_a
    }

    def __init__(self, n_embd: int, n_head: int, layer_id: int, n_layer: int, lora_ranks: tuple, *,
                 rngs: nnx.Rngs, chunk_size: int = 16, dtype=jnp.float32, time_state: bool = False):
        c, h, n = n_embd, n_head, n_embd // n_head
        d_w, d_a, d_v, d_g = lora_ranks
        self.layer_id, self.n_head, self.head_size, self.chunk_size = layer_id, h, n, chunk_size
        r0, r1 = layer_id / max(n_layer - 1, 1), 1.0 - layer_id / n_layer
        linear_c, zigzag, ramp = channel_profiles(c, n)
        param = lambda a: nnx.Param(jnp.asarray(a, jnp.float32))
        # A LoRA's down-projection starts at 0, its up-projection orthogonal at gain 0.1 (times
        # sqrt(rows / columns) where taller than wide): the LoRA starts as a no-op that can learn.
        up = lambda rank: nnx.Param(orthogonal(0.1 * (np.sqrt(rank / c) if rank > c else 1.0))(
            rngs.params(), (rank, c), jnp.float32))
        self.x_r, self.x_w = param(1 - ramp ** (0.2 * r1)), param(1 - ramp ** (0.9 * r1))
        self.x_k, self.x_v = param(1 - ramp ** (0.7 * r1)), param(1 - ramp ** (0.7 * r1))
        self.x_a, self.x_g = param(1 - ramp ** (0.9 * r1)), param(1 - ramp ** (0.2 * r1))
        decay_ramp = -6 + 6 * (np.arange(c) / (c - 1)) ** (1 + r0 ** 0.3)
        self.w0 = param(decay_ramp + 0.5 + 2.5 * zigzag)
        self.w1, self.w2 = param(np.zeros((c, d_w))), up(d_w)
        self.a0, self.a1, self.a2 = param(-0.19 + 0.3 * zigzag + 0.4 * linear_c), param(np.zeros((c, d_a))), up(d_a)
        if layer_id > 0:       # layer 0's value is the one the others mix in
            self.v0, self.v1, self.v2 = param(0.73 - 0.4 * linear_c), param(np.zeros((c, d_v))), up(d_v)
        self.g1, self.g2 = param(np.zeros((c, d_g))), up(d_g)
        self.k_k, self.k_a = param(0.71 - 0.1 * linear_c), param(np.full(c, 1.02))
        self.r_k = param(np.full((h, n), -0.04))
        make = lambda gain: linear(c, c, rngs=rngs, dtype=dtype, init=orthogonal(gain))
        self.receptance, self.key, self.value, self.output = make(1.0), make(0.1), make(1.0), make(0.0)
        self.ln_x = HeadGroupNorm(c, h, eps=LN_X_EPS)
        self.ln_x.weight[...] = jnp.full((c,), ((1 + layer_id) / n_layer) ** 0.7, jnp.float32)
        if time_state:
            self.time_state = time_state_param(h, n)     # state tuning: [H, N, N]

    def init_state(self, batch: int, max_len: int = 0) -> dict:
        """{"shift": [B, C], "wkv": [B, H, N, N]}: a constant size whatever `max_len`."""
        return heads_state(batch, self.n_head, self.head_size, getattr(self, "time_state", None))

    def mix(self, x, state, v_first=None):
        """x [B, T, C]; state {"shift": [B, C], "wkv": [B, H, N, N]}; v_first: the first layer's
        values (None in layer 0). Returns (out [B, T, C], new state, v_first)."""
        b, t, c = x.shape
        p = lambda a: a[...].astype(x.dtype)
        dx = token_shift(x, state["shift"]) - x
        xr, xw, xk, xv, xa, xg = (x + dx * p(getattr(self, f"x_{m}")) for m in MIXES)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        w_lora = (jnp.tanh(xw @ p(self.w1)) @ p(self.w2)).astype(jnp.float32)
        a = jax.nn.sigmoid(p(self.a0) + (xa @ p(self.a1)) @ p(self.a2))
        g = jax.nn.sigmoid(xg @ p(self.g1)) @ p(self.g2)
        heads = lambda z: z.reshape(b, t, self.n_head, self.head_size)                 # [B, T, H, N]
        kk = heads(k * p(self.k_k)).astype(jnp.float32)
        kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)    # torch's F.normalize
        k = k * (1 + (a - 1) * p(self.k_a))
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * jax.nn.sigmoid(p(self.v0) + (xv @ p(self.v1)) @ p(self.v2))
        w = jnp.exp(-DECAY_SCALE * jax.nn.sigmoid(self.w0[...].astype(jnp.float32) + w_lora))
        args = (heads(r), heads(k), heads(v), heads(w), -kk, kk * heads(a).astype(jnp.float32))
        y, wkv_state = wkv7(*args, state["wkv"], chunk_size=self.chunk_size)     # step / chunked
        y = self.ln_x(y.reshape(b, t, c).astype(x.dtype))
        bonus = jnp.sum(heads(r * k) * p(self.r_k), axis=-1, keepdims=True) * heads(v)  # [B, T, H, N]
        y = y + bonus.reshape(b, t, c)
        return self.output(y * g), {"shift": x[:, -1].astype(jnp.float32), "wkv": wkv_state}, v_first

    def __call__(self, x, *, start=0, state=None, v_first=None):
        """The causal family's sub-layer interface: x [B, T, C]; state or None for a fresh sequence
        (the state carries the position, so `start` is not needed); v_first: the first time_mix7's
        values, handed on by the blocks. Returns (out, new state, aux {"v_first": values})."""
        if state is None:
            state = self.init_state(x.shape[0])
        out, new_state, v_first = self.mix(x, state, v_first)
        return out, new_state, {"v_first": v_first}
