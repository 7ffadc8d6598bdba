"""RWKV-7's time mixing as a sub-layer of the causal hybrid ("time_mix7"): the value residual
handed from the first block to the later ones, decoding as a recurrence, training, FLOPs.
(The time mix's math itself is tested against BlinkDL's `rwkv` package through the RWKV-7
family, tests/families/test_rwkv5_6_7.py, which runs the same layer.)"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from microrwkv_jax import LanguageModel, model_config
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.families import train_flops_per_token
from tests.helpers import randomize_params, rel_err, tiny_config

LAYERS7 = ("time_mix7", "channel_mix", "swa", "gqa", "moe")


def make(seed=0, randomize=True, **overrides):
    config = tiny_config("hybrid", layers=LAYERS7, lora_dims=(8, 8, 4, 8), **overrides)
    model = LanguageModel(config, rngs=nnx.Rngs(seed))
    return randomize_params(model, seed + 1) if randomize else model


def tokens(seed, b, t, vocab=97):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, size=(b, t)), jnp.int32)


def loss_fn(model, x):
    logits, _, aux = model.forward(x[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean() + 0.01 * aux["moe_aux_loss"]


def test_prefill_then_decode_equals_the_whole_sequence_and_the_future_does_not_leak():
    model = make(gqa_window=12)
    forward = nnx.jit(lambda m, x, s: m.forward(x, s))
    x = tokens(0, 2, 40)
    full, _, aux = nnx.jit(lambda m, x: m.forward(x))(model, x)
    assert set(aux) == {"moe_aux_loss", "expert_fraction"}          # v_first stays inside the blocks
    state = model.init_state(2, 40)
    logits, state, _ = forward(model, x[:, :17], state)
    outs = [logits]
    for i in range(17, 40):
        logits, state, _ = forward(model, x[:, i:i + 1], state)
        outs.append(logits)
    assert rel_err(jnp.concatenate(outs, axis=1), full) <= 1e-5
    changed = nnx.jit(lambda m, x: m(x))(model, x.at[:, 20:].set(tokens(1, 2, 20)))
    np.testing.assert_array_equal(np.asarray(changed[:, :20]), np.asarray(full[:, :20]))


def test_the_value_residual_carries_the_first_blocks_values_into_the_later_blocks():
    """Block 1's value-residual LoRA (v0, v1, v2) has a gradient only if it mixes in values other
    than its own (the first block's); every other parameter has one too."""
    model = make(n_layer=3)
    grads = nnx.jit(nnx.grad(loss_fn))(model, tokens(2, 2, 24))
    flat = {".".join(map(str, path)): np.asarray(value[...]) for path, value in nnx.to_flat_state(grads)}
    for name, value in flat.items():
        assert np.all(np.isfinite(value)) and np.max(np.abs(value)) > 0, name
    assert {"blocks.1.time_mix7.v0", "blocks.2.time_mix7.v2"} <= set(flat)
    assert not {"blocks.0.time_mix7.v0", "blocks.0.time_mix7.v1", "blocks.0.time_mix7.v2"} & set(flat)  # layer 0's is v


def test_it_trains_from_rwkv7s_initialisation():
    model = make(randomize=False)
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)
    batch = tokens(5, 4, 25)

    @nnx.jit
    def step(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, batch)) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.3, losses


def test_a_lora_rank_list_of_the_wrong_length_and_a_time_state_are_refused():
    with pytest.raises(ValueError, match=r"^lora_dims=\(8, 8\): time_mix7 takes four ranks"):
        tiny_config("hybrid", layers=LAYERS7, lora_dims=(8, 8))
    with pytest.raises(ValueError, match=r"^time_state=True: state tuning is for RWKV-5/6/7; the causal family has no "
                                         r"time_state$"):
        tiny_config("hybrid", layers=LAYERS7, time_state=True)


def test_flops_are_its_matrices_loras_and_state_products():
    """Counted from the built model: 2 per weight of every linear map and LoRA matrix a token
    goes through, 8 C N per layer for the delta rule's state products."""
    config = model_config("hybrid", vocab_size=97, n_layer=3, n_embd=32, n_head=4, layers=("time_mix7", "channel_mix"),
                          lora_dims=(8, 8, 4, 16))
    codec = ParamCodec(LanguageModel(config, rngs=nnx.Rngs(0)))
    loras = [n for n in codec.shapes if n.split("/")[-1] in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")]
    weights = sum(int(np.prod(codec.shapes[n])) for n in list(codec.linear_maps) + loras)
    forward = 2 * weights + 2 * config.n_embd * config.padded_vocab_size + 3 * 8 * config.n_embd * config.head_size
    assert train_flops_per_token(config, 64) == pytest.approx(3 * forward, rel=1e-12)
