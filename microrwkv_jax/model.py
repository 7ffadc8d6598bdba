"""The causal MicroRWKV language model: RWKV time/channel mixing, sliding-window attention,
grouped-query attention and a tiny mixture of experts, each a pre-norm residual sub-layer.

    tokens [B, T] -> embedding -> L x Block -> LayerNorm -> tied output head -> logits [B, T, V]

Every sub-layer is causal, so the model also runs as a recurrence: `init_state` makes a
decoding state (WKV states, token-shift vectors, attention key/value caches) and
`forward(tokens, state)` continues a sequence from it, a chunk or a token at a time.
There is no learned absolute position embedding (attention uses rotary positions), so
generation is not bounded by `block_size`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.layers.attention import CausalSelfAttention
from microrwkv_jax.layers.linears import STD
from microrwkv_jax.layers.mlp import MLP
from microrwkv_jax.layers.moe import TinyMoE
from microrwkv_jax.layers.normalization import RMSNorm, layer_norm
from microrwkv_jax.layers.output_head import tied_logits
from microrwkv_jax.layers.rwkv import ChannelMix, TimeMix


def _sublayer(name: str, config: ModelConfig, layer_id: int, rngs: nnx.Rngs):
    c, dtype = config, jnp.dtype(config.dtype)
    if name == "time_mix":
        return TimeMix(c.n_embd, c.n_head, layer_id, c.n_layer, rngs=rngs, bias=c.bias,
                       chunk_size=c.chunk_size, dtype=dtype)
    if name == "channel_mix":
        return ChannelMix(c.n_embd, layer_id, c.n_layer, rngs=rngs, bias=c.bias, dtype=dtype)
    if name == "swa":
        return CausalSelfAttention(c.n_embd, c.n_head, c.n_head, c.swa_window, c.n_layer, rngs=rngs,
                                   rope_base=c.rope_base, dtype=dtype)
    if name == "gqa":
        return CausalSelfAttention(c.n_embd, c.n_head, c.n_kv_head, c.gqa_window, c.n_layer, rngs=rngs,
                                   rope_base=c.rope_base, dtype=dtype)
    if name == "moe":
        return TinyMoE(c.n_embd, c.num_experts, c.num_active_experts, c.expert_dim, c.n_layer,
                       rngs=rngs, dtype=dtype)
    if name == "mlp":
        return MLP(c.n_embd, c.mlp_ratio, c.n_layer, rngs=rngs, dtype=dtype)
    raise ValueError(f"layers: unknown sub-layer {name!r}")


class Block(nnx.Module):
    """x = x + sublayer(norm(x)) for each sub-layer named in `config.layers`, in order."""

    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        self.names = config.layers
        for name in self.names:
            setattr(self, f"norm_{name}", RMSNorm(config.n_embd))
            setattr(self, name, _sublayer(name, config, layer_id, rngs))

    def init_state(self, batch: int, max_len: int, n_embd: int):
        state = {}
        for name in self.names:
            layer = getattr(self, name)
            if isinstance(layer, CausalSelfAttention):
                state[name] = layer.init_state(batch, max_len)
            elif isinstance(layer, (TimeMix, ChannelMix)):
                state[name] = layer.init_state(batch, n_embd)
        return state

    def __call__(self, x, start=0, state=None):
        """x: [B, T, C]. Returns (x, new state or None, MoE aux loss or None, expert fraction or None)."""
        new_state, aux_loss, fraction = {}, None, None
        for name in self.names:
            layer, h = getattr(self, name), getattr(self, f"norm_{name}")(x)
            layer_state = None if state is None else state.get(name)
            if isinstance(layer, (TimeMix, ChannelMix)):
                h, new_state[name] = layer(h, layer_state)
            elif isinstance(layer, CausalSelfAttention):
                h, new_state[name] = layer(h, start, layer_state)
            elif isinstance(layer, TinyMoE):
                h, aux_loss, fraction = layer(h)
            else:
                h = layer(h)
            x = x + h
        return x, (None if state is None else new_state), aux_loss, fraction


class LanguageModel(nnx.Module):
    """The causal model. `model(tokens)` -> float32 logits [B, T, vocab_size]."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.arch != "causal":
            raise ValueError(f"arch={config.arch!r}: LanguageModel is the causal model; "
                             "use microrwkv_jax.published.PublishedModel")
        self.config = config
        self.wte = nnx.Embed(config.padded_vocab_size, config.n_embd,
                             embedding_init=nnx.initializers.normal(STD), rngs=rngs)
        self.blocks = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_f = layer_norm(config.n_embd, config.bias, rngs, jnp.dtype(config.dtype))

    def init_state(self, batch: int, max_len: int):
        """A decoding state for `batch` sequences of up to `max_len` tokens (bounds global attention's cache)."""
        return {"pos": jnp.zeros((), jnp.int32),
                "blocks": [blk.init_state(batch, max_len, self.config.n_embd) for blk in self.blocks]}

    def forward(self, tokens, state=None):
        """tokens: int [B, T]; state: from `init_state` (or a previous `forward`), or None.

        Returns (logits float32 [B, T, vocab_size], new state or None, aux) where aux holds
        "moe_aux_loss" (mean over MoE layers; 0 without MoE) and "expert_fraction" [L_moe, E].
        """
        x, new_state, aux = self.features(tokens, state)
        return tied_logits(x, self.wte.embedding[...], self.config.vocab_size), new_state, aux

    def features(self, tokens, state=None):
        """`forward` without the output head: (final hidden states [B, T, C], new state, aux)."""
        dtype = jnp.dtype(self.config.dtype)
        x = self.wte.embedding[...][tokens].astype(dtype)
        start = 0 if state is None else state["pos"]
        new_blocks, aux_losses, fractions = [], [], []
        for i, block in enumerate(self.blocks):
            x, block_state, aux_loss, fraction = block(x, start, None if state is None else state["blocks"][i])
            new_blocks.append(block_state)
            if aux_loss is not None:
                aux_losses.append(aux_loss)
                fractions.append(fraction)
        aux = {"moe_aux_loss": jnp.mean(jnp.stack(aux_losses)) if aux_losses else jnp.zeros((), jnp.float32),
               "expert_fraction": jnp.stack(fractions) if fractions else None}
        new_state = None if state is None else {"pos": state["pos"] + tokens.shape[1], "blocks": new_blocks}
        return self.ln_f(x), new_state, aux

    def __call__(self, tokens):
        return self.forward(tokens)[0]
