"""The WKV operator: chunked, scan and step forms against each other and against float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microrwkv_jax.ops import wkv5
from tests.helpers import rel_err


def random_inputs(seed, b=2, t=37, h=3, n=8, dtype=jnp.float32, w_range=(0.01, 0.9999)):
    rng = np.random.default_rng(seed)
    r, k, v = (jnp.asarray(rng.standard_normal((b, t, h, n)), dtype) for _ in range(3))
    w = jnp.asarray(rng.uniform(*w_range, size=h), jnp.float32)
    u = jnp.asarray(rng.standard_normal(h), jnp.float32)
    s0 = jnp.asarray(rng.standard_normal((b, h, n, n)), jnp.float32)
    return r, k, v, w, u, s0


def numpy_wkv(r, k, v, w, u, s0):
    """The spec's formula, token by token, in float64."""
    r, k, v, w, u, s = (np.asarray(a, np.float64) for a in (r, k, v, w, u, s0))
    y = np.zeros_like(v)
    for t in range(r.shape[1]):
        kv = np.einsum("bhi,bhj->bhij", k[:, t], v[:, t])
        y[:, t] = np.einsum("bhi,bhij->bhj", r[:, t], s + u[None, :, None, None] * kv)
        s = w[None, :, None, None] * s + kv
    return y, s


def step_loop(r, k, v, w, u, s):
    ys = []
    for t in range(r.shape[1]):
        y, s = wkv5.wkv5_step(r[:, t], k[:, t], v[:, t], w, u, s)
        ys.append(y)
    return jnp.stack(ys, axis=1), s


@pytest.mark.parametrize("w_range", [(0.01, 0.2), (0.9, 0.9999), (0.01, 0.9999)])
def test_scan_equals_float64_numpy(w_range):
    inputs = random_inputs(1, w_range=w_range)
    y_ref, s_ref = numpy_wkv(*inputs)
    y, s = wkv5.wkv5_scan(*inputs)
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 16, 64])
@pytest.mark.parametrize("w_range", [(0.01, 0.2), (0.9, 0.9999), (0.01, 0.9999)])
def test_chunked_and_step_equal_scan_float32(chunk_size, w_range):
    inputs = random_inputs(chunk_size, t=37, w_range=w_range)   # 37 is not a multiple of any chunk size > 1
    y_scan, s_scan = wkv5.wkv5_scan(*inputs)
    y_chunk, s_chunk = wkv5.wkv5_chunked(*inputs, chunk_size=chunk_size)
    y_step, s_step = step_loop(*inputs)
    for y, s in ((y_chunk, s_chunk), (y_step, s_step)):
        assert y.dtype == jnp.float32 and s.dtype == jnp.float32
        assert rel_err(y, y_scan) <= 1e-5
        assert rel_err(s, s_scan) <= 1e-5


def test_bf16_inputs_keep_float32_state():
    r, k, v, w, u, s0 = random_inputs(7, t=45)
    ref_y, ref_s = numpy_wkv(r, k, v, w, u, s0)
    r16, k16, v16 = (a.astype(jnp.bfloat16) for a in (r, k, v))
    for fn in (lambda *a: wkv5.wkv5_chunked(*a, chunk_size=16), wkv5.wkv5_scan, step_loop):
        y, s = fn(r16, k16, v16, w, u, s0)
        assert s.dtype == jnp.float32
        assert rel_err(y, ref_y) <= 2e-2
        assert rel_err(s, ref_s) <= 2e-2


def test_strong_decay_long_chunk_stays_finite():
    # w = 0.01 over a 64-token chunk: w^63 underflows to 0 but must never produce inf or NaN.
    r, k, v, _, u, s0 = random_inputs(3, t=130, h=2)
    w = jnp.asarray([0.01, 0.9999], jnp.float32)
    y, s = wkv5.wkv5_chunked(r, k, v, w, u, s0, chunk_size=64)
    assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(s)).all()
    y_ref, s_ref = numpy_wkv(r, k, v, w, u, s0)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5


