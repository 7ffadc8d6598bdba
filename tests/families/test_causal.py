"""The causal model: causality, batch independence, gradients, training, recurrent decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from microrwkv_jax import LanguageModel
from microrwkv_jax.families.causal.model import SUBLAYERS
from tests.helpers import randomize_params, rel_err, tiny_config

FAMILIES = ["hybrid", "rwkv", "gpt"]


def make(family="hybrid", seed=0, **overrides):
    return LanguageModel(tiny_config(family, **overrides), rngs=nnx.Rngs(seed))


@nnx.jit
def logits_of(model, x):
    return model(x)


@nnx.jit
def forward_with_state(model, x, state):
    return model.forward(x, state)


def tokens(seed, b, t, vocab=97):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, size=(b, t)), jnp.int32)


@pytest.mark.parametrize("family", FAMILIES)
def test_changing_future_tokens_leaves_past_logits_unchanged(family):
    model = make(family, gqa_window=None)
    x = tokens(0, 2, 29)
    t = 13
    y = x.at[:, t + 1:].set(tokens(1, 2, 29 - t - 1))
    a, b = logits_of(model, x), logits_of(model, y)
    np.testing.assert_array_equal(np.asarray(a[:, : t + 1]), np.asarray(b[:, : t + 1]))
    assert rel_err(a[:, t + 1:], b[:, t + 1:]) > 1e-3      # the future did change


def test_batch_rows_are_independent():
    model = make("hybrid")
    x = tokens(2, 3, 20)
    together = logits_of(model, x)
    for i in range(3):
        alone = logits_of(model, x[i:i + 1])
        np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(together[i]), rtol=0, atol=2e-5)
    other = logits_of(model, x.at[1:].set(tokens(3, 2, 20)))
    np.testing.assert_allclose(np.asarray(other[0]), np.asarray(together[0]), rtol=0, atol=2e-5)


def loss_fn(model, x):
    logits, _, aux = model.forward(x[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()
    return ce + 0.01 * aux["moe_aux_loss"], aux


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_gets_a_nonzero_gradient(family):
    model = make(family)
    grads, aux = nnx.jit(nnx.grad(loss_fn, has_aux=True))(model, tokens(4, 2, 24))
    flat = nnx.to_flat_state(grads)
    assert len(flat) > 10
    for path, value in flat:
        assert np.all(np.isfinite(np.asarray(value[...]))), path
        assert float(jnp.max(jnp.abs(value[...]))) > 0, f"zero gradient for {'.'.join(map(str, path))}"
    if family == "hybrid":
        assert np.isfinite(float(aux["moe_aux_loss"])) and float(aux["moe_aux_loss"]) > 0
        frac = np.asarray(aux["expert_fraction"])
        assert frac.shape == (2, 4)
        np.testing.assert_allclose(frac.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_adamw_steps_lower_the_loss(family):
    model = make(family)
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)
    batch = tokens(5, 4, 25)

    @nnx.jit
    def step(model, optimizer, batch):
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, batch)) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_equals_full_forward(family):
    # 40 tokens: longer than the sliding window (8) and than block_size (32).
    model = make(family, gqa_window=None if family != "hybrid" else 12)
    x = tokens(6, 2, 40)
    full = logits_of(model, x)
    state = model.init_state(2, 40)
    logits, state, _ = forward_with_state(model, x[:, :17], state)
    outs = [logits]
    for i in range(17, 40):
        logits, state, _ = forward_with_state(model, x[:, i:i + 1], state)
        outs.append(logits)
    assert rel_err(jnp.concatenate(outs, axis=1), full) <= 1e-5
    assert int(state["pos"]) == 40


def test_vocabulary_is_padded_to_a_multiple_of_64_and_logits_are_not():
    model = make("rwkv")
    assert model.wte.embedding[...].shape == (128, 32)
    assert model(tokens(7, 1, 5)).shape == (1, 5, 97)
    assert model(tokens(7, 1, 5)).dtype == jnp.float32


def test_bfloat16_compute_tracks_float32():
    x = tokens(8, 2, 20)
    ref = logits_of(make("hybrid"), x)
    low = logits_of(make("hybrid", dtype="bfloat16"), x)
    assert low.dtype == jnp.float32
    assert rel_err(low, ref) <= 5e-2


def test_the_sublayer_table_is_what_this_file_tests():
    assert set(SUBLAYERS) == {"time_mix", "time_mix7", "channel_mix", "swa", "gqa", "moe", "mlp"}


@pytest.mark.parametrize("name", ["time_mix", "time_mix7", "channel_mix", "swa", "gqa", "moe", "mlp"])
def test_every_sublayer_has_one_interface_and_continues_from_its_state(name):
    """`layer(x, start=, state=) -> (y, state, aux)` and `init_state(batch, max_len)`: feeding a
    sequence in two pieces through the state equals feeding it whole (parameters perturbed, so
    that none is zero: RWKV-7's output projection starts at 0)."""
    config = tiny_config("hybrid", gqa_window=None)
    layer = randomize_params(SUBLAYERS[name](config, 0, nnx.Rngs(0), jnp.float32), seed=1)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 21, config.n_embd)), jnp.float32)
    whole, _, aux = layer(x, start=0, state=None)
    assert whole.shape == x.shape and isinstance(aux, dict)
    state = layer.init_state(2, 21)
    first, state, _ = layer(x[:, :13], start=0, state=state)
    second, state, _ = layer(x[:, 13:], start=13, state=state)
    assert rel_err(jnp.concatenate([first, second], axis=1), whole) <= 1e-5
    assert jax.tree.structure(state) == jax.tree.structure(layer.init_state(2, 21))
