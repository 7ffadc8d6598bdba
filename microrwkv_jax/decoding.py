"""Recurrent decoding, for every family whose model runs as a recurrence.

The prompt (but its last token) is prefilled in parallel (chunked WKV, attention over the
prompt) into a decoding state, then one compiled loop feeds a token, samples the next and feeds
it back, up to `block` tokens per device call.
Per-token work happens on the device; the host only streams each finished block. The prompt
is fed in pieces of PREFILL_PIECE tokens and powers of two, so a new prompt length does not
recompile. A model only needs `init_state(batch, max_len)`, `forward(tokens, state)`,
`features(tokens, state)`, `output_embedding()` (the head's matrix) and `config.vocab_size`.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.layers.output_head import tied_logits

PREFILL_PIECE = 64     # largest prompt piece prefilled in one parallel call
MIN_CAPACITY = 256     # global-attention caches grow in powers of two from here
# XLA's copy insertion, told to analyse loop bodies region by region, sees that a token's attention
# reads the old cache before the cache's one-slot update: without it, XLA's CPU backend copies every
# loop-carried cache twice per token (12 MB per token for the table hybrid).
DECODE_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def sample_logits(logits, keys, temperature: float, top_k: Optional[int], top_p: Optional[float]):
    """Draw one token per row. logits [B, V] float32, keys [B] -> int32 [B]. temperature 0 is greedy."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose probability reaches top_p (always at least one token).
        cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def row_keys(seed: int, batch: int, position):
    """Row i draws token at `position` with key(seed + i) folded with the position, so a batch of
    samples equals the same samples drawn one at a time with seeds seed, seed + 1, ..."""
    base = jax.vmap(jax.random.key)(seed + jnp.arange(batch))
    return jax.vmap(lambda k: jax.random.fold_in(k, position))(base)


def cache_capacity(total_len: int) -> int:
    """Slots for global-attention caches: a power of two >= total_len (bounded recompiles)."""
    return max(MIN_CAPACITY, 1 << (int(total_len) - 1).bit_length())


@functools.partial(jax.jit, static_argnums=0)
def prefill_piece(graphdef, params, state, tokens):
    """Feed tokens [B, T] into the state; returns (the last position's logits [B, V], state).
    Only the last position's logits are needed, so the head (the widest product) runs on it alone."""
    model = nnx.merge(graphdef, params)
    x, state, _ = model.features(tokens, state)
    return tied_logits(x[:, -1:], model.output_embedding(), model.config.vocab_size)[:, 0], state


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 8, 9), donate_argnums=(2,),
                   compiler_options=DECODE_COMPILER_OPTIONS)
def decode_block(graphdef, params, state, token, done, steps, block, temperature, top_k, top_p, seed, stop_token):
    """Feed `token` [B] (the newest token, not yet in `state`), then sample `steps` tokens, feeding
    each back but the last. Returns (tokens [B, block] whose first `steps` columns are the samples,
    state, the last sample [B] (not yet fed), done [B]).

    `steps` (1 <= steps <= block) is a traced loop bound, so the first token (alone, to stream at
    once) and every later block share one compiled function. `state` is donated: the loop updates
    the caches in place instead of first copying them (a copy of a 1.6 GB cache per call is 100 MB
    per token at 16 tokens per call); use the returned one."""
    model = nnx.merge(graphdef, params)
    batch = token.shape[0]

    def step(i, carry):
        state, token, done, tokens = carry
        logits, state, _ = model.forward(token[:, None], state)
        # Row r's key depends on the position being sampled (state["pos"], the tokens fed so far).
        token = sample_logits(logits[:, 0], row_keys(seed, batch, state["pos"]), temperature, top_k, top_p)
        token = jnp.where(done, stop_token, token)
        done = done | (token == stop_token)
        return state, token, done, jax.lax.dynamic_update_index_in_dim(tokens, token, i, axis=1)

    tokens = jnp.zeros((batch, block), jnp.int32)
    state, token, done, tokens = jax.lax.fori_loop(0, steps, step, (state, token, done, tokens))
    return tokens, state, token, done