def test_carrying_state_across_a_split_equals_one_pass():
    r, k, v, w, u, s0 = random_inputs(11, t=50)
    y_full, s_full = wkv5.wkv5_chunked(r, k, v, w, u, s0, chunk_size=8)
    y1, s1 = wkv5.wkv5_chunked(r[:, :19], k[:, :19], v[:, :19], w, u, s0, chunk_size=8)
    y2, s2 = wkv5.wkv5_chunked(r[:, 19:], k[:, 19:], v[:, 19:], w, u, s1, chunk_size=8)
    assert rel_err(jnp.concatenate([y1, y2], axis=1), y_full) <= 1e-6
    assert rel_err(s2, s_full) <= 1e-6


def test_chunked_gradients_match_scan():
    r, k, v, w, u, s0 = random_inputs(5, t=21)
    loss = lambda fn: (lambda *a: jnp.sum(jnp.sin(fn(*a)[0])))
    g_chunk = jax.grad(loss(lambda *a: wkv5.wkv5_chunked(*a, chunk_size=8)), argnums=(0, 1, 2, 3, 4))(r, k, v, w, u, s0)
    g_scan = jax.grad(loss(wkv5.wkv5_scan), argnums=(0, 1, 2, 3, 4))(r, k, v, w, u, s0)
    for a, b in zip(g_chunk, g_scan):
        assert rel_err(a, b) <= 1e-5


def numpy_wkv_per_channel(r, k, v, w, u, s0):
    """The spec with a decay per key channel ([H, N]) or per token and key channel ([B, T, H, N])
    and a bonus per key channel ([H, N]), token by token, in float64."""
    r, k, v, w, u, s = (np.asarray(a, np.float64) for a in (r, k, v, w, u, s0))
    y = np.zeros_like(v)
    for t in range(r.shape[1]):
        wt = w[:, t] if w.ndim == 4 else w[None]
        kv = np.einsum("bhi,bhj->bhij", k[:, t], v[:, t])
        y[:, t] = np.einsum("bhi,bhij->bhj", r[:, t], s + u[None, :, :, None] * kv)
        s = wt[..., None] * s + kv
    return y, s


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("w_range", [(0.004, 0.2), (0.9, 0.999), (0.004, 0.999)])
def test_per_channel_and_per_token_decays_equal_float64_numpy(per_token, w_range):
    """RWKV-5.2's decay per key channel and RWKV-6's per token: scan and step against float64,
    for decays from 0.999 down to 0.004 per token."""
    rng = np.random.default_rng(int(per_token) * 10 + int(w_range[0] * 1000))
    b, t, h, n = 2, 41, 3, 8
    r, k, v, _, _, s0 = random_inputs(2, b=b, t=t, h=h, n=n)
    w = jnp.asarray(rng.uniform(*w_range, size=(b, t, h, n) if per_token else (h, n)), jnp.float32)
    u = jnp.asarray(rng.standard_normal((h, n)), jnp.float32)
    y_ref, s_ref = numpy_wkv_per_channel(r, k, v, w, u, s0)
    y, s = wkv5.wkv5_scan(r, k, v, w, u, s0)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    ys, state = [], s0
    for i in range(t):
        yi, state = wkv5.wkv5_step(r[:, i], k[:, i], v[:, i], w[:, i] if per_token else w, u, state)
        ys.append(yi)
    assert rel_err(jnp.stack(ys, 1), y_ref) <= 1e-5 and rel_err(state, s_ref) <= 1e-5


def per_token_inputs(seed, b=2, t=37, h=3, n=8, w_range=(0.004, 0.999), key_scale=1.0):
    rng = np.random.default_rng(seed)
    r, k, v = (jnp.asarray(rng.standard_normal((b, t, h, n)), jnp.float32) for _ in range(3))
    w = jnp.asarray(rng.uniform(*w_range, size=(b, t, h, n)), jnp.float32)
    u = jnp.asarray(rng.standard_normal((h, n)), jnp.float32)
    s0 = jnp.asarray(rng.standard_normal((b, h, n, n)), jnp.float32)
    return r, key_scale * k, v, w, u, s0


