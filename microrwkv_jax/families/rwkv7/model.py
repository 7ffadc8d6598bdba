"""RWKV-7 "Goose" (BlinkDL's x070), exactly as BlinkDL's `rwkv` package runs it: BlinkDL's block
around RWKV-7 time mixing (`microrwkv_jax.layers.rwkv7`, the generalised delta rule) and its
channel mix:

    ChannelMix: k = x + dx * x_k;  out = W_v relu(W_k k)^2                      (no receptance)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families.blinkdl import Block, RecurrentLM, check_heads_config
from microrwkv_jax.flops import head_flops
from microrwkv_jax.layers.linears import linear
from microrwkv_jax.layers.rwkv import token_shift
from microrwkv_jax.layers.rwkv7 import TimeMix7, default_lora_ranks, orthogonal, time_mix7_flops

check_config = check_heads_config


def ffn_dim(config: ModelConfig) -> int:
    return config.ffn_dim or 4 * config.n_embd


def lora_dims(config: ModelConfig) -> tuple:
    """(decay, in-context learning rate, value residual, gate) ranks: the config's, or RWKV-LM's
    rule for the width (`layers.rwkv7.default_lora_ranks`)."""
    return config.lora_dims or default_lora_ranks(config.n_embd)


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """The time mix (`time_mix7_flops`), the channel mix and the head."""
    c = config.n_embd
    per_layer = time_mix7_flops(c, config.head_size, lora_dims(config), config.n_layer) + 2 * 2 * c * ffn_dim(config)
    return config.n_layer * per_layer + head_flops(c, config.padded_vocab_size)


class TimeMix(TimeMix7):
    """RWKV-7 time mixing in BlinkDL's block: (x, state, v_first) -> (out, state, v_first)."""

    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        super().__init__(config.n_embd, config.n_head, layer_id, config.n_layer, lora_dims(config), rngs=rngs,
                         chunk_size=config.chunk_size, dtype=jnp.dtype(config.dtype), time_state=config.time_state)

    def __call__(self, x, state, shared=None):
        return self.mix(x, state, shared)


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
