"""The tied output head's fused, chunked cross-entropy against a float64 numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microrwkv_jax.layers.output_head import tied_cross_entropy, tied_logits
from tests.helpers import rel_err

VOCAB, PADDED, WIDTH = 13, 16, 8


def inputs(seed, b=6, t=11):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, WIDTH)).astype(np.float32)
    embedding = rng.standard_normal((PADDED, WIDTH)).astype(np.float32)
    targets = rng.integers(0, VOCAB, (b, t)).astype(np.int32)
    targets[rng.random((b, t)) < 0.3] = -1           # unscored positions
    return x, embedding, targets


def numpy_loss_and_grads(x, embedding, targets):
    """Mean cross-entropy over scored targets and its gradients, float64, written out by hand."""
    x, e = x.astype(np.float64), embedding.astype(np.float64)[:VOCAB]
    logits = x @ e.T
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    scored = targets >= 0
    count = scored.sum()
    safe = np.where(scored, targets, 0)
    loss = -np.take_along_axis(log_probs, safe[..., None], -1)[..., 0][scored].sum() / count
    d_logits = np.exp(log_probs)
    np.put_along_axis(d_logits, safe[..., None], np.take_along_axis(d_logits, safe[..., None], -1) - 1, -1)
    d_logits *= scored[..., None] / count
    d_embedding = np.zeros(embedding.shape)
    d_embedding[:VOCAB] = np.einsum("btv,btc->vc", d_logits, x)
    return loss, d_logits @ e, d_embedding


@pytest.mark.parametrize("chunk_len, groups", [(11, 1), (4, 1), (1, 1), (3, 3), (5, 6)])
def test_loss_and_gradients_match_float64_reference(chunk_len, groups):
    x, embedding, targets = inputs(chunk_len + groups)
    loss, (dx, d_emb) = jax.jit(jax.value_and_grad(tied_cross_entropy, argnums=(0, 1)), static_argnums=(3, 4, 5))(
        x, embedding, targets, VOCAB, chunk_len, groups)
    ref_loss, ref_dx, ref_d_emb = numpy_loss_and_grads(x, embedding, targets)
    assert abs(float(loss) - ref_loss) <= 1e-6 * ref_loss
    assert rel_err(dx, ref_dx) <= 1e-5
    assert rel_err(d_emb, ref_d_emb) <= 1e-5
    np.testing.assert_array_equal(np.asarray(d_emb[VOCAB:]), 0.0)    # padding rows are never predicted


def test_equals_the_loss_of_the_logits():
    x, embedding, targets = inputs(1)
    logits = tied_logits(jnp.asarray(x), jnp.asarray(embedding), VOCAB)
    ref_loss, _, _ = numpy_loss_and_grads(x, embedding, targets)
    scored = targets >= 0
    log_probs = jax.nn.log_softmax(logits)
    from_logits = -jnp.sum(jnp.take_along_axis(log_probs, jnp.maximum(targets, 0)[..., None], -1)[..., 0] * scored)
    assert abs(float(from_logits) / scored.sum() - ref_loss) <= 1e-6 * ref_loss
    assert abs(float(tied_cross_entropy(x, embedding, targets, VOCAB, 4)) - ref_loss) <= 1e-6 * ref_loss


def test_backward_scales_by_the_cotangent():
    """The gradients are computed in the forward pass; the backward pass must still apply the
    incoming cotangent (here 2.5 from the outer function, and through a sum with another loss)."""
    x, embedding, targets = inputs(2)
    _, ref_dx, ref_d_emb = numpy_loss_and_grads(x, embedding, targets)
    dx, d_emb = jax.grad(lambda a, e: 2.5 * tied_cross_entropy(a, e, targets, VOCAB, 4) + jnp.sum(a), (0, 1))(
        x, embedding)
    assert rel_err(dx, 2.5 * ref_dx + 1.0) <= 1e-5
    assert rel_err(d_emb, 2.5 * ref_d_emb) <= 1e-5


def test_bfloat16_activations():
    x, embedding, targets = inputs(3)
    xb = jnp.asarray(x, jnp.bfloat16)
    loss, dx = jax.value_and_grad(tied_cross_entropy)(xb, embedding, targets, VOCAB, 4)
    ref_loss, ref_dx, _ = numpy_loss_and_grads(np.asarray(xb.astype(jnp.float32)), embedding, targets)
    assert loss.dtype == jnp.float32 and dx.dtype == jnp.bfloat16
    assert abs(float(loss) - ref_loss) <= 2e-2 * ref_loss
    assert rel_err(dx, ref_dx) <= 2e-2


def test_groups_must_divide_the_batch():
    x, embedding, targets = inputs(4, b=6)
    with pytest.raises(ValueError) as err:
        tied_cross_entropy(x, embedding, targets, VOCAB, 4, 4)
    assert str(err.value).splitlines()[0] == "groups=4: must divide the batch size 6"   # JAX may append a note
