"""RWKV-6 "Finch" (BlinkDL's x060), exactly as BlinkDL's `rwkv` package runs it: RWKV-5's
multi-head WKV with a data-dependent token shift and a data-dependent decay per token and key
channel, both through small low-rank (LoRA) projections.

    TimeMix:  dx = x_{t-1} - x
              m_{w,k,v,r,g} = tanh((x + dx * time_maa_x) W1) W2       five LoRAs, rank D_mix
              x_{w,k,v,r,g} = x + dx * (time_maa_{w,k,v,r,g} + m_{w,k,v,r,g})
              r, k, v, g = W_{r,k,v,g} x_{r,k,v,g};  heads of N channels
              w_t = exp(-exp(time_decay + tanh(x_w D1) D2))            float32, [B, T, H, N]
              y = WKV5(r, k, v, w_t, u = time_faaaa [H, N]);  out = W_o (GroupNorm_H(y) * silu(g))
    ChannelMix: x051a's (time_maa_k, time_maa_r), of width ffn_dim.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families.blinkdl import Block, RecurrentLM, check_heads_config, ffn_dim_3_5
from microrwkv_jax.flops import head_flops
from microrwkv_jax.layers.linears import STD, linear
from microrwkv_jax.layers.normalization import HeadGroupNorm
from microrwkv_jax.layers.rwkv import (LN_X_EPS, ChannelMix, gated_heads_output, heads_state, time_state_param,
                                      token_shift)

MIXES = ("w", "k", "v", "r", "g")          # the order of the five token-shift LoRAs in time_maa_w2
ffn_dim = ffn_dim_3_5
check_config = check_heads_config


def lora_dims(config: ModelConfig) -> tuple:
    """(token-shift LoRA rank, decay LoRA rank): the config's, or RWKV-6's 32 and 64 (64 and 128 from C = 4096)."""
    return config.lora_dims or ((32, 64) if config.n_embd < 4096 else (64, 128))


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    c, hidden = config.n_embd, ffn_dim(config)
    mix, decay = lora_dims(config)
    matrices = 5 * c * c + 2 * c * hidden + c * c + 2 * 5 * c * mix + 2 * c * decay
    return config.n_layer * (2 * matrices + 4 * c * config.head_size) + head_flops(c, config.padded_vocab_size)


class TimeMix(nnx.Module):
    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        c, h, n, dtype = config.n_embd, config.n_head, config.head_size, jnp.dtype(config.dtype)
        mix, decay = lora_dims(config)
        self.n_head, self.head_size, self.chunk_size = h, n, config.chunk_size
        r0, r1 = layer_id / max(config.n_layer - 1, 1), 1.0 - layer_id / config.n_layer
        ramp = np.arange(c) / c
        param = lambda a: nnx.Param(jnp.asarray(a, jnp.float32))
        self.time_maa_x = param(1 - ramp ** r1)
        self.time_maa_w, self.time_maa_k = param(1 - ramp ** r1), param(1 - ramp ** r1)
        self.time_maa_v, self.time_maa_r = param(1 - (ramp ** r1 + 0.3 * r0)), param(1 - ramp ** (0.5 * r1))
        self.time_maa_g = param(1 - ramp ** (0.5 * r1))
        normal = lambda std, shape: nnx.Param(std * nnx.initializers.normal(1.0)(rngs.params(), shape, jnp.float32))
        self.time_maa_w1 = param(np.zeros((c, 5 * mix)))
        self.time_maa_w2 = normal(0.01, (5, mix, c))
        channel = np.arange(c) / max(c - 1, 1)
        self.time_decay = param(-6 + 5 * channel ** (0.7 + 1.3 * r0))
        self.time_decay_w1 = param(np.zeros((c, decay)))
        self.time_decay_w2 = normal(0.01, (decay, c))
        self.time_faaaa = param((r0 * (1 - channel) + 0.1 * ((np.arange(c) + 1) % 3 - 1)).reshape(h, n))
        make = lambda std=STD: linear(c, c, rngs=rngs, dtype=dtype, std=std)
        self.receptance, self.key, self.value, self.gate = make(), make(), make(), make()
        self.output = make(STD / np.sqrt(2 * config.n_layer))
        self.ln_x = HeadGroupNorm(c, h, eps=LN_X_EPS)
        if config.time_state:
            self.time_state = time_state_param(h, n)     # state tuning: [H, N, N]

    def init_state(self, batch: int) -> dict:
        return heads_state(batch, self.n_head, self.head_size, getattr(self, "time_state", None))

    def __call__(self, x, state, shared=None):
        """x [B, T, C]; state {"shift": [B, C], "wkv": [B, H, N, N]} -> (out [B, T, C], new state, shared)."""
        b, t, _ = x.shape
        p = lambda a: a[...].astype(x.dtype)
        dx = token_shift(x, state["shift"]) - x
        lora_in = jnp.tanh((x + dx * p(self.time_maa_x)) @ p(self.time_maa_w1))         # [B, T, 5 D]
        lora_in = lora_in.reshape(b, t, 5, -1)                                            # [B, T, 5, D]
        mw, mk, mv, mr, mg = jnp.unstack(jnp.einsum("btfd,fdc->fbtc", lora_in, p(self.time_maa_w2)))
        xw, xk, xv, xr, xg = (x + dx * (p(base) + m) for base, m in zip(
            (self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g),
            (mw, mk, mv, mr, mg)))
        heads = lambda a: a.reshape(b, t, self.n_head, self.head_size)                   # [B, T, H, N]
        r, k, v = heads(self.receptance(xr)), heads(self.key(xk)), heads(self.value(xv))
        g = nnx.silu(self.gate(xg))
        decay = self.time_decay[...].astype(jnp.float32) + (
            jnp.tanh(xw @ p(self.time_decay_w1)) @ p(self.time_decay_w2)).astype(jnp.float32)
        w = heads(jnp.exp(-jnp.exp(decay)))                                               # [B, T, H, N] f32
        out, new_state = gated_heads_output(x, r, k, v, w, self.time_faaaa[...], g, state["wkv"], self.ln_x,
                                            self.output, self.chunk_size)
        return out, new_state, shared


class RWKV6(RecurrentLM):
    """`model(tokens [B, T])` -> float32 logits [B, T, vocab_size]."""

    arch = "rwkv6"
    check_config = staticmethod(check_config)

    @staticmethod
    def make_block(config: ModelConfig, layer_id: int, rngs: nnx.Rngs) -> Block:
        ffn = ChannelMix(config.n_embd, layer_id, config.n_layer, rngs=rngs, dtype=jnp.dtype(config.dtype),
                         hidden=ffn_dim(config))
        return Block(config, TimeMix(config, layer_id, rngs=rngs), ffn, rngs=rngs)
