"""The published MicroRWKV architecture (the `ckpt-500` PyTorch checkpoints), bit-faithful.

This is the published PyTorch model as code, faults included, so that the published weights
give the same logits here as in PyTorch. It is NOT causal and NOT batch-independent:

  * its "sliding window attention" reshapes the sequence into W rows of T/W tokens each and
    attends across rows without a mask, so position t sees tokens after t;
  * its "grouped query attention" concatenates projection blocks along the batch axis (rows of
    a batch mix) and attends over H head slots at one position instead of over time;
  * the MoE's auxiliary loss is discarded, its experts are affine and the first A gate
    probabilities are used (no top-k);
  * TimeMix runs twice per block with the same weights, the second time on un-normalised x.

Use it to run, evaluate and fine-tune the published checkpoints. Everything whose math is
the same (TimeMix and its WKV operator, ChannelMix, the final LayerNorm) is shared with the
causal model in `microrwkv_jax.layers`; only the quirky pieces live here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.layers.linears import STD, linear, linear_map_param
from microrwkv_jax.layers.normalization import layer_norm
from microrwkv_jax.layers.output_head import tied_logits
from microrwkv_jax.layers.remat import blockwise
from microrwkv_jax.layers.rwkv import ChannelMix, TimeMix

SWA_WINDOW = 256   # fixed in the published code
GQA_GROUPS = 4     # its "GQA" splits the projection into q, k, v and a multiplier


def expert_width(expert_dim: int) -> int:
    """The published experts' width: int(expert_dim * 1.2), as its code computes it."""
    return int(expert_dim * 1.2)


def check_config(config: ModelConfig) -> None:
    """What the published code needs of its sizes."""
    if config.n_embd % (GQA_GROUPS * config.n_head):
        config.fail("n_embd", f"the published GQA needs n_embd divisible by {GQA_GROUPS} * n_head = "
                              f"{GQA_GROUPS * config.n_head}")
    if config.n_layer < 2 or config.n_head < 2:
        config.fail("n_layer" if config.n_layer < 2 else "n_head",
                    "the published initialisation divides by n_layer - 1 and n_head - 1; use >= 2")


def published_rms(x):
    """x / (||x||_2 * C^-0.5 + 1e-8): the published, parameter-free ln_1 / ln_2 (eps outside the root)."""
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    return (xf / (norm * x.shape[-1] ** -0.5 + 1e-8)).astype(x.dtype)


