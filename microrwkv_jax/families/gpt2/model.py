"""OpenAI's GPT-2, exactly: learned absolute positions, pre-LayerNorm blocks with biases, a fused
q/k/v projection, a GELU (tanh) MLP of width 4C, a final LayerNorm and the tied output head.

    tokens [B, T <= block_size] -> wte + wpe -> L x Block -> ln_f -> tied head -> logits [B, T, V]

Decoding keeps a key/value cache per block (`init_state`, `forward(tokens, state)`), so
generation costs one token's work per token, up to the learned positions' limit.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.layers.attention import CausalSelfAttention
from microrwkv_jax.layers.linears import STD
from microrwkv_jax.layers.mlp import MLP
from microrwkv_jax.layers.normalization import layer_norm
from microrwkv_jax.layers.output_head import tied_logits
from microrwkv_jax.layers.remat import blockwise


def check_config(config: ModelConfig) -> None:
    if config.n_kv_head != config.n_head:
        config.fail("n_kv_head", f"GPT-2 has one key/value head per head: must equal n_head={config.n_head}")


class Block(nnx.Module):
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c, dtype = config, jnp.dtype(config.dtype)
        self.ln_1 = layer_norm(c.n_embd, True, rngs, dtype)
        self.attn = CausalSelfAttention(c.n_embd, c.n_head, c.n_head, None, c.n_layer, rngs=rngs, rope_base=None,
                                        bias=True, dtype=dtype)
        self.ln_2 = layer_norm(c.n_embd, True, rngs, dtype)
        self.mlp = MLP(c.n_embd, c.mlp_ratio, c.n_layer, rngs=rngs, bias=True, dtype=dtype)

    def init_state(self, batch: int, max_len: int) -> dict:
        return {"attn": self.attn.init_state(batch, max_len)}

    def __call__(self, x, *, start=0, state=None):
        h, attn_state, _ = self.attn(self.ln_1(x), start=start, state=None if state is None else state["attn"])
        x = x + h
        x = x + self.mlp(self.ln_2(x))[0]
        return x, (None if state is None else {"attn": attn_state})


class GPT2(nnx.Module):
    """`model(tokens [B, T])` -> float32 logits [B, T, vocab_size], T <= block_size (n_positions)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.arch != "gpt2":
            raise ValueError(f"arch={config.arch!r}: GPT2 needs arch='gpt2'")
        check_config(config)
        self.config = config
        normal = nnx.initializers.normal(STD)
        self.wte = nnx.Embed(config.padded_vocab_size, config.n_embd, embedding_init=normal, rngs=rngs)
        self.wpe = nnx.Embed(config.block_size, config.n_embd, embedding_init=normal, rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layer)])
        self.ln_f = layer_norm(config.n_embd, True, rngs, jnp.dtype(config.dtype))

    def init_state(self, batch: int, max_len: int):
        """A key/value cache for `batch` sequences of up to min(max_len, block_size) tokens."""
        max_len = min(max_len, self.config.block_size)
        return {"pos": jnp.zeros((), jnp.int32), "blocks": [block.init_state(batch, max_len) for block in self.blocks]}

    def forward(self, tokens, state=None):
        """tokens: int [B, T]; state from `init_state` or None. Returns (logits [B, T, V], state, aux)."""
        x, new_state, aux = self.features(tokens, state)
        return tied_logits(x, self.output_embedding(), self.config.vocab_size), new_state, aux

    def features(self, tokens, state=None):
        """`forward` without the output head: (final hidden states [B, T, C], new state, aux)."""
        t = tokens.shape[1]
        if state is None and t > self.config.block_size:
            raise ValueError(f"tokens: sequence length {t} exceeds block_size={self.config.block_size} "
                             "(GPT-2 has learned positions)")
        start = 0 if state is None else state["pos"]
        positions = start + jnp.arange(t)
        # Summed in float32 whatever the parameters' dtype, then cast to the compute dtype.
        x = self.wte.embedding[...][tokens].astype(jnp.float32) + self.wpe.embedding[...][positions].astype(jnp.float32)
        x = x.astype(jnp.dtype(self.config.dtype))
        new_blocks = []
        run = blockwise(lambda block, x, block_state: block(x, start=start, state=block_state), self.config.remat)
        for i, block in enumerate(self.blocks):
            x, block_state = run(block, x, None if state is None else state["blocks"][i])
            new_blocks.append(block_state)
        new_state = None if state is None else {"pos": state["pos"] + t, "blocks": new_blocks}
        aux = {"moe_aux_loss": jnp.zeros((), jnp.float32), "expert_fraction": None}
        return self.ln_f(x), new_state, aux

    def output_embedding(self):
        """The output head's matrix [padded vocab, C]: the tied token embedding."""
        return self.wte.embedding[...]

    def __call__(self, tokens):
        return self.forward(tokens)[0]
