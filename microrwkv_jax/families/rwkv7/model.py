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
from microrwkv_jax.families.blinkdl import LN_X_EPS, Block, RecurrentLM, check_heads_config, heads_state
from microrwkv_jax.flops import head_flops
from microrwkv_jax.layers.linears import STD, linear
from microrwkv_jax.layers.normalization import HeadGroupNorm
from microrwkv_jax.layers.rwkv import token_shift
from microrwkv_jax.ops.wkv7 import wkv7

DECAY_SCALE = math.exp(-0.5)      # w = exp(-e^-0.5 * sigmoid(.)): each token keeps at least e^(-e^-0.5) = 0.545
MIXES = ("r", "w", "k", "v", "a", "g")
check_config = check_heads_config


def ffn_dim(config: ModelConfig) -> int:
    return config.ffn_dim or 4 * config.n_embd


def lora_dims(config: ModelConfig) -> tuple:
    """(decay, in-context learning rate, value residual, gate) ranks: the config's, or BlinkDL's
    rule for the width C (multiples of 32 of 1.8 sqrt(C), 1.8 sqrt(C), 1.3 sqrt(C), 0.6 C^0.8)."""
    if config.lora_dims:
        return config.lora_dims
    rank = lambda x: max(32, int(round(x / 32)) * 32)
    c = config.n_embd
    return rank(1.8 * c ** 0.5), rank(1.8 * c ** 0.5), rank(1.3 * c ** 0.5), rank(0.6 * c ** 0.8)


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """r, k, v, o, the four LoRAs, the channel mix and the delta rule's state products
    (about 8 H N^2: the decay, a^T S, the rank-one and k^T v updates, r S) and the head."""
    c, hidden = config.n_embd, ffn_dim(config)
    lora = 2 * c * sum(lora_dims(config))
    matrices = 4 * c * c + lora + 2 * c * hidden
    return config.n_layer * (2 * matrices + 8 * c * config.head_size) + head_flops(c, config.padded_vocab_size)


class TimeMix(nnx.Module):
    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        c, h, n, dtype = config.n_embd, config.n_head, config.head_size, jnp.dtype(config.dtype)
        d_w, d_a, d_v, d_g = lora_dims(config)
        self.layer_id, self.n_head, self.head_size, self.chunk_size = layer_id, h, n, config.chunk_size
        r0, r1 = layer_id / max(config.n_layer - 1, 1), 1.0 - layer_id / config.n_layer
        ramp = np.arange(c) / c
        param = lambda a: nnx.Param(jnp.asarray(a, jnp.float32))
        small = lambda *shape: nnx.Param(0.1 * nnx.initializers.orthogonal()(rngs.params(), shape, jnp.float32))
        self.x_r, self.x_w = param(1 - ramp ** (0.2 * r1)), param(1 - ramp ** (0.9 * r1))
        self.x_k, self.x_v = param(1 - ramp ** (0.9 * r1)), param(1 - ramp ** (0.4 * r1))
        self.x_a, self.x_g = param(1 - ramp ** (0.9 * r1)), param(1 - ramp ** (0.2 * r1))
        channel = np.arange(c) / max(c - 1, 1)
        self.w0 = param(-7 + 5 * channel ** (0.85 + 1.0 * r0 ** 0.5) + 0.5)
        self.w1, self.w2 = param(np.zeros((c, d_w))), small(d_w, c)
        self.a0, self.a1, self.a2 = param(np.zeros(c)), param(np.zeros((c, d_a))), small(d_a, c)
        if layer_id > 0:       # layer 0's value is the one the others mix in
            self.v0, self.v1, self.v2 = param(np.ones(c)), param(np.zeros((c, d_v))), small(d_v, c)
        self.g1, self.g2 = param(np.zeros((c, d_g))), small(d_g, c)
        self.k_k, self.k_a = param(np.full(c, 0.85)), param(np.ones(c))
        self.r_k = param(np.full((h, n), -0.04))
        make = lambda std=STD: linear(c, c, rngs=rngs, dtype=dtype, std=std)
        self.receptance, self.key, self.value = make(), make(), make()
        self.output = make(STD / np.sqrt(2 * config.n_layer))
        self.ln_x = HeadGroupNorm(c, h, eps=LN_X_EPS)

    def init_state(self, batch: int) -> dict:
        return heads_state(batch, self.n_head, self.head_size)

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
        self.key = linear(c, ffn_dim(config), rngs=rngs, dtype=dtype)
        self.value = linear(ffn_dim(config), c, rngs=rngs, dtype=dtype, std=STD / np.sqrt(2 * config.n_layer))

    def __call__(self, x, *, state):
        """x [B, T, C]; state {"shift": [B, C]} -> (out [B, T, C], new state)."""
        dx = token_shift(x, state["shift"]) - x
        hidden = jnp.square(nnx.relu(self.key(x + dx * self.x_k[...].astype(x.dtype))))
        return self.value(hidden), {"shift": x[:, -1].astype(jnp.float32)}


class RWKV7(RecurrentLM):
    """`model(tokens [B, T])` -> float32 logits [B, T, vocab_size]."""

    arch = "rwkv7"
    check_config = staticmethod(check_config)

    @staticmethod
    def make_block(config: ModelConfig, layer_id: int, rngs: nnx.Rngs) -> Block:
        return Block(config, TimeMix(config, layer_id, rngs=rngs), ChannelMix(config, layer_id, rngs=rngs), rngs=rngs)
