"""Recurrent decoding, for every family whose model runs as a recurrence.

The prompt (but its last token) is prefilled in parallel (chunked WKV, attention over the
prompt) into a decoding state, then one compiled loop feeds a token, samples the next and feeds
it back, up to `block` tokens per device call.
Per-token work happens on the device; the host only streams each finished block. The prompt
is fed in whole pieces of PREFILL_PIECE tokens in parallel and its rest one token at a time inside
the decoding loop (a traced count), and the sampling options are traced values, so neither a new prompt length nor new options recompile
(caches start with room for the model's context, so prompts up to `block_size` share one state
shape). A model only needs `init_state(batch, max_len)`, `forward(tokens, state)`,
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
PRESIZED_CONTEXT = 4096     # caches start with room for the model's context up to this many tokens
MIN_CAPACITY = 256     # global-attention caches grow in powers of two from here
# XLA's copy insertion, told to analyse loop bodies region by region, sees that a token's attention
# reads the old cache before the cache's one-slot update: without it, XLA's CPU backend copies every
# loop-carried cache twice per token (12 MB per token for the table hybrid).
DECODE_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def sampling_options(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> tuple:
    """The sampling options as the device arrays one compiled program takes whatever their values:
    (temperature float32, top_k int32 with 0 for none, top_p float32 with 1 for none)."""
    return (np.float32(temperature), np.int32(0 if top_k is None else top_k),
            np.float32(1.0 if top_p is None else top_p))


def sample_logits(logits, keys, temperature, top_k, top_p):
    """Draw one token per row. logits [B, V] float32, keys [B] -> int32 [B]. temperature 0 is
    greedy; top_k (None or 0: all tokens) keeps the k likeliest; top_p (None or 1: all) then keeps
    the smallest set of them whose probability reaches top_p. The options may be traced values
    (`sampling_options`), so one compiled program serves them all."""
    top_k = 0 if top_k is None else top_k
    top_p = 1.0 if top_p is None else top_p
    vocab = logits.shape[-1]
    k = jnp.where((top_k > 0) & (top_k < vocab), top_k, vocab)          # tokens top_k keeps
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)

    def restrict(scaled):
        sorted_desc = -jnp.sort(-scaled, axis=-1)                        # [B, V], likeliest first
        kept = jnp.where(jnp.arange(vocab) < k, sorted_desc, -jnp.inf)    # the top k, in order
        kth = kept[:, k - 1][:, None]
        cumulative = jnp.cumsum(jax.nn.softmax(kept, axis=-1), axis=-1)
        # Keep the smallest prefix whose probability reaches top_p (always at least one token).
        cutoff_index = jnp.minimum(jnp.sum(cumulative < top_p, axis=-1, keepdims=True), k - 1)
        cutoff = jnp.take_along_axis(kept, cutoff_index, axis=-1)
        threshold = jnp.where(top_p < 1.0, cutoff, kth)
        return jnp.where(scaled < threshold, -jnp.inf, scaled)

    def draw(scaled):
        scaled = jax.lax.cond((k < vocab) | (top_p < 1.0), restrict, lambda x: x, scaled)
        return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)

    # Greedy decoding draws nothing (a categorical draw over a 50k vocabulary costs per token).
    return jax.lax.cond(temperature > 0, draw, lambda _: jnp.argmax(logits, axis=-1).astype(jnp.int32), scaled)


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
    """Feed tokens [B, PREFILL_PIECE] into the state in parallel; returns (the last position's
    logits [B, V], state). Only the last position's logits are needed, so the head (the widest
    product) runs on it alone."""
    model = nnx.merge(graphdef, params)
    x, state, _ = model.features(tokens, state)
    return tied_logits(x[:, -1:], model.output_embedding(), model.config.vocab_size)[:, 0], state


def feed_serially(model, state, tokens, count):
    """Feed the first `count` (traced) tokens of `tokens` [B, PREFILL_PIECE] one at a time; returns
    (the features [B, C] of the last one fed, state). A prompt's last < PREFILL_PIECE tokens go
    this way, inside a compiled loop, so that no prompt length compiles a program of its own."""
    def step(i, carry):
        state, _ = carry
        x, state, _ = model.features(jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1), state)
        return state, x[:, 0]

    x_shape = jax.eval_shape(lambda state: model.features(tokens[:, :1], state)[0], state)    # [B, 1, C]
    x0 = jnp.zeros((x_shape.shape[0], *x_shape.shape[2:]), x_shape.dtype)
    state, x = jax.lax.fori_loop(0, count, step, (state, x0))
    return x, state


@functools.partial(jax.jit, static_argnums=0)
def feed_piece(graphdef, params, state, tokens, count):
    """`feed_serially` as a program of its own: (the logits [B, V] after the last token fed, state)."""
    model = nnx.merge(graphdef, params)
    x, state = feed_serially(model, state, tokens, count)
    return tied_logits(x[:, None], model.output_embedding(), model.config.vocab_size)[:, 0], state


@functools.partial(jax.jit, static_argnums=(0, 8), donate_argnums=(2,), compiler_options=DECODE_COMPILER_OPTIONS)
def decode_block(graphdef, params, state, forced, n_forced, token, done, steps, block, temperature, top_k, top_p,
                 seed, stop_token):
    """Feed the first `n_forced` tokens of `forced` [B, PREFILL_PIECE] (a piece of the prompt: all
    of it in parallel, or fewer one at a time; 0 when the prompt is in), then, if `steps` > 0,
    `token` [B] (the newest token, not yet in `state`), then sample `steps` tokens, feeding each
    back but the last. Returns (tokens [B, block] whose first `steps` columns are the samples,
    state, the last sample [B] (not yet fed; `token` when steps is 0), done [B]).

    `n_forced` and `steps` (0 <= steps <= block) are traced, so the prompt's pieces, the first
    token (alone, to stream at once) and every later block share one compiled function; so are
    the sampling options (`sampling_options`) and the seed, so that no prompt length or option
    recompiles. `state` is donated: the loop updates the caches in place instead
    of first copying them (a copy of a 1.6 GB cache per call is 100 MB per token at 16 tokens per
    call); use the returned one."""
    model = nnx.merge(graphdef, params)
    batch = token.shape[0]
    # A whole piece of the prompt in parallel, or its rest one token at a time: both are branches
    # of this one program, so that generation compiles nothing else, whatever the prompt.
    state = jax.lax.cond(n_forced == forced.shape[1], lambda state: model.features(forced, state)[1],
                         lambda state: feed_serially(model, state, forced, n_forced)[1], state)

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


def split_prompt(prompt):
    """(the whole PREFILL_PIECE-token pieces of a prompt [B, T], fed in parallel; the rest, fewer
    than PREFILL_PIECE tokens, padded to [B, PREFILL_PIECE]; how many of it are real)."""
    prompt = np.asarray(prompt, np.int32)
    whole = prompt.shape[1] // PREFILL_PIECE * PREFILL_PIECE
    rest = np.zeros((prompt.shape[0], PREFILL_PIECE), np.int32)
    rest[:, :prompt.shape[1] - whole] = prompt[:, whole:]
    pieces = [prompt[:, i:i + PREFILL_PIECE] for i in range(0, whole, PREFILL_PIECE)]
    return pieces, rest, np.int32(prompt.shape[1] - whole)


def prefill_graph(graphdef, params, state, prompt):
    """Run the prompt [B, T] through the model; returns (last position's logits, state): its whole
    pieces of PREFILL_PIECE tokens in parallel, the rest one token at a time in one compiled loop
    (two programs whatever the length)."""
    pieces, rest, count = split_prompt(prompt)
    last = None
    for piece in pieces:
        last, state = prefill_piece(graphdef, params, state, jnp.asarray(piece))
    if count:
        last, state = feed_piece(graphdef, params, state, rest, count)
    return last, state


def initial_capacity(model, prompt_len: int, block: int) -> int:
    """Global-attention cache slots to start with: enough for the prompt and a first block, and
    never fewer than the model's context (up to PRESIZED_CONTEXT tokens), so that every prompt up
    to `block_size` shares one state shape and one compiled program."""
    return cache_capacity(max(prompt_len + block, min(model.config.block_size, PRESIZED_CONTEXT)))


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
    capacity = initial_capacity(model, t, block)    # grown as generation goes, never sized for the worst case
    state = model.init_state(b, capacity)
    # The prompt but its last token: whole pieces of PREFILL_PIECE tokens in parallel, the rest
    # (fewer) one at a time inside the first sampling call, which then feeds the last token and
    # samples: all through the one decoding program, so no prompt length compiles one of its own.
    token = jnp.asarray(prompt[:, -1])
    done = jnp.zeros((b,), bool)
    stop = -1 if stop_token is None else int(stop_token)
    options = sampling_options(temperature, top_k, top_p)
    pieces, forced, n_forced = split_prompt(prompt[:, :-1])
    for piece in pieces:
        _, state, _, _ = decode_block(graphdef, params, state, piece, np.int32(PREFILL_PIECE), token, done,
                                      np.int32(0), block, *options, np.int32(seed), np.int32(stop))
    out = []
    produced = 0
    while produced < max_new_tokens:
        # The first token comes alone, so that it streams as soon as it exists; then whole blocks.
        steps = 1 if produced == 0 else min(block, max_new_tokens - produced)
        if t + produced + steps > capacity:
            capacity = cache_capacity(t + produced + steps)
            state = grow_state(model, state, b, capacity)
        tokens, state, token, done = decode_block(graphdef, params, state, forced, n_forced, token, done,
                                                  np.int32(steps), block, *options, np.int32(seed), np.int32(stop))
        n_forced = np.int32(0)
        tokens = np.asarray(tokens)[:, :steps]
        produced += steps
        out.append(tokens)
        if on_tokens is not None:
            on_tokens(tokens)
        if stop_token is not None and bool(np.all(np.asarray(done))):
            break
    return np.concatenate(out, axis=1)
