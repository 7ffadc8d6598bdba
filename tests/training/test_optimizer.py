"""Weight decay by what a parameter is: the matrices of linear maps decay, nothing else does."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from microrwkv_jax import build_model, model_config
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.training.optimizer import make_optimizer
from tests.helpers import tiny_config

CFG = ml_collections.ConfigDict(dict(learning_rate=0.1, min_learning_rate=0.1, warmup_steps=0, num_train_steps=10,
                                     weight_decay=0.5, beta1=0.9, beta2=0.99, grad_clip=0.0))


def decayed_after_one_step(config):
    """Names of the parameters that one AdamW step with zero gradients changes (only decay can)."""
    model = build_model(config, seed=0)
    codec = ParamCodec(model)
    params = codec.flat(model)
    optimizer = make_optimizer(CFG, codec.linear_maps)
    zeros = {k: jnp.zeros_like(v) for k, v in params.items()}
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    return codec, {k for k, u in updates.items() if np.any(np.asarray(u))}


def test_hybrid_decays_its_linear_maps_and_no_bias_norm_embedding_or_time_vector():
    codec, decayed = decayed_after_one_step(tiny_config("hybrid"))
    assert decayed == codec.linear_maps
    for name in codec.names:
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("kernel", "router", "w_in", "w_out"):
            assert name in decayed, name
        else:      # biases (the MoE's b_in / b_out too), norms, the embedding, time_* vectors
            assert name not in decayed, name
    assert "blocks/0/moe/b_in" in codec.names and "blocks/0/moe/w_in" in decayed


@pytest.mark.parametrize("preset", ["rwkv", "gpt", "published", "gpt2", "rwkv4"])
def test_every_family_decays_exactly_its_linear_maps(preset):
    small = dict(vocab_size=97, block_size=32, n_layer=2, n_embd=32, n_head=2)
    config = {"published": lambda: model_config("published", expert_dim=16, **small),
              "gpt2": lambda: model_config("gpt2", n_kv_head=2, **small),
              "rwkv4": lambda: model_config("rwkv4", **{**small, "n_head": 1})}.get(preset, lambda: tiny_config(preset))()
    codec, decayed = decayed_after_one_step(config)
    assert decayed == codec.linear_maps and decayed
    assert all(name.endswith("kernel") or name == "head" for name in decayed), sorted(decayed)
    if preset == "published":
        assert "blocks/0/moe/experts_kernel" in decayed and "blocks/0/moe/experts_bias" not in decayed


def test_the_learning_rate_follows_the_steps_or_the_time_budget_whichever_ends_first():
    import optax
    from microrwkv_jax.training.optimizer import learning_rate_at
    cfg = ml_collections.ConfigDict(dict(learning_rate=2e-3, min_learning_rate=1e-4, warmup_steps=10,
                                         num_train_steps=110, max_train_minutes=None))
    steps = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 10, 110, 1e-4)       # the optax schedule it replaced
    for step in (0, 1, 5, 10, 11, 60, 109, 110, 200):
        assert learning_rate_at(cfg, step) == pytest.approx(float(steps(step)), rel=1e-6, abs=1e-12)
    cfg.max_train_minutes = 2.0          # 120 s: the time decides long before step 110
    assert learning_rate_at(cfg, 5, elapsed_seconds=100.0) == pytest.approx(1e-3)            # still warming up
    assert learning_rate_at(cfg, 20, elapsed_seconds=60.0) == pytest.approx((2e-3 + 1e-4) / 2)   # half the budget
    assert learning_rate_at(cfg, 30, elapsed_seconds=120.0) == pytest.approx(1e-4)             # the budget's end
    assert learning_rate_at(cfg, 30, elapsed_seconds=500.0) == pytest.approx(1e-4)
    assert learning_rate_at(cfg, 110, elapsed_seconds=1.0) == pytest.approx(1e-4)              # steps end first
