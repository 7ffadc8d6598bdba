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