@pytest.mark.parametrize("chunk_size, sub_chunk", [(1, 4), (5, 4), (16, 16), (16, 4), (24, 8)])
@pytest.mark.parametrize("w_range", [(0.004, 0.2), (0.9, 0.999), (0.004, 0.999)])
def test_chunked_per_token_decays_equal_float64_and_the_scan_in_values_and_gradients(chunk_size, sub_chunk, w_range):
    """RWKV-6's decays (per token and key channel) in the chunked form: the float64 definition's
    values, and the scan form's gradients with respect to every input, T not a multiple of the
    chunk; sub-chunks of one chunk (16/16: pairs inside one sub-chunk only) or several (across)."""
    inputs = per_token_inputs(chunk_size, w_range=w_range)
    y_ref, s_ref = numpy_wkv_per_channel(*inputs)
    y, s = wkv5.wkv5_chunked(*inputs, chunk_size=chunk_size, sub_chunk=sub_chunk)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    weights = jnp.asarray(np.random.default_rng(9).standard_normal(y_ref.shape), jnp.float32)
    loss = lambda fn: (lambda *a: jnp.sum(weights * fn(*a)[0]) + jnp.sum(jnp.sin(fn(*a)[1])))
    chunked = lambda *a: wkv5.wkv5_chunked(*a, chunk_size=chunk_size, sub_chunk=sub_chunk)
    g_chunk = jax.grad(loss(chunked), argnums=range(6))(*inputs)
    g_scan = jax.grad(loss(wkv5.wkv5_scan), argnums=range(6))(*inputs)
    for name, a, b in zip("rkvwus", g_chunk, g_scan):
        assert np.isfinite(np.asarray(a)).all(), name
        assert rel_err(a, b) <= 1e-5, name


def test_chunked_per_token_decays_stay_exact_over_4096_tokens_of_strong_decays_and_large_keys():
    inputs = per_token_inputs(4, b=1, t=4096, h=2, n=8, w_range=(0.004, 0.999), key_scale=8.0)
    y_ref, s_ref = numpy_wkv_per_channel(*inputs)
    for chunk_size, sub_chunk in ((16, 4), (64, 16)):
        y, s = jax.jit(lambda *a: wkv5.wkv5_chunked(*a, chunk_size=chunk_size, sub_chunk=sub_chunk))(*inputs)
        assert np.isfinite(np.asarray(y)).all()
        assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5


def test_chunked_per_token_decays_that_underflow_to_zero():
    """RWKV-6's exp(-exp(d)) is exactly 0 for d > 4.5: the chunked form empties those channels as
    the definition does, with no NaN from log 0."""
    r, k, v, w, u, s0 = per_token_inputs(8, t=21)
    w = w.at[:, 3].set(0.0).at[:, 10, :, ::2].set(0.0)
    y_ref, s_ref = numpy_wkv_per_channel(r, k, v, w, u, s0)
    y, s = wkv5.wkv5_chunked(r, k, v, w, u, s0, chunk_size=8)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    loss = lambda fn: (lambda *a: jnp.sum(fn(*a)[0] ** 2))
    g_chunk = jax.grad(loss(lambda *a: wkv5.wkv5_chunked(*a, chunk_size=8)), argnums=range(6))(r, k, v, w, u, s0)
    g_scan = jax.grad(loss(wkv5.wkv5_scan), argnums=range(6))(r, k, v, w, u, s0)
    for name, a, b in zip("rkvwus", g_chunk, g_scan):          # finite: no NaN from log's gradient at 0
        assert np.isfinite(np.asarray(a)).all(), name
        if name != "w":     # (the decays floored at e^-30 get no gradient; the scan's is finite there)
            assert rel_err(a, b) <= 1e-5, name
