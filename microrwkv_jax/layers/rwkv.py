"""RWKV x051a time mixing (WKV attention) and channel mixing, with explicit recurrent state, and
the pieces BlinkDL's RWKV generations share: the token shift, the heads' state (and its trainable
start, for state tuning), RWKV-4/5's interpolated channel mix.

All take the previous token's input vector explicitly, so that a sequence can be fed
all at once, in pieces, or one token at a time with identical results. TimeMix and ChannelMix
take the causal family's sub-layer interface `__call__(x, *, start, state) -> (y, new_state, aux)`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.ops import wkv5
from microrwkv_jax.layers.linears import STD, linear
from microrwkv_jax.layers.normalization import HeadGroupNorm


def token_shift(x, previous):
    """x: [B, T, C], previous: [B, C] (the token before x[:, 0]) -> [B, T, C] with row t = x[:, t-1]."""
    return jnp.concatenate([previous[:, None, :].astype(x.dtype), x[:, :-1]], axis=1)


def lerp(x, shifted, mix):
    """x * mix + shifted * (1 - mix): RWKV-4/5's token-shift interpolation."""
    mix = mix.astype(x.dtype)
    return x * mix + shifted * (1 - mix)


def gated_heads_output(x, r, k, v, w, u, g, wkv_state, ln_x, output, chunk_size=None):
    """What RWKV-5/6 and x051a time mixing share after their projections: the WKV over the heads
    (`wkv5.wkv5`; r, k, v [B, T, H, N]), the per-head GroupNorm `ln_x`, the gate g and `output`.
    Returns (out [B, T, C], the new {"shift", "wkv"} state)."""
    b, t, c = x.shape
    y, wkv_state = wkv5.wkv5(r, k, v, w, u, wkv_state, chunk_size)
    y = ln_x(y.reshape(b, t, c)).astype(x.dtype)
    return output(y * g), {"shift": x[:, -1].astype(jnp.float32), "wkv": wkv_state}


LN_X_EPS = 64e-5     # RWKV-5/6/7's ln_x GroupNorm eps: RWKV-LM's 1e-5 with its head_size_divisor 8 folded in


def heads_state(batch: int, n_head: int, head_size: int, time_state=None) -> dict:
    """The time mix state of RWKV-5/6/7: the token shift and the heads' float32 WKV states, zeros
    or, state-tuned, the layer's trainable `time_state` [H, N, N] for every row."""
    wkv = (jnp.zeros((batch, n_head, head_size, head_size), jnp.float32) if time_state is None
           else jnp.broadcast_to(time_state[...].astype(jnp.float32), (batch, n_head, head_size, head_size)))
    return {"shift": jnp.zeros((batch, n_head * head_size), jnp.float32), "wkv": wkv}


def time_state_param(n_head: int, head_size: int) -> nnx.Param:
    """The trainable initial WKV state [H, N_key, N_value] of a state-tuned layer (zeros: the
    untuned model's start)."""
    return nnx.Param(jnp.zeros((n_head, head_size, head_size), jnp.float32))


def _ratios(layer_id: int, n_layer: int):
    """RWKV's depth ratios r0 = i / (L-1) (0 -> 1 with depth) and r1 = 1 - i / L (1 -> ~0)."""
    return layer_id / max(n_layer - 1, 1), 1.0 - layer_id / n_layer


def _channel_ramp(dim: int):
    return np.arange(dim, dtype=np.float64) / dim


class TimeMix(nnx.Module):
    """RWKV x051a time mix: token-shift interpolation, r/k/v/g projections, WKV, per-head GroupNorm.

    Parameter names follow the PyTorch module (`time_maa_k`, `receptance`, ...), so that the
    published checkpoints map onto it one to one.
    """

    # Logical axes of its parameters, for sharding (microrwkv_jax.sharding): the projections into
    # the heads' channels (H * N) and out of them, per-head vectors and ln_x with the heads, the
    # token-shift mixes with the residual width. The first matching name wins.
    PARAM_AXES = {
        "ln_x/*": ("heads",),
        "output/kernel": ("heads", "embed"),
        "output/bias": ("embed",),
        "*/kernel": ("embed", "heads"),              # receptance, key, value, gate
        "*/bias": ("heads",),
        "time_decay": ("heads",),
        "time_faaaa": ("heads",),
        "time_maa_*": ("embed",),
    }

    def __init__(self, n_embd: int, n_head: int, layer_id: int, n_layer: int, *, rngs: nnx.Rngs,
                 bias: bool = False, chunk_size: int = 64, dtype=jnp.float32):
        self.n_embd, self.n_head, self.head_size, self.chunk_size = n_embd, n_head, n_embd // n_head, chunk_size
        r0, r1 = _ratios(layer_id, n_layer)
        ddd = _channel_ramp(n_embd)
        param = lambda a: nnx.Param(jnp.asarray(a, jnp.float32))
        self.time_maa_k = param(1.0 - ddd ** r1)
        self.time_maa_v = param(1.0 - (ddd ** r1 + 0.3 * r0))
        self.time_maa_r = param(1.0 - ddd ** (0.5 * r1))
        self.time_maa_g = param(1.0 - ddd ** (0.5 * r1))
        h = np.arange(n_head) / max(n_head - 1, 1)
        self.time_decay = param(-6.0 + 5.0 * h ** (0.7 + 1.3 * r0))   # w = exp(-exp(time_decay))
        self.time_faaaa = param(r0 * (1.0 - h))                          # u, the current-token bonus
        make = lambda std=STD: linear(n_embd, n_embd, rngs=rngs, bias=bias, dtype=dtype, std=std)
        self.receptance, self.key, self.value, self.gate = make(), make(), make(), make()
        self.output = make(STD / np.sqrt(2 * n_layer))
        # eps = 1e-5 * head_size_divisor^2 with x051a's divisor 8, whatever the head size.
        self.ln_x = HeadGroupNorm(n_embd, n_head, eps=64e-5)

    def init_state(self, batch: int, max_len: int = 0):
        """The recurrent state: a constant size whatever `max_len`."""
        n = self.head_size
        return {"shift": jnp.zeros((batch, self.n_embd), jnp.float32),
                "wkv": jnp.zeros((batch, self.n_head, n, n), jnp.float32)}

    def __call__(self, x, *, start=0, state=None):
        """x: [B, T, C]; state: {"shift": [B, C], "wkv": [B, H, N, N]} or None for a fresh sequence
        (the state carries the position, so `start` is not needed). Returns (out [B, T, C], new
        state, no aux). T == 1 uses the step form, longer inputs the chunked one."""
        b, t, _ = x.shape
        if state is None:
            state = self.init_state(b)
        xx = token_shift(x, state["shift"]) - x
        xr, xk, xv, xg = (x + xx * m[...].astype(x.dtype) for m in
                          (self.time_maa_r, self.time_maa_k, self.time_maa_v, self.time_maa_g))
        heads = lambda a: a.reshape(b, t, self.n_head, self.head_size)
        r, k, v = heads(self.receptance(xr)), heads(self.key(xk)), heads(self.value(xv))
        g = nnx.silu(self.gate(xg))
        w = jnp.exp(-jnp.exp(self.time_decay[...].astype(jnp.float32)))
        u = self.time_faaaa[...].astype(jnp.float32)
        out, new_state = gated_heads_output(x, r, k, v, w, u, g, state["wkv"], self.ln_x, self.output, self.chunk_size)
        return out, new_state, {}


