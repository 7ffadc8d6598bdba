"""RWKV-7's WKV operator (the generalised delta rule): scan, step and chunked forms against a
float64 numpy definition written from the formula, in BlinkDL's [value, key] state layout, and
the chunked form's gradients against the scan's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microrwkv_jax.ops.wkv7 import unit_lower_inverse, wkv7, wkv7_chunked, wkv7_scan, wkv7_step
from tests.helpers import rel_err


def numpy_wkv7(r, k, v, w, a, b, s0):
    """BlinkDL's recurrence, token by token, float64, state P[value, key] = S[key, value]^T:
    P <- P diag(w) + (P a) b^T + v k^T;  y = P r."""
    r, k, v, w, a, b = (np.asarray(x, np.float64) for x in (r, k, v, w, a, b))
    p = np.swapaxes(np.asarray(s0, np.float64), -1, -2)
    y = np.zeros_like(v)
    for t in range(r.shape[1]):
        pa = np.einsum("bhvk,bhk->bhv", p, a[:, t])
        p = (p * w[:, t, :, None, :] + pa[..., :, None] * b[:, t, :, None, :]
             + v[:, t, :, :, None] * k[:, t, :, None, :])
        y[:, t] = np.einsum("bhvk,bhk->bhv", p, r[:, t])
    return y, np.swapaxes(p, -1, -2)


def rwkv7_inputs(seed, b=2, t=37, h=3, n=16, w_low=np.exp(-np.exp(-0.5))):
    """Inputs as RWKV-7 makes them: w in [w_low, 1), a = -kappa_hat, b = kappa_hat * iclr with
    kappa_hat a unit vector per head and iclr in (0, 1)."""
    rng = np.random.default_rng(seed)
    r, k, v = (rng.standard_normal((b, t, h, n)) for _ in range(3))
    w = rng.uniform(w_low, 0.9999, size=(b, t, h, n))
    kappa = rng.standard_normal((b, t, h, n))
    kappa /= np.linalg.norm(kappa, axis=-1, keepdims=True)
    iclr = rng.uniform(0, 1, size=(b, t, h, n))
    s0 = rng.standard_normal((b, h, n, n))
    return [jnp.asarray(x, jnp.float32) for x in (r, k, v, w, -kappa, kappa * iclr, s0)]


@pytest.mark.parametrize("w_low", [np.exp(-np.exp(-0.5)), 0.004])
def test_scan_and_step_equal_float64_numpy(w_low):
    inputs = rwkv7_inputs(1, w_low=w_low)
    y_ref, s_ref = numpy_wkv7(*inputs)
    y, s = jax.jit(wkv7_scan)(*inputs)
    assert y.dtype == jnp.float32 and s.dtype == jnp.float32
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    state, ys = inputs[-1], []
    for t in range(inputs[0].shape[1]):
        yt, state = wkv7_step(*(x[:, t] for x in inputs[:-1]), state)
        ys.append(yt)
    assert rel_err(jnp.stack(ys, 1), y_ref) <= 1e-5 and rel_err(state, s_ref) <= 1e-5


def test_long_sequence_stays_bounded_and_exact():
    """4096 tokens with strong decays and large keys: the delta rule keeps the state bounded."""
    r, k, v, w, a, b, s0 = rwkv7_inputs(2, b=1, t=4096, h=2, n=8, w_low=0.004)
    k, v = 8 * k, 8 * v
    y_ref, s_ref = numpy_wkv7(r, k, v, w, a, b, s0)
    y, s = jax.jit(wkv7_scan)(r, k, v, w, a, b, s0)
    assert np.isfinite(np.asarray(y)).all()
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5


def test_bf16_inputs_keep_float32_state():
    inputs = rwkv7_inputs(3)
    y_ref, s_ref = numpy_wkv7(*inputs)
    low = [x.astype(jnp.bfloat16) for x in inputs[:-1]]
    y, s = wkv7_scan(*low, inputs[-1])
    assert y.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    assert rel_err(y, y_ref) <= 3e-2 and rel_err(s, s_ref) <= 3e-2


@pytest.mark.parametrize("chunk_size, sub_chunk", [(1, 4), (5, 4), (16, 4), (24, 8)])
@pytest.mark.parametrize("w_low", [np.exp(-np.exp(-0.5)), 0.004])
def test_chunked_equals_float64_and_the_scan_in_values_and_gradients(chunk_size, sub_chunk, w_low):
    """T = 37, not a multiple of any chunk; the decays down to RWKV-7's clamp and further (0.004)."""
    inputs = rwkv7_inputs(chunk_size + sub_chunk, w_low=w_low)
    y_ref, s_ref = numpy_wkv7(*inputs)
    chunked = lambda *x: wkv7_chunked(*x, chunk_size=chunk_size, sub_chunk=sub_chunk)
    y, s = jax.jit(chunked)(*inputs)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    weights = jnp.asarray(np.random.default_rng(9).standard_normal(y_ref.shape), jnp.float32)
    loss = lambda fn: (lambda *x: jnp.sum(weights * fn(*x)[0]) + jnp.sum(jnp.sin(fn(*x)[1])))
    g_chunk = jax.jit(jax.grad(loss(chunked), argnums=range(7)))(*inputs)
    g_scan = jax.jit(jax.grad(loss(wkv7_scan), argnums=range(7)))(*inputs)
    for name, a, b in zip(["r", "k", "v", "w", "a", "b", "s0"], g_chunk, g_scan):
        assert np.isfinite(np.asarray(a)).all(), name
        assert rel_err(a, b) <= 1e-5, name


