"""The causal MicroRWKV language model: RWKV time/channel mixing (x051a's, or RWKV-7's time mixing
as "time_mix7"), sliding-window attention, grouped-query attention and a tiny mixture of experts,
each a pre-norm residual sub-layer.

    tokens [B, T] -> embedding -> L x Block -> LayerNorm -> tied output head -> logits [B, T, V]

Every sub-layer is causal, so the model also runs as a recurrence: `init_state` makes a
decoding state (WKV states, token-shift vectors, attention key/value caches) and
`forward(tokens, state)` continues a sequence from it, a chunk or a token at a time.
There is no learned absolute position embedding (attention uses rotary positions), so
generation is not bounded by `block_size`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.layers.attention import CausalSelfAttention
from microrwkv_jax.layers.linears import STD
from microrwkv_jax.layers.mlp import MLP
from microrwkv_jax.layers.moe import TinyMoE
from microrwkv_jax.layers.normalization import RMSNorm, layer_norm
from microrwkv_jax.layers.output_head import tied_logits
from microrwkv_jax.layers.remat import blockwise
from microrwkv_jax.layers.rwkv import ChannelMix, TimeMix
from microrwkv_jax.layers.rwkv7 import TimeMix7, default_lora_ranks

# Sub-layer name -> constructor (config, layer index, rngs, compute dtype). Every sub-layer has
# `__call__(x, *, start, state) -> (y, new_state, aux)` and `init_state(batch, max_len)`;
# time_mix7 also takes `v_first` (RWKV-7's value residual: the first block's time_mix7 values,
# which the later ones mix in) and returns it in its aux.
SUBLAYERS = {
    "time_mix": lambda c, i, rngs, dtype: TimeMix(c.n_embd, c.n_head, i, c.n_layer, rngs=rngs, bias=c.bias,
                                                  chunk_size=c.chunk_size, dtype=dtype),
    "time_mix7": lambda c, i, rngs, dtype: TimeMix7(c.n_embd, c.n_head, i, c.n_layer,
                                                    c.lora_dims or default_lora_ranks(c.n_embd), rngs=rngs,
                                                    chunk_size=c.chunk_size, dtype=dtype),
    "channel_mix": lambda c, i, rngs, dtype: ChannelMix(c.n_embd, i, c.n_layer, rngs=rngs, bias=c.bias, dtype=dtype),
    "swa": lambda c, i, rngs, dtype: CausalSelfAttention(c.n_embd, c.n_head, c.n_head, c.swa_window, c.n_layer,
                                                         rngs=rngs, rope_base=c.rope_base, dtype=dtype),
    "gqa": lambda c, i, rngs, dtype: CausalSelfAttention(c.n_embd, c.n_head, c.n_kv_head, c.gqa_window, c.n_layer,
                                                         rngs=rngs, rope_base=c.rope_base, dtype=dtype),
    "moe": lambda c, i, rngs, dtype: TinyMoE(c.n_embd, c.num_experts, c.num_active_experts, c.expert_dim,
                                             c.n_layer, rngs=rngs, dtype=dtype),
    "mlp": lambda c, i, rngs, dtype: MLP(c.n_embd, c.mlp_ratio, c.n_layer, rngs=rngs, dtype=dtype),
}


class Block(nnx.Module):
    """x = x + sublayer(norm(x)) for each sub-layer named in `config.layers`, in order."""

    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        self.names = config.layers
        for name in self.names:
            setattr(self, f"norm_{name}", RMSNorm(config.n_embd))
            setattr(self, name, SUBLAYERS[name](config, layer_id, rngs, jnp.dtype(config.dtype)))

    def init_state(self, batch: int, max_len: int) -> dict:
        return {name: getattr(self, name).init_state(batch, max_len) for name in self.names}

    def __call__(self, x, *, start=0, state=None, v_first=None):
        """x: [B, T, C]; v_first: the first time_mix7's values (None before it has run). Returns
        (x, new state or None, aux: the sub-layers' aux dicts merged, v_first)."""
        new_state, aux = {}, {}
        for name in self.names:
            sublayer, norm = getattr(self, name), getattr(self, f"norm_{name}")
            extra = {"v_first": v_first} if name == "time_mix7" else {}
            with jax.named_scope(name):      # (names the sub-layer's ops in profiles: bench.py profile-train)
                h, new_state[name], sublayer_aux = sublayer(norm(x), start=start,
                                                            state=None if state is None else state[name], **extra)
            v_first = sublayer_aux.pop("v_first", v_first)
            aux.update(sublayer_aux)
            x = x + h
        return x, (None if state is None else new_state), aux, v_first


class LanguageModel(nnx.Module):
    """The causal model. `model(tokens)` -> float32 logits [B, T, vocab_size]."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.arch != "causal":
            raise ValueError(f"arch={config.arch!r}: LanguageModel is the causal model; build other families "
                             "with microrwkv_jax.build_model")
        self.config = config
        self.wte = nnx.Embed(config.padded_vocab_size, config.n_embd,
                             embedding_init=nnx.initializers.normal(STD), rngs=rngs)
        self.blocks = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_f = layer_norm(config.n_embd, config.bias, rngs, jnp.dtype(config.dtype))

    def init_state(self, batch: int, max_len: int):
        """A decoding state for `batch` sequences of up to `max_len` tokens (bounds global attention's cache)."""
        return {"pos": jnp.zeros((), jnp.int32),
                "blocks": [block.init_state(batch, max_len) for block in self.blocks]}

    def forward(self, tokens, state=None):
        """tokens: int [B, T]; state: from `init_state` (or a previous `forward`), or None.

        Returns (logits float32 [B, T, vocab_size], new state or None, aux) where aux holds
        "moe_aux_loss" (mean over MoE layers; 0 without MoE) and "expert_fraction" [L_moe, E].
        """
        x, new_state, aux = self.features(tokens, state)
        return tied_logits(x, self.output_embedding(), self.config.vocab_size), new_state, aux

    def features(self, tokens, state=None):
        """`forward` without the output head: (final hidden states [B, T, C], new state, aux)."""
        x = self.wte.embedding[...][tokens].astype(jnp.dtype(self.config.dtype))
        start = 0 if state is None else state["pos"]
        new_blocks, aux_losses, fractions, v_first = [], [], [], None
        run = blockwise(lambda block, x, block_state, v_first: block(x, start=start, state=block_state, v_first=v_first),
                        self.config.remat)
        for i, block in enumerate(self.blocks):
            x, block_state, block_aux, v_first = run(block, x, None if state is None else state["blocks"][i], v_first)
            new_blocks.append(block_state)
            if "moe_aux_loss" in block_aux:
                aux_losses.append(block_aux["moe_aux_loss"])
                fractions.append(block_aux["expert_fraction"])
        aux = {"moe_aux_loss": jnp.mean(jnp.stack(aux_losses)) if aux_losses else jnp.zeros((), jnp.float32),
               "expert_fraction": jnp.stack(fractions) if fractions else None}
        new_state = None if state is None else {"pos": state["pos"] + tokens.shape[1], "blocks": new_blocks}
        return self.ln_f(x), new_state, aux

    def output_embedding(self):
        """The output head's matrix [padded vocab, C]: the tied token embedding."""
        return self.wte.embedding[...]

    def __call__(self, tokens):
        return self.forward(tokens)[0]