class ChannelMix(nnx.Module):
    """RWKV channel mix: sigmoid(receptance(xr)) * value(relu(key(xk))^2), hidden width 3C (x051a)
    or `hidden` (RWKV-6), with the token shift as x + (previous - x) * time_maa."""

    # Logical axes of its parameters, for sharding (microrwkv_jax.sharding).
    PARAM_AXES = {
        "key/kernel": ("embed", "mlp"),
        "key/bias": ("mlp",),
        "value/kernel": ("mlp", "embed"),
        "receptance/kernel": ("embed", "embed"),
        "*/bias": ("embed",),                        # value, receptance
        "time_maa_*": ("embed",),
    }

    def __init__(self, n_embd: int, layer_id: int, n_layer: int, *, rngs: nnx.Rngs,
                 bias: bool = False, dtype=jnp.float32, hidden: int | None = None):
        self.n_embd = n_embd
        hidden = hidden or 3 * n_embd
        _, r1 = _ratios(layer_id, n_layer)
        ramp = 1.0 - _channel_ramp(n_embd) ** r1
        self.time_maa_k = nnx.Param(jnp.asarray(ramp, jnp.float32))
        self.time_maa_r = nnx.Param(jnp.asarray(ramp, jnp.float32))
        self.key = linear(n_embd, hidden, rngs=rngs, bias=bias, dtype=dtype)
        self.value = linear(hidden, n_embd, rngs=rngs, bias=bias, dtype=dtype)
        self.receptance = linear(n_embd, n_embd, rngs=rngs, bias=bias, dtype=dtype)

    def init_state(self, batch: int, max_len: int = 0):
        return {"shift": jnp.zeros((batch, self.n_embd), jnp.float32)}

    def __call__(self, x, *, start=0, state=None):
        """x: [B, T, C]; state {"shift": [B, C]} or None. Returns (out [B, T, C], new state, no aux)."""
        if state is None:
            state = self.init_state(x.shape[0])
        xx = token_shift(x, state["shift"]) - x
        xk = x + xx * self.time_maa_k[...].astype(x.dtype)
        xr = x + xx * self.time_maa_r[...].astype(x.dtype)
        hidden = jnp.square(nnx.relu(self.key(xk)))
        out = nnx.sigmoid(self.receptance(xr)) * self.value(hidden)
        return out, {"shift": x[:, -1].astype(jnp.float32)}, {}


class LerpChannelMix(nnx.Module):
    """RWKV-4/5's channel mix: sigmoid(receptance(xr)) * value(relu(key(xk))^2) with the token
    shift interpolated, x * time_mix + previous * (1 - time_mix)."""

    def __init__(self, c: int, hidden: int, layer_id: int, n_layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        _, r1 = _ratios(layer_id, n_layer)
        ramp = _channel_ramp(c) ** r1
        self.time_mix_k = nnx.Param(jnp.asarray(ramp, jnp.float32))
        self.time_mix_r = nnx.Param(jnp.asarray(ramp, jnp.float32))
        self.key = linear(c, hidden, rngs=rngs, dtype=dtype)
        self.receptance = linear(c, c, rngs=rngs, dtype=dtype)
        self.value = linear(hidden, c, rngs=rngs, dtype=dtype, std=STD / np.sqrt(2 * n_layer))

    def __call__(self, x, *, state):
        """x [B, T, C]; state {"shift": [B, C]} -> (out [B, T, C], new state)."""
        xx = token_shift(x, state["shift"])
        hidden = jnp.square(nnx.relu(self.key(lerp(x, xx, self.time_mix_k[...]))))
        out = nnx.sigmoid(self.receptance(lerp(x, xx, self.time_mix_r[...]))) * self.value(hidden)
        return out, {"shift": x[:, -1].astype(jnp.float32)}
