"""The tied output head (logits = x @ embedding^T), and its fused cross-entropy for training.

The head is the largest matrix product of a small model (GPT-2's 50,304-token vocabulary is 38M
multiply-adds per token at width 768) and its logits the largest activation: [B, T, V] float32
is 3.3 GB at 16 x 1024 tokens. `tied_cross_entropy` never keeps them: it walks the sequence in
chunks, and for each chunk computes the logits, the loss and, right away, the gradients with
respect to x and the embedding (the loss is the scalar at the end of the graph, so its
backward pass only has to scale them by the incoming cotangent). Per chunk that is the same
three matrix products autodiff would do, without the [B, T, V] residual, its copies or the
scatter that differentiating a gather of the target logits costs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def tied_logits(x, embedding, vocab_size: int):
    """x [B, T, C] @ embedding [V_padded, C]^T -> float32 logits [B, T, vocab_size].

    The product runs in x's dtype with float32 accumulation; the padding rows of the embedding
    are never predicted. It runs over the whole padded matrix and drops the padding logits after:
    slicing the matrix instead would copy it (154 MB at 50,304 x 768 in float32), for every
    decoded token, to save 0.05% of the product."""
    logits = jnp.einsum("btc,vc->btv", x, embedding.astype(x.dtype), preferred_element_type=jnp.float32)
    return logits[..., :vocab_size]


def _chunk_loss_and_grads(x, embedding, targets):
    """Summed loss and its gradients for one chunk. x [G, B, K, C], embedding [V, C] (x's dtype),
    targets [G, B, K] (< 0: not scored) -> (loss sum, dx [G, B, K, C], d_embedding [G, V, C] f32)."""
    logits = jnp.einsum("gbkc,vc->gbkv", x, embedding, preferred_element_type=jnp.float32)
    scored = targets >= 0
    safe_targets = jnp.where(scored, targets, 0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
    loss_sum = jnp.sum(jnp.where(scored, lse - target_logit, 0.0))
    # d(loss sum)/d logits = softmax - one_hot(target), zero on unscored positions.
    one_hot = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == safe_targets[..., None]
    d_logits = ((jnp.exp(logits - lse[..., None]) - one_hot) * scored[..., None]).astype(x.dtype)
    dx = jnp.einsum("gbkv,vc->gbkc", d_logits, embedding)
    d_embedding = jnp.einsum("gbkv,gbkc->gvc", d_logits, x, preferred_element_type=jnp.float32)
    return loss_sum, dx, d_embedding


def _loss_and_grads(x, embedding, targets, vocab_size, chunk_len, groups):
    b, t, c = x.shape
    if b % groups:
        raise ValueError(f"groups={groups}: must divide the batch size {b}")
    k = min(chunk_len, t)
    pad = (k - t % k) % k     # pad T to whole chunks with unscored positions
    xp = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    tp = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=-1)
    n = (t + pad) // k
    # [G, B/G, n, K, ...] -> chunks first. The group axis keeps one d_embedding accumulator per
    # data-parallel shard, so that a sharded batch is summed across devices once, after the loop.
    xs = xp.reshape(groups, b // groups, n, k, c).transpose(2, 0, 1, 3, 4)
    ts = tp.reshape(groups, b // groups, n, k).transpose(2, 0, 1, 3)
    emb = embedding[:vocab_size].astype(x.dtype)

    def body(carry, chunk):
        loss_sum, d_emb = carry
        chunk_loss, dx, chunk_d_emb = _chunk_loss_and_grads(chunk[0], emb, chunk[1])
        return (loss_sum + chunk_loss, d_emb + chunk_d_emb), dx

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros((groups, vocab_size, c), jnp.float32))
    (loss_sum, d_emb), dx = jax.lax.scan(body, zeros, (xs, ts))
    count = jnp.maximum(jnp.sum(targets >= 0), 1).astype(jnp.float32)
    dx = dx.transpose(1, 2, 0, 3, 4).reshape(b, t + pad, c)[:, :t] / count
    d_emb = jnp.pad(jnp.sum(d_emb, axis=0) / count, ((0, embedding.shape[0] - vocab_size), (0, 0)))
    return loss_sum / count, (dx.astype(x.dtype), d_emb.astype(embedding.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def tied_cross_entropy(x, embedding, targets, vocab_size: int, chunk_len: int = 32, groups: int = 1):
    """Mean cross-entropy of the tied head's predictions over the scored targets, in float32.

    x:          [B, T, C] final hidden states (any float dtype; the products run in it)
    embedding:  [V_padded, C] the tied embedding (float32 parameters)
    targets:    int [B, T]; positions with a negative target are not scored
    vocab_size: the real vocabulary (padding rows are never predicted)
    chunk_len:  positions per chunk: B * chunk_len logits rows are alive at a time
    groups:     the number of data-parallel shards of the batch axis (1 on one device)

    Equal to `optax.softmax_cross_entropy_with_integer_labels(tied_logits(...))` averaged over
    the scored positions; differentiable in x and embedding (first order).
    """
    return _loss_and_grads(x, embedding, targets, vocab_size, chunk_len, groups)[0]


def _forward(x, embedding, targets, vocab_size, chunk_len, groups):
    return _loss_and_grads(x, embedding, targets, vocab_size, chunk_len, groups)


def _backward(vocab_size, chunk_len, groups, grads, cotangent):
    dx, d_embedding = grads
    return (cotangent * dx).astype(dx.dtype), cotangent * d_embedding, None


tied_cross_entropy.defvjp(_forward, _backward)
