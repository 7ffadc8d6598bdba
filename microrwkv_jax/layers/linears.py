"""Linear layers and the initialisers every model family uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

STD = 0.02  # GPT-2 / nanoGPT / MicroRWKV initial weight scale.
# Parameter metadata marking the matrix of a linear map: the only parameters AdamW decays
# (`microrwkv_jax.training.optimizer`). Biases, norms, embeddings and RWKV's time_* vectors are not.
LINEAR_MAP = {"linear_map": True}


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, bias: bool = False,
           dtype=jnp.float32, std: float = STD, init=None) -> nnx.Linear:
    """A float32-parameter Linear computing in `dtype`; kernel [in, out] ~ Normal(0, std), or
    `init` (a flax initializer) where given."""
    return nnx.Linear(in_features, out_features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=init or nnx.initializers.normal(std), kernel_metadata=LINEAR_MAP, rngs=rngs)


def linear_map_param(rngs: nnx.Rngs, std: float, shape) -> nnx.Param:
    """A float32 weight of a linear map (or a stack of them), shape `shape`, ~ Normal(0, std)."""
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32), **LINEAR_MAP)
