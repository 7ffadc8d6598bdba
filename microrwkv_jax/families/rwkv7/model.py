"""RWKV-7 "Goose" (BlinkDL's x070), exactly as BlinkDL's `rwkv` package runs it: the generalised
delta rule with a per-token decay, an in-context learning rate and a value residual from layer 0.

    TimeMix:  dx = x_{t-1} - x;  x_{r,w,k,v,a,g} = x + dx * x_{r,w,k,v,a,g}
              r, k, v = W_{r,k,v} x_{r,k,v}                                     heads of N channels
              w = exp(-e^-0.5 sigmoid(w0 + tanh(x_w w1) w2))         decay in [e^(-e^-0.5), 1), float32
              a = sigmoid(a0 + (x_a a1) a2)                                     in-context learning rate
              g = sigmoid(x_g g1) g2                                            the output gate (LoRA)
              kappa = normalise_per_head(k * k_k);  k = k * (1 + (a - 1) * k_a)
              layer 0: v_first = v;  later layers: v = v + (v_first - v) * sigmoid(v0 + (x_v v1) v2)
              y = WKV7(r, k, v, w, -kappa, kappa * a)      (BlinkDL's S[value, key]:
                                                            S <- S diag(w) - S kappa (kappa a)^T + v k^T)
              y = GroupNorm_H(y) + (sum_head(r * k * r_k)) v;  out = W_o (y * g)
    ChannelMix: k = x + dx * x_k;  out = W_v relu(W_k k)^2                      (no receptance)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families.blinkdl import (LN_X_EPS, Block, RecurrentLM, check_heads_config, heads_state,
                                           time_state_param)
from microrwkv_jax.flops import head_flops
from microrwkv_jax.layers.linears import linear
from microrwkv_jax.layers.normalization import HeadGroupNorm
from microrwkv_jax.layers.rwkv import token_shift
from microrwkv_jax.ops.wkv7 import wkv7

DECAY_SCALE = math.exp(-0.5)      # w = exp(-e^-0.5 * sigmoid(.)): each token keeps at least e^(-e^-0.5) = 0.545
MIXES = ("r", "w", "k", "v", "a", "g")
check_config = check_heads_config


def ffn_dim(config: ModelConfig) -> int:
    return config.ffn_dim or 4 * config.n_embd


def lora_dims(config: ModelConfig) -> tuple:
    """(decay, in-context learning rate, value residual, gate) ranks: the config's, or the rule of
    RWKV-LM's RWKV-v7/train_temp for the width C (multiples of 32, at least 32, of 2.5 sqrt(C),
    2.5 sqrt(C), 1.7 sqrt(C), 5 sqrt(C); at C = 768 the 0.1B World model's 64, 64, 32, 128)."""
    if config.lora_dims:
        return config.lora_dims
    rank = lambda x: max(32, int(round(x / 32)) * 32)
    root = config.n_embd ** 0.5
    return rank(2.5 * root), rank(2.5 * root), rank(1.7 * root), rank(5 * root)


def channel_profiles(c: int, n: int):
    """BlinkDL's per-channel init profiles over C channels in heads of N: `linear` from -0.5 to
    0.5, `zigzag` a signed square within each head (-1 .. 1), and the ramp i / C."""
    i = np.arange(c)
    linear = i / (c - 1) - 0.5
    zigzag = ((i % n) - (n - 1) / 2) / ((n - 1) / 2)
    return linear, zigzag * np.abs(zigzag), i / c


def orthogonal(gain: float):
    """An orthogonal initializer (torch's nn.init.orthogonal_, gain `gain`)."""
    return nnx.initializers.orthogonal(scale=gain) if gain else nnx.initializers.zeros


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """r, k, v, o, the four LoRAs, the channel mix and the delta rule's state products
    (about 8 H N^2: the decay, a^T S, the rank-one and k^T v updates, r S) and the head."""
    c, hidden = config.n_embd, ffn_dim(config)
    lora = 2 * c * sum(lora_dims(config))
    matrices = 4 * c * c + lora + 2 * c * hidden
    return config.n_layer * (2 * matrices + 8 * c * config.head_size) + head_flops(c, config.padded_vocab_size)


class TimeMix(nnx.Module):
    """Initialised as RWKV-LM's RWKV-v7/train_temp initialises a model to train from scratch."""

    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        c, h, n, dtype = config.n_embd, config.n_head, config.head_size, jnp.dtype(config.dtype)
        d_w, d_a, d_v, d_g = lora_dims(config)
        self.layer_id, self.n_head, self.head_size, self.chunk_size = layer_id, h, n, config.chunk_size
        r0, r1 = layer_id / max(config.n_layer - 1, 1), 1.0 - layer_id / config.n_layer
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
        if config.time_state:
            self.time_state = time_state_param(config)     # state tuning: [H, N, N]
        self.ln_x.weight[...] = jnp.full((c,), ((1 + layer_id) / config.n_layer) ** 0.7, jnp.float32)

    def init_state(self, batch: int) -> dict:
        return heads_state(batch, self.n_head, self.head_size, getattr(self, "time_state", None))

    def __call__(self, x, state, v_first=None):
        """x [B, T, C]; state {"shift": [B, C], "wkv": [B, H, N, N]}; v_first: layer 0's values
        (None in layer 0). Returns (out [B, T, C], new state, v_first)."""
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


class ChannelMix(nnx.Module):
    """value(relu(key(x + (x_{t-1} - x) * x_k))^2)."""

    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        c, dtype = config.n_embd, jnp.dtype(config.dtype)
        r1 = 1.0 - layer_id / config.n_layer
        self.x_k = nnx.Param(jnp.asarray(1 - (np.arange(c) / c) ** (r1 ** 4), jnp.float32))
        self.key = linear(c, ffn_dim(config), rngs=rngs, dtype=dtype, init=orthogonal(1.0))
        self.value = linear(ffn_dim(config), c, rngs=rngs, dtype=dtype, init=orthogonal(0.0))

    def __call__(self, x, *, state):
        """x [B, T, C]; state {"shift": [B, C]} -> (out [B, T, C], new state)."""
        dx = token_shift(x, state["shift"]) - x
        hidden = jnp.square(nnx.relu(self.key(x + dx * self.x_k[...].astype(x.dtype))))
        return self.value(hidden), {"shift": x[:, -1].astype(jnp.float32)}


class RWKV7(RecurrentLM):
    """`model(tokens [B, T])` -> float32 logits [B, T, vocab_size]. A new model starts from RWKV-LM's
    RWKV-v7/train_temp initialisation: the embedding uniform in +-1e-4, the head orthogonal at gain
    0.5 sqrt(V / C) (V > C), every block's matrices orthogonal (key 0.1, output and value of the
    channel mix 0), ln_x's scale ((1 + layer) / L)^0.7, the per-channel vectors as in `TimeMix`."""

    arch = "rwkv7"
    check_config = staticmethod(check_config)

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        v, c = config.padded_vocab_size, config.n_embd
        self.emb.embedding[...] = jax.random.uniform(rngs.params(), (v, c), jnp.float32, -1e-4, 1e-4)
        gain = 0.5 * np.sqrt(v / c) if v > c else 0.5
        self.head[...] = orthogonal(gain)(rngs.params(), (v, c), jnp.float32)

    @staticmethod
    def make_block(config: ModelConfig, layer_id: int, rngs: nnx.Rngs) -> Block:
        return Block(config, TimeMix(config, layer_id, rngs=rngs), ChannelMix(config, layer_id, rngs=rngs), rngs=rngs)
