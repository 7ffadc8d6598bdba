"""TinyMoE: a softmax router sending each token to its top-k of a few small feed-forward experts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from microrwkv_jax.layers.linears import STD, linear_map_param


class TinyMoE(nnx.Module):
    """Top-k mixture of `num_experts` GELU experts of width `expert_dim`.

    With a handful of experts every expert runs on every token and the router's gates
    (zero outside each token's top-k, renormalised over it) select the outputs: no token
    dropping, no capacity factor, static shapes that shard like a dense layer.

    The experts' weights are stored so that both products are plain matrix products over all the
    experts at once: w_in [C, E, X] is one [C, E * X] matrix, w_out [E, X, C] one [E * X, C]
    matrix. Gating the hidden units before the second product gives the gated sum of the experts'
    outputs directly:  sum_e g_e (h_e W_out_e + b_out_e) = (g * h) W_out + g b_out.

    Returns (out [B, T, C], state (passed through: the layer keeps none), aux) with aux
      "moe_aux_loss" = E * sum_e f_e * P_e (Switch Transformer), where f_e is the fraction of
      routing slots given to expert e and P_e its mean router probability; it is 1 when
      routing is uniform and grows as it collapses onto few experts.
      "expert_fraction" = f [E], for logging.
    """

    # Logical axes of its parameters, for sharding (microrwkv_jax.sharding).
    PARAM_AXES = {
        "router": ("embed", "experts"),
        "w_in": ("embed", "experts", "mlp"),
        "b_in": ("experts", "mlp"),
        "w_out": ("experts", "mlp", "embed"),
        "b_out": ("experts", "embed"),
    }

    def __init__(self, n_embd: int, num_experts: int, num_active_experts: int, expert_dim: int,
                 n_layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.num_experts, self.top_k, self.dtype = num_experts, num_active_experts, dtype
        self.router = linear_map_param(rngs, STD, (n_embd, num_experts))
        self.w_in = linear_map_param(rngs, STD, (n_embd, num_experts, expert_dim))
        self.b_in = nnx.Param(jnp.zeros((num_experts, expert_dim), jnp.float32))
        self.w_out = linear_map_param(rngs, STD / (2 * n_layer) ** 0.5, (num_experts, expert_dim, n_embd))
        self.b_out = nnx.Param(jnp.zeros((num_experts, n_embd), jnp.float32))

    def init_state(self, batch: int, max_len: int) -> dict:
        return {}

    def __call__(self, x, *, start=0, state=None):
        """x: [B, T, C]; every token is routed on its own, so `start` is not needed."""
        probs = jax.nn.softmax(jnp.einsum("btc,ce->bte", x.astype(jnp.float32), self.router[...]), axis=-1)
        top_probs, top_idx = jax.lax.top_k(probs, self.top_k)                       # [B, T, k]
        chosen = jax.nn.one_hot(top_idx, self.num_experts, dtype=jnp.float32)        # [B, T, k, E]
        gates = jnp.einsum("btk,btke->bte", top_probs / jnp.sum(top_probs, -1, keepdims=True), chosen)
        gates = gates.astype(self.dtype)
        hidden = jnp.einsum("btc,cex->btex", x.astype(self.dtype), self.w_in[...].astype(self.dtype))
        hidden = nnx.gelu(hidden + self.b_in[...].astype(self.dtype))                 # [B, T, E, X]
        out = jnp.einsum("btex,exc->btc", hidden * gates[..., None], self.w_out[...].astype(self.dtype))
        out = out + gates @ self.b_out[...].astype(self.dtype)
        expert_fraction = jnp.mean(jnp.sum(chosen, axis=2), axis=(0, 1)) / self.top_k   # [E], sums to 1
        aux_loss = self.num_experts * jnp.sum(expert_fraction * jnp.mean(probs, axis=(0, 1)))
        return out.astype(x.dtype), state, {"moe_aux_loss": aux_loss, "expert_fraction": expert_fraction}
