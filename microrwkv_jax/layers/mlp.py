"""The feed-forward layer of the GPT baseline and of GPT-2."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from microrwkv_jax.layers.linears import STD, linear


class MLP(nnx.Module):
    """Linear(C, rC) -> GELU (tanh approximation, GPT-2's) -> Linear(rC, C). x: [B, T, C] -> [B, T, C]."""

    # Logical axes of its parameters, for sharding (microrwkv_jax.sharding).
    PARAM_AXES = {
        "fc/kernel": ("embed", "mlp"),
        "fc/bias": ("mlp",),
        "proj/kernel": ("mlp", "embed"),
        "proj/bias": ("embed",),
    }

    def __init__(self, n_embd: int, ratio: int, n_layer: int, *, rngs: nnx.Rngs, bias: bool = False,
                 dtype=jnp.float32):
        self.fc = linear(n_embd, ratio * n_embd, rngs=rngs, bias=bias, dtype=dtype)
        self.proj = linear(ratio * n_embd, n_embd, rngs=rngs, bias=bias, dtype=dtype, std=STD / (2 * n_layer) ** 0.5)

    def init_state(self, batch: int, max_len: int) -> dict:
        return {}

    def __call__(self, x, *, start=0, state=None):
        """x: [B, T, C] -> (y [B, T, C], state passed through, no aux)."""
        return self.proj(nnx.gelu(self.fc(x))), state, {}
