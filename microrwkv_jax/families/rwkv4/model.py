"""RWKV-4, exactly (BlinkDL's RWKV-LM and `transformers`' RwkvForCausalLM): an embedding with
`ln0`, blocks of time mixing (per-channel token-shift mixes, the normalised WKV-4 recurrence with
per-channel decay exp(-exp(time_decay)) and bonus time_first, a sigmoid receptance gate) and
channel mixing (squared ReLU, receptance gate), `ln_out` and an untied head.

    tokens [B, T] -> emb -> ln0 -> L x Block -> ln_out -> head -> logits [B, T, V]

It is a recurrence: `init_state` and `forward(tokens, state)` decode at constant cost per token.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families.blinkdl import Block, RecurrentLM
from microrwkv_jax.layers.linears import STD, linear
from microrwkv_jax.layers.rwkv import LerpChannelMix, lerp, token_shift
from microrwkv_jax.ops.wkv4 import wkv4_initial_state, wkv4_scan, wkv4_step


def check_config(config: ModelConfig) -> None:
    """RWKV-4 has no heads: n_head and n_kv_head must be 1."""
    if config.n_head != 1 or config.n_kv_head != 1:
        config.fail("n_head", "RWKV-4 has no heads: n_head and n_kv_head must be 1")


class TimeMix(nnx.Module):
    def __init__(self, c: int, layer_id: int, n_layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        r0, r1 = layer_id / max(n_layer - 1, 1), 1.0 - layer_id / n_layer
        ramp = np.arange(c) / c
        param = lambda a: nnx.Param(jnp.asarray(a, jnp.float32))
        self.time_decay = param(-5 + 8 * (np.arange(c) / max(c - 1, 1)) ** (0.7 + 1.3 * r0))
        self.time_first = param(np.log(0.3) + ((np.arange(c) + 1) % 3 - 1) * 0.5)
        self.time_mix_k, self.time_mix_v = param(ramp ** r1), param(ramp ** r1 + 0.3 * r0)
        self.time_mix_r = param(ramp ** (0.5 * r1))
        make = lambda std=STD: linear(c, c, rngs=rngs, dtype=dtype, std=std)
        self.key, self.value, self.receptance, self.output = make(), make(), make(), make(STD / np.sqrt(2 * n_layer))

    def init_state(self, batch: int) -> dict:
        c = self.time_decay.shape[0]
        return {"shift": jnp.zeros((batch, c), jnp.float32), "wkv": wkv4_initial_state(batch, c)}

    def __call__(self, x, state, shared=None):
        """x [B, T, C]; state {"shift": [B, C], "wkv": (a, b, p)} -> (out [B, T, C], new state, shared)."""
        xx = token_shift(x, state["shift"])
        k = self.key(lerp(x, xx, self.time_mix_k[...]))
        v = self.value(lerp(x, xx, self.time_mix_v[...]))
        r = nnx.sigmoid(self.receptance(lerp(x, xx, self.time_mix_r[...])))
        w, u = -jnp.exp(self.time_decay[...].astype(jnp.float32)), self.time_first[...].astype(jnp.float32)
        if x.shape[1] == 1:
            y, wkv = wkv4_step(k[:, 0], v[:, 0], w, u, state["wkv"])
            y = y[:, None]
        else:
            y, wkv = wkv4_scan(k, v, w, u, state["wkv"])
        return self.output(r * y.astype(x.dtype)), {"shift": x[:, -1].astype(jnp.float32), "wkv": wkv}, shared


class RWKV4(RecurrentLM):
    """`model(tokens [B, T])` -> float32 logits [B, T, vocab_size]."""

    arch = "rwkv4"
    check_config = staticmethod(check_config)

    @staticmethod
    def make_block(config: ModelConfig, layer_id: int, rngs: nnx.Rngs) -> Block:
        c, dtype = config.n_embd, jnp.dtype(config.dtype)
        return Block(config, TimeMix(c, layer_id, config.n_layer, rngs=rngs, dtype=dtype),
                     LerpChannelMix(c, config.mlp_ratio * c, layer_id, config.n_layer, rngs=rngs, dtype=dtype),
                     rngs=rngs)