class PublishedSlidingWindowAttention(nnx.Module):
    """Softmax attention across W "rows", each row T'/W consecutive tokens' vectors (not causal)."""

    def __init__(self, n_embd: int, n_head: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.n_head, self.head_size = n_head, n_embd // n_head
        self.qkv = linear(n_embd, 3 * n_embd, rngs=rngs, dtype=dtype)
        self.proj = linear(n_embd, n_embd, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        b, t, c = x.shape
        h, n, w = self.n_head, self.head_size, SWA_WINDOW
        q, k, v = self.qkv(x).reshape(b, t, 3, h, n).transpose(2, 0, 3, 1, 4)       # each [B, H, T, N]
        q = q * n ** -0.5
        pad = (w - t % w) % w
        rows = lambda a: jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b * h, w, 1, -1)
        # [B*H, W rows, 1 "head", T'*N/W]; q is pre-scaled, so scale=1.
        o = jax.nn.dot_product_attention(rows(q), rows(k), rows(v), scale=1.0)
        o = o.reshape(b, h, t + pad, n)[:, :, :t].transpose(0, 2, 1, 3).reshape(b, t, c)
        return self.proj(o)


class PublishedGroupedAttention(nnx.Module):
    """Attention over the H head slots of one position, with blocks of the projection
    concatenated along the batch axis (rows of a batch mix; not causal)."""

    def __init__(self, n_embd: int, n_head: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.n_head = n_head
        self.qkvw = linear(n_embd, GQA_GROUPS * n_embd, rngs=rngs, dtype=dtype)
        self.out = linear(n_embd, n_embd, rngs=rngs, dtype=dtype)

    def __call__(self, z):
        b, t, c = z.shape
        g, h = GQA_GROUPS, self.n_head
        p = self.qkvw(z).reshape(b, t, 4, g, c // g)                     # [B, T, block j, sub-block i, C/4]
        # Z_i = concat_j(Pj_i) along the batch axis -> [4B, T, C/4], for i = 0..3 (q, k, v, m).
        zq, zk, zv, zm = (p[:, :, :, i].transpose(2, 0, 1, 3).reshape(g * b, t, c // g) for i in range(g))
        # The row-major reshape [4B, T, C/4] -> [4B, H, T, d] mixes positions; attention then runs
        # over the H axis (as the sequence) for each of the T slots (as heads).
        heads = lambda a: a.reshape(g * b, h, t, c // (g * h))
        o = jax.nn.dot_product_attention(heads(zq), heads(zk), heads(zv))   # [4B, H, T, d]
        return self.out(o.reshape(b, t, c) * zm.reshape(b, t, c))


class PublishedMoE(nnx.Module):
    """softmax gate over E experts; the first A affine experts weighted by their gate probability."""

    def __init__(self, dim: int, num_experts: int, num_active_experts: int, expert_dim: int,
                 *, rngs: nnx.Rngs, dtype=jnp.float32):
        x_dim = expert_width(expert_dim)
        self.num_active_experts, self.dtype = num_active_experts, dtype
        self.gate = linear(dim, num_experts, rngs=rngs, bias=True, dtype=dtype)
        self.experts_kernel = linear_map_param(rngs, STD, (num_active_experts, dim, x_dim))
        self.experts_bias = nnx.Param(jnp.zeros((num_active_experts, x_dim), jnp.float32))
        self.fc = linear(x_dim, dim, rngs=rngs, bias=True, dtype=dtype)

    def __call__(self, x):
        s = jax.nn.softmax(self.gate(x).astype(jnp.float32), axis=-1)[..., : self.num_active_experts]
        e = jnp.einsum("btd,adx->btax", x.astype(self.dtype), self.experts_kernel[...].astype(self.dtype))
        e = e + self.experts_bias[...].astype(self.dtype)
        mixed = jnp.einsum("bta,btax->btx", s.astype(self.dtype), e)
        return self.fc(mixed)   # the published auxiliary loss is computed and discarded: omitted


class PublishedBlock(nnx.Module):
    def __init__(self, config: ModelConfig, layer_id: int, *, rngs: nnx.Rngs):
        c, dtype = config, jnp.dtype(config.dtype)
        self.tmix = TimeMix(c.n_embd, c.n_head, layer_id, c.n_layer, rngs=rngs, bias=c.bias,
                            chunk_size=c.chunk_size, dtype=dtype)
        self.cmix = ChannelMix(c.n_embd, layer_id, c.n_layer, rngs=rngs, bias=c.bias, dtype=dtype)
        self.sliding_attn = PublishedSlidingWindowAttention(c.n_embd, c.n_head, rngs=rngs, dtype=dtype)
        self.grouped_attn = PublishedGroupedAttention(c.n_embd, c.n_head, rngs=rngs, dtype=dtype)
        self.moe = PublishedMoE(c.n_embd, c.num_experts, c.num_active_experts, c.expert_dim,
                                rngs=rngs, dtype=dtype)

    def __call__(self, x):
        x = x + self.tmix(published_rms(x))[0]
        x = x + self.cmix(published_rms(x))[0]
        x = x + self.sliding_attn(x)
        x = x + self.grouped_attn(self.tmix(x)[0])     # the same TimeMix again, on un-normalised x
        return x + self.moe(x)


class PublishedModel(nnx.Module):
    """`model(tokens [B, T])` -> float32 logits [B, T, vocab_size], T <= block_size."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.arch != "published":
            raise ValueError(f"arch={config.arch!r}: PublishedModel needs arch='published'")
        check_config(config)
        self.config = config
        normal = nnx.initializers.normal(STD)
        self.wte = nnx.Embed(config.padded_vocab_size, config.n_embd, embedding_init=normal, rngs=rngs)
        self.wpe = nnx.Embed(config.block_size, config.n_embd, embedding_init=normal, rngs=rngs)
        self.blocks = nnx.List([PublishedBlock(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_f = layer_norm(config.n_embd, config.bias, rngs, jnp.dtype(config.dtype))

    def forward(self, tokens, state=None):
        """Same signature as `LanguageModel.forward`; there is no recurrent state (state must be None)."""
        x, _, aux = self.features(tokens, state)
        return tied_logits(x, self.output_embedding(), self.config.vocab_size), None, aux

    def features(self, tokens, state=None):
        """`forward` without the output head: (final hidden states [B, T, C], None, aux)."""
        if state is not None:
            raise ValueError("state: the published architecture is not causal and has no recurrent form")
        t = tokens.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"tokens: sequence length {t} exceeds block_size={self.config.block_size} "
                             "(the published model has learned positions)")
        dtype = jnp.dtype(self.config.dtype)
        x = (self.wte.embedding[...][tokens] + self.wpe.embedding[...][:t]).astype(dtype)
        run = blockwise(lambda block, x: block(x), self.config.remat)
        for block in self.blocks:
            x = run(block, x)
        return self.ln_f(x), None, {"moe_aux_loss": jnp.zeros((), jnp.float32), "expert_fraction": None}

    def output_embedding(self):
        """The output head's matrix [padded vocab, C]: the tied token embedding."""
        return self.wte.embedding[...]

    def __call__(self, tokens):
        return self.forward(tokens)[0]
