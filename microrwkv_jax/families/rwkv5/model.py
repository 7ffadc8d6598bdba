"""RWKV-5 "Eagle" (BlinkDL's x052, RWKV-5.2; 5.1 files read into it), exactly as BlinkDL's `rwkv`
package runs it: multi-head matrix-valued WKV with a decay per key channel, a SiLU gate and a
per-head GroupNorm, RWKV-4's interpolated token shift and channel mix.

    x = x + TimeMix(ln1(x));  x = x + ChannelMix(ln2(x))          (inside the shell of `blinkdl`)

    TimeMix:  r, k, v, g = W_{r,k,v,g} lerp(x, x_{t-1}, time_mix_{r,k,v,g});  heads of N channels
              y = WKV5(r, k, v, w = exp(-exp(time_decay)) [H, N], u = time_faaaa [H, N])
              out = W_o (GroupNorm_H(y) * silu(g))
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
from microrwkv_jax.layers.rwkv import (LN_X_EPS, LerpChannelMix, gated_heads_output, heads_state, lerp,
                                      time_state_param, token_shift)

ffn_dim = ffn_dim_3_5
check_config = check_heads_config


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Model FLOPs of one token: r, k, v, g, o and the channel mix's three matrices, the WKV's
    state products (4 H N^2: read r S, write k^T v) and the head."""
    c, hidden = config.n_embd, ffn_dim(config)
    matrices = 5 * c * c + 2 * c * hidden + c * c
    return config.n_layer * (2 * matrices + 4 * c * config.head_size) + head_flops(c, config.padded_vocab_size)


class TimeMix(nnx.Module):
    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        c, h, n, dtype = config.n_embd, config.n_head, config.head_size, jnp.dtype(config.dtype)
        self.n_head, self.head_size, self.chunk_size = h, n, config.chunk_size
        r0, r1 = layer_id / max(config.n_layer - 1, 1), 1.0 - layer_id / config.n_layer
        ramp = np.arange(c) / c
        param = lambda a: nnx.Param(jnp.asarray(a, jnp.float32))
        self.time_mix_k, self.time_mix_v = param(ramp ** r1), param(ramp ** r1 + 0.3 * r0)
        self.time_mix_r, self.time_mix_g = param(ramp ** (0.5 * r1)), param(ramp ** (0.5 * r1))
        channel = (np.arange(c) / max(c - 1, 1)).reshape(h, n)
        self.time_decay = param(-6 + 5 * channel ** (0.7 + 1.3 * r0))
        self.time_faaaa = param(r0 * (1 - channel) + 0.1 * ((np.arange(c).reshape(h, n) + 1) % 3 - 1))
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
        xx = token_shift(x, state["shift"])
        heads = lambda a: a.reshape(b, t, self.n_head, self.head_size)             # [B, T, H, N]
        r = heads(self.receptance(lerp(x, xx, self.time_mix_r[...])))
        k = heads(self.key(lerp(x, xx, self.time_mix_k[...])))
        v = heads(self.value(lerp(x, xx, self.time_mix_v[...])))
        g = nnx.silu(self.gate(lerp(x, xx, self.time_mix_g[...])))
        w = jnp.exp(-jnp.exp(self.time_decay[...].astype(jnp.float32)))            # [H, N]
        out, new_state = gated_heads_output(x, r, k, v, w, self.time_faaaa[...], g, state["wkv"], self.ln_x,
                                            self.output, self.chunk_size)
        return out, new_state, shared


class RWKV5(RecurrentLM):
    """`model(tokens [B, T])` -> float32 logits [B, T, vocab_size]."""

    arch = "rwkv5"
    check_config = staticmethod(check_config)

    @staticmethod
    def make_block(config: ModelConfig, layer_id: int, rngs: nnx.Rngs) -> Block:
        ffn = LerpChannelMix(config.n_embd, ffn_dim(config), layer_id, config.n_layer, rngs=rngs,
                             dtype=jnp.dtype(config.dtype))
        return Block(config, TimeMix(config, layer_id, rngs=rngs), ffn, rngs=rngs)
