"""The published architecture's sampler: it is not causal and has no recurrent form, so, like
the original, it reruns the whole (cropped) context for every new token.

Each row is sampled as if it were alone (batch 1, as the original samples a prompt): the
published model mixes the rows of a batch (README), and one sample should not depend on which
others were drawn with it. Every context length compiles once (the model's reshapes depend on
it); the persistent compilation cache keeps them for the next run."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.decoding import row_keys, sample_logits


def last_logits_rowwise(model, context):
    """The last position's logits of each row of `context` [B, T], each row run on its own
    (batch 1) -> float32 [B, vocab]."""
    return jax.vmap(lambda row: model(row[None])[0, -1])(context)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def reforward_next(graphdef, params, context, keys, temperature, top_k, top_p):
    """The next token of each row of `context` [B, T] -> int [B]."""
    logits = last_logits_rowwise(nnx.merge(graphdef, params), context)
    return sample_logits(logits, keys, temperature, top_k, top_p)


def generate_by_reforward(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop_token, on_tokens,
                          block=None):
    """The published sampler: crop to block_size, run the whole window, sample, repeat. Arguments
    and result as `microrwkv_jax.sampling.generate`'s; `block` is unused (one token per call)."""
    graphdef, params = nnx.split(model)
    context = prompt
    b = prompt.shape[0]
    done = np.zeros((b,), bool)
    out = []
    for _ in range(max_new_tokens):
        window = context[:, -model.config.block_size:]
        keys = row_keys(seed, b, context.shape[1])
        token = np.asarray(reforward_next(graphdef, params, jnp.asarray(window), keys, float(temperature),
                                          top_k, top_p))
        if window.shape[1] < model.config.block_size:
            # This window length will not come again: free its executable. Hundreds of them held
            # at once exhaust the process's memory maps (LLVM then fails to allocate).
            reforward_next.clear_cache()
        if stop_token is not None:
            token = np.where(done, stop_token, token)
            done |= token == stop_token
        out.append(token[:, None])
        context = np.concatenate([context, token[:, None]], axis=1)
        if on_tokens is not None:
            on_tokens(token[:, None])
        if stop_token is not None and done.all():
            break
    return np.concatenate(out, axis=1)
