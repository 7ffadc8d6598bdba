"""Normalisation layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32. x: [..., C]."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (xf * self.weight[...]).astype(x.dtype)


class HeadGroupNorm(nnx.Module):
    """GroupNorm with one group per head, applied to each token on its own (RWKV's `ln_x`).

    x: [..., H * N]; each head's N channels are normalised with their mean and biased
    variance, then scaled and shifted per channel. Statistics in float32.
    """

    def __init__(self, dim: int, num_groups: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.num_groups, self.eps = num_groups, eps

    def __call__(self, x):
        shape = x.shape
        g = x.astype(jnp.float32).reshape(*shape[:-1], self.num_groups, -1)
        mean = jnp.mean(g, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=-1, keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        return (g.reshape(shape) * self.weight[...] + self.bias[...]).astype(x.dtype)


def layer_norm(dim: int, bias: bool, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.LayerNorm:
    """The final LayerNorm (eps 1e-5, two-pass variance as in PyTorch), output in `dtype` so that
    the output head runs in the compute dtype."""
    return nnx.LayerNorm(dim, epsilon=1e-5, use_bias=bias, use_fast_variance=False, dtype=dtype, rngs=rngs)