def test_chunked_stays_exact_over_4096_tokens_of_strong_decays_and_large_keys():
    r, k, v, w, a, b, s0 = rwkv7_inputs(5, b=1, t=4096, h=2, n=8, w_low=np.exp(-np.exp(-0.5)))
    k, v = 8 * k, 8 * v
    y_ref, s_ref = numpy_wkv7(r, k, v, w, a, b, s0)
    y, s = jax.jit(lambda *x: wkv7_chunked(*x, chunk_size=16, sub_chunk=4))(r, k, v, w, a, b, s0)
    assert np.isfinite(np.asarray(y)).all()
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5


def test_dispatcher_picks_the_step_the_scan_or_the_chunked_form():
    inputs = rwkv7_inputs(6, t=20)
    y_ref, s_ref = numpy_wkv7(*inputs)
    for chunk_size in (None, 8):
        y, s = wkv7(*inputs, chunk_size=chunk_size)
        assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    y1, s1 = wkv7(*(x[:, :1] for x in inputs[:-1]), inputs[-1], chunk_size=8)
    y1_ref, s1_ref = numpy_wkv7(*(x[:, :1] for x in inputs[:-1]), inputs[-1])
    assert y1.shape == y1_ref.shape and rel_err(y1, y1_ref) <= 1e-5 and rel_err(s1, s1_ref) <= 1e-5


def test_chunked_takes_decays_that_underflow_to_zero():
    """A decay of exactly 0 (RWKV-6's exp(-exp(d)) underflows for d > 4.5) empties the state, as in
    the scan: no NaN from log 0."""
    r, k, v, w, a, b, s0 = rwkv7_inputs(7, t=21)
    w = w.at[:, 3].set(0.0).at[:, 10, :, ::2].set(0.0)
    y_ref, s_ref = numpy_wkv7(r, k, v, w, a, b, s0)
    y, s = wkv7_chunked(r, k, v, w, a, b, s0, chunk_size=8)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5


@pytest.mark.parametrize("q", [1, 5, 16])
def test_the_unit_lower_triangular_inverse_equals_float64s(q):
    """(I - A)^{-1} of strictly lower-triangular A [2, 3, Q, Q] with entries in (-1, 1), as the
    chunk's in-context-learning scores are, against numpy's float64 inverse."""
    a = np.tril(np.random.default_rng(q).uniform(-1, 1, (2, 3, q, q)), -1)
    expected = np.linalg.inv(np.eye(q) - a)
    assert rel_err(unit_lower_inverse(jnp.asarray(a, jnp.float32)), expected) <= 1e-5
