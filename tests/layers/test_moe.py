"""TinyMoE against a float64 numpy mixture of experts written expert by expert."""

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.layers.moe import TinyMoE
from tests.helpers import rel_err


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def numpy_moe(x, router, w_in, b_in, w_out, b_out, top_k):
    """Each token: softmax router, its top-k experts, their outputs summed with the renormalised
    top-k probabilities. w_in [C, E, X] (expert e's input matrix is w_in[:, e]), w_out [E, X, C]."""
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            logits = x[b, t] @ router
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            top = np.argsort(-probs, kind="stable")[:top_k]
            for e in top:
                hidden = gelu_tanh(x[b, t] @ w_in[:, e] + b_in[e])
                out[b, t] += probs[e] / probs[top].sum() * (hidden @ w_out[e] + b_out[e])
    return out


def test_tiny_moe_equals_a_float64_expert_by_expert_reference():
    moe = TinyMoE(16, num_experts=4, num_active_experts=2, expert_dim=8, n_layer=2, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    moe.b_in[...] = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)       # biases, so that they count
    moe.b_out[...] = jnp.asarray(0.1 * rng.standard_normal((4, 16)), jnp.float32)
    x = rng.standard_normal((2, 7, 16))
    ours, _, aux = moe(jnp.asarray(x, jnp.float32))
    params = [np.asarray(p[...], np.float64) for p in (moe.router, moe.w_in, moe.b_in, moe.w_out, moe.b_out)]
    assert rel_err(ours, numpy_moe(x, *params, top_k=2)) <= 1e-5
    assert float(np.sum(aux["expert_fraction"])) == 1.0
