"""Linear layers and the initialisers both model paths use."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

STD = 0.02  # GPT-2 / nanoGPT / MicroRWKV initial weight scale.


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, bias: bool = False,
           dtype=jnp.float32, std: float = STD) -> nnx.Linear:
    """A float32-parameter Linear computing in `dtype`; kernel [in, out] ~ Normal(0, std)."""
    return nnx.Linear(in_features, out_features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(std), rngs=rngs)


def tied_logits(x, embedding, vocab_size: int):
    """The tied output head: x [B, T, C] @ embedding [V_padded, C]^T, cut to the real vocabulary
    and returned in float32 (the padding rows of the embedding are never predicted)."""
    logits = jnp.einsum("btc,vc->btv", x, embedding.astype(x.dtype))
    return logits[..., :vocab_size].astype(jnp.float32)