def grow_state(model, state, batch: int, capacity: int):
    """`state` with its caches enlarged to `capacity` slots. Every leaf whose shape grows with the
    capacity is copied into the start of a larger one; that keeps each cached position at its slot
    because a cache smaller than its window has never wrapped (positions < capacity)."""
    def grow(old, new):
        return old if old.shape == new.shape else new.at[tuple(slice(0, n) for n in old.shape)].set(old)
    return jax.tree.map(grow, state, model.init_state(batch, capacity))


def prefill_pieces(length: int) -> list:
    """Split a prompt into pieces of PREFILL_PIECE tokens, then powers of two: 77 -> [64, 8, 4, 1].
    Each piece runs in parallel (chunked WKV, attention over the piece), and only
    log2(PREFILL_PIECE) + 1 piece shapes ever compile, whatever the prompt length."""
    pieces = [PREFILL_PIECE] * (length // PREFILL_PIECE)
    rest = length % PREFILL_PIECE
    pieces += [1 << bit for bit in reversed(range(rest.bit_length())) if rest & (1 << bit)]
    return pieces


def prefill_graph(graphdef, params, state, prompt):
    """Run the prompt [B, T] through the model; returns (last position's logits, state)."""
    start = 0
    for size in prefill_pieces(prompt.shape[1]):
        last, state = prefill_piece(graphdef, params, state, jnp.asarray(prompt[:, start:start + size]))
        start += size
    return last, state


def prefill(model, prompt, max_len: int):
    """Returns (the logits [B, V] for the next token, the decoding state after `prompt` [B, T])."""
    graphdef, params = nnx.split(model)
    prompt = np.asarray(prompt, np.int32)
    state = model.init_state(prompt.shape[0], cache_capacity(max_len))
    return prefill_graph(graphdef, params, state, prompt)


def generate_recurrent(model, prompt, max_new_tokens: int, temperature: float, top_k: Optional[int],
                       top_p: Optional[float], seed: int, stop_token: Optional[int],
                       on_tokens: Optional[Callable[[np.ndarray], None]], block: int) -> np.ndarray:
    """`microrwkv_jax.sampling.generate` for a model with a recurrent form (`init_state`, and
    `forward(tokens, state)`): prefill the prompt in parallel, then decode `block` tokens per
    device call. Arguments and result as `generate`'s (already checked)."""
    graphdef, params = nnx.split(model)
    b, t = prompt.shape
    capacity = cache_capacity(t + block)        # grown as generation goes, never sized for the worst case
    state = model.init_state(b, capacity)
    # The prompt's last token is fed by the first decode call (a one-token prompt, the usual
    # start from end-of-text, needs no prefill); the rest is prefilled in parallel.
    if t > 1:
        _, state = prefill_graph(graphdef, params, state, prompt[:, :-1])
    token = jnp.asarray(prompt[:, -1])
    done = jnp.zeros((b,), bool)
    stop = -1 if stop_token is None else int(stop_token)
    out = []
    produced = 0
    while produced < max_new_tokens:
        # The first token comes alone, so that it streams as soon as it exists; then whole blocks.
        steps = 1 if produced == 0 else min(block, max_new_tokens - produced)
        if t + produced + steps > capacity:
            capacity = cache_capacity(t + produced + steps)
            state = grow_state(model, state, b, capacity)
        tokens, state, token, done = decode_block(graphdef, params, state, token, done, steps, block,
                                                  float(temperature), top_k, top_p, seed, stop)
        tokens = np.asarray(tokens)[:, :steps]
        produced += steps
        out.append(tokens)
        if on_tokens is not None:
            on_tokens(tokens)
        if stop_token is not None and bool(np.all(np.asarray(done))):
            break
    return np.concatenate(out, axis=1)
