"""The trainer's step functions: the fused loss and its gradients against plain autodiff, the
bf16 compute path, the loss chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from microrwkv_jax import build_model, model_config
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.training.steps import loss_chunk_len, make_loss_fn
from tests.helpers import rel_err, tiny_config

PUBLISHED = dict(block_size=64, vocab_size=97, n_layer=2, n_head=2, n_embd=32, num_experts=4,
                 num_active_experts=3, expert_dim=20, bias=False)


def tiny_model_config(family, dtype="float32"):
    if family == "published":
        return model_config("published", dtype=dtype, **PUBLISHED)
    if family == "gpt2":
        return model_config("gpt2", dtype=dtype, vocab_size=97, block_size=64, n_layer=2, n_embd=32, n_head=4,
                            n_kv_head=4)
    if family == "rwkv4":
        return model_config("rwkv4", dtype=dtype, vocab_size=97, block_size=64, n_layer=2, n_embd=32)
    return tiny_config(family).replace(dtype=dtype)


def loss_and_grads(config, batch, **loss_kwargs):
    codec = ParamCodec(build_model(config, seed=0))
    params = codec.flat(build_model(config, seed=0))
    (loss, (ce, _)), grads = jax.jit(jax.value_and_grad(make_loss_fn(codec, 0.01, **loss_kwargs), has_aux=True))(
        params, batch)
    return codec, params, loss, ce, grads


@pytest.mark.parametrize("rows, seq_len, vocab, budget, expected", [
    (16, 1024, 50304, 2 ** 28, 256),    # at most 333 positions fit: 4 equal chunks, no padding
    (8, 512, 50304, 2 ** 23, 20),       # at most 20: 26 chunks of 20 (8 padded positions)
    (8, 384, 257, 2 ** 23, 384),        # a byte vocabulary: one chunk
    (4, 40, 97, 4 * 97 * 6, 6),         # 7 chunks of 6 (2 padded positions)
    (64, 100, 50304, 1000, 1),          # the budget is smaller than one position's logits
])
def test_loss_chunk_len(rows, seq_len, vocab, budget, expected):
    assert loss_chunk_len(rows, seq_len, vocab, budget) == expected


@pytest.mark.parametrize("family", ["hybrid", "published", "gpt2", "rwkv4"])
def test_trainer_loss_and_gradients_equal_autodiff_through_the_logits(family):
    """The fused head loss (chunked, gradients formed in the forward pass) against plain autodiff
    of optax's cross-entropy on the model's logits, for every parameter."""
    config = tiny_model_config(family)
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 97, (4, 41)), jnp.int32)
    codec, params, loss, ce, grads = loss_and_grads(config, batch, loss_chunk_elements=4 * 97 * 6)   # 7 chunks

    def reference(p):
        logits, _, aux = codec.model(p).forward(batch[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()
        return ce + 0.01 * aux["moe_aux_loss"], ce

    (ref_loss, ref_ce), ref_grads = jax.value_and_grad(reference, has_aux=True)(params)
    assert abs(float(ce) - float(ref_ce)) <= 1e-6 * float(ref_ce)
    assert abs(float(loss) - float(ref_loss)) <= 1e-6 * float(ref_loss)
    worst = max((rel_err(grads[k], ref_grads[k]), k) for k in params if np.any(np.asarray(ref_grads[k])))
    assert worst[0] <= 1e-4, worst
    assert all(np.any(np.asarray(ref_grads[k])) for k in params if k.endswith("embedding") and "wte" in k)


@pytest.mark.parametrize("family", ["rwkv", "gpt", "published", "gpt2", "rwkv4"])
def test_bfloat16_compute_path_tracks_float32(family):
    """dtype=bfloat16 is what a GPU run uses ("auto"): parameters and gradients stay float32.
    (Not the hybrid: bf16 rounding flips some of its top-k expert choices, a discrete change.)"""
    batch = jnp.asarray(np.random.default_rng(1).integers(0, 97, (4, 41)), jnp.int32)
    _, _, _, ce32, g32 = loss_and_grads(tiny_model_config(family), batch)
    _, params, _, ce16, g16 = loss_and_grads(tiny_model_config(family, "bfloat16"), batch)
    assert all(p.dtype == jnp.float32 for p in params.values()) and all(g.dtype == jnp.float32 for g in g16.values())
    assert abs(float(ce16) - float(ce32)) <= 1e-3 * float(ce32)
    flat = lambda g: np.concatenate([np.ravel(np.asarray(g[k])) for k in sorted(g)])
    assert rel_err(flat(g16), flat(g32)) <= 2e-2


def test_train_step_reports_parameters_that_an_update_made_non_finite():
    """A finite loss with non-finite parameters after the update (here a padding row of the
    embedding, which no forward pass reads) must be flagged, not only a non-finite loss."""
    import ml_collections
    from microrwkv_jax.training.optimizer import make_optimizer
    from microrwkv_jax.training.steps import make_train_step
    config = tiny_config("rwkv")
    codec = ParamCodec(build_model(config, seed=0))
    params = codec.flat(build_model(config, seed=0))
    cfg = ml_collections.ConfigDict(dict(learning_rate=1e-3, min_learning_rate=1e-3, warmup_steps=0, num_train_steps=2,
                                         weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0))
    optimizer = make_optimizer(cfg, codec.linear_maps)
    step = jax.jit(make_train_step(codec, optimizer, 1, 0.0))
    batch = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 17)), jnp.int32)
    _, _, metrics = step(params, optimizer.init(params), batch)
    assert bool(metrics["params_finite"]) and np.isfinite(float(metrics["grad_norm"]))
    poisoned = {**params, "wte/embedding": params["wte/embedding"].at[120].set(jnp.inf)}    # rows >= 97 are padding
    _, _, metrics = step(poisoned, optimizer.init(poisoned), batch)
    assert np.isfinite(float(metrics["loss"])) and not bool(metrics["params_finite"])


def test_the_trainer_names_what_is_not_finite():
    from microrwkv_jax.training.loop import non_finite
    assert non_finite(1.0, 2.0, True) == ""
    assert non_finite(float("nan"), 2.0, True) == "loss is nan"
    assert non_finite(1.0, float("inf"), True) == "gradient norm is inf"
    assert non_finite(1.0, 2.0, False) == "parameters are not finite after the update"
