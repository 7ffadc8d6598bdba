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
from microrwkv_jax.layers.linears import STD, linear, linear_map_param
from microrwkv_jax.layers.normalization import layer_norm
from microrwkv_jax.layers.output_head import tied_logits
from microrwkv_jax.layers.rwkv import token_shift
from microrwkv_jax.ops.wkv4 import wkv4_initial_state, wkv4_scan, wkv4_step


def check_config(config: ModelConfig) -> None:
    """RWKV-4 has no heads: n_head and n_kv_head must be 1."""
    if config.n_head != 1 or config.n_kv_head != 1:
        config.fail("n_head", "RWKV-4 has no heads: n_head and n_kv_head must be 1")


def _mix(x, shifted, mix):
    """x * mix + shifted * (1 - mix): RWKV-4's token-shift interpolation."""
    mix = mix.astype(x.dtype)
    return x * mix + shifted * (1 - mix)


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

    def __call__(self, x, state):
        """x [B, T, C]; state {"shift": [B, C], "wkv": (a, b, p)} -> (out [B, T, C], new state)."""
        xx = token_shift(x, state["shift"])
        k = self.key(_mix(x, xx, self.time_mix_k[...]))
        v = self.value(_mix(x, xx, self.time_mix_v[...]))
        r = nnx.sigmoid(self.receptance(_mix(x, xx, self.time_mix_r[...])))
        w, u = -jnp.exp(self.time_decay[...].astype(jnp.float32)), self.time_first[...].astype(jnp.float32)
        if x.shape[1] == 1:
            y, wkv = wkv4_step(k[:, 0], v[:, 0], w, u, state["wkv"])
            y = y[:, None]
        else:
            y, wkv = wkv4_scan(k, v, w, u, state["wkv"])
        return self.output(r * y.astype(x.dtype)), {"shift": x[:, -1].astype(jnp.float32), "wkv": wkv}


class ChannelMix(nnx.Module):
    def __init__(self, c: int, hidden: int, layer_id: int, n_layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        r1 = 1.0 - layer_id / n_layer
        ramp = np.arange(c) / c
        self.time_mix_k = nnx.Param(jnp.asarray(ramp ** r1, jnp.float32))
        self.time_mix_r = nnx.Param(jnp.asarray(ramp ** r1, jnp.float32))
        self.key = linear(c, hidden, rngs=rngs, dtype=dtype)
        self.receptance = linear(c, c, rngs=rngs, dtype=dtype)
        self.value = linear(hidden, c, rngs=rngs, dtype=dtype, std=STD / np.sqrt(2 * n_layer))

    def __call__(self, x, state):
        """x [B, T, C]; state {"shift": [B, C]} -> (out [B, T, C], new state)."""
        xx = token_shift(x, state["shift"])
        hidden = jnp.square(nnx.relu(self.key(_mix(x, xx, self.time_mix_k[...]))))
        out = nnx.sigmoid(self.receptance(_mix(x, xx, self.time_mix_r[...]))) * self.value(hidden)
        return out, {"shift": x[:, -1].astype(jnp.float32)}


class Block(nnx.Module):
    """x = x + att(ln1(x)); x = x + ffn(ln2(x))."""

    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        c, dtype = config.n_embd, jnp.dtype(config.dtype)
        self.ln1, self.ln2 = layer_norm(c, True, rngs, dtype), layer_norm(c, True, rngs, dtype)
        self.att = TimeMix(c, layer_id, config.n_layer, rngs=rngs, dtype=dtype)
        self.ffn = ChannelMix(c, config.mlp_ratio * c, layer_id, config.n_layer, rngs=rngs, dtype=dtype)

    def init_state(self, batch: int) -> dict:
        c = self.ln1.scale.shape[0]
        return {"att": {"shift": jnp.zeros((batch, c), jnp.float32), "wkv": wkv4_initial_state(batch, c)},
                "ffn": {"shift": jnp.zeros((batch, c), jnp.float32)}}

    def __call__(self, x, state):
        h, att_state = self.att(self.ln1(x), state["att"])
        x = x + h
        h, ffn_state = self.ffn(self.ln2(x), state["ffn"])
        return x + h, {"att": att_state, "ffn": ffn_state}


class RWKV4(nnx.Module):
    """`model(tokens [B, T])` -> float32 logits [B, T, vocab_size]."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.arch != "rwkv4":
            raise ValueError(f"arch={config.arch!r}: RWKV4 needs arch='rwkv4'")
        check_config(config)
        self.config = config
        c, dtype = config.n_embd, jnp.dtype(config.dtype)
        self.emb = nnx.Embed(config.padded_vocab_size, c, embedding_init=nnx.initializers.normal(STD), rngs=rngs)
        self.ln0 = layer_norm(c, True, rngs, dtype)
        self.blocks = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_out = layer_norm(c, True, rngs, dtype)
        self.head = linear_map_param(rngs, STD, (config.padded_vocab_size, c))

    def init_state(self, batch: int, max_len: int = 0):
        """The recurrent state: a constant size whatever `max_len`."""
        return {"pos": jnp.zeros((), jnp.int32), "blocks": [block.init_state(batch) for block in self.blocks]}

    def forward(self, tokens, state=None):
        """tokens: int [B, T]; state from `init_state` or None. Returns (logits [B, T, V], state, aux)."""
        x, new_state, aux = self.features(tokens, state)
        return tied_logits(x, self.output_embedding(), self.config.vocab_size), new_state, aux

    def features(self, tokens, state=None):
        """`forward` without the head: (final hidden states [B, T, C], new state or None, aux)."""
        fresh = state is None
        if fresh:
            state = self.init_state(tokens.shape[0])
        x = self.ln0(self.emb.embedding[...][tokens].astype(jnp.dtype(self.config.dtype)))
        new_blocks = []
        for block, block_state in zip(self.blocks, state["blocks"]):
            x, block_state = block(x, block_state)
            new_blocks.append(block_state)
        new_state = None if fresh else {"pos": state["pos"] + tokens.shape[1], "blocks": new_blocks}
        return self.ln_out(x), new_state, {"moe_aux_loss": jnp.zeros((), jnp.float32), "expert_fraction": None}

    def output_embedding(self):
        """The untied head's matrix [padded vocab, C]."""
        return self.head[...]

    def __call__(self, tokens):
        return self.forward(tokens)[0]
