"""`ModelConfig.remat` (gradient checkpointing of the blocks): the same loss and gradients. (What
it saves is measured where it matters, on a TPU program: BENCHMARKS.md; XLA's CPU programs of
these small models report the same temporaries either way.)"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from microrwkv_jax import build_model, model_config
from tests.helpers import randomize_params, rel_err

CONFIGS = {
    # (RWKV-7's value residual crosses the blocks' remat boundaries; the MoE's aux loss leaves them)
    "hybrid": dict(layers=("time_mix7", "gqa", "moe"), n_head=4, num_experts=4, expert_dim=16, chunk_size=8,
                   lora_dims=(8, 8, 4, 8)),
    "gpt2": dict(n_head=4, n_kv_head=4),
    "published": dict(n_head=4, num_experts=4, num_active_experts=2, expert_dim=16),
    "rwkv7": dict(n_head=2, lora_dims=(8, 8, 4, 8), chunk_size=8),       # (24 tokens: three whole chunks)
}


def loss_and_grads(preset, remat, batch):
    config = model_config(preset, vocab_size=97, block_size=32, n_layer=2, n_embd=32, remat=remat, **CONFIGS[preset])
    model = randomize_params(build_model(config, seed=0), seed=1)

    def loss_fn(model):
        logits, _, aux = model.forward(batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean() + 0.01 * aux["moe_aux_loss"]

    graphdef, params = nnx.split(model)
    grad_fn = lambda params: jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p)))(params)
    rematerialised = str(jax.make_jaxpr(grad_fn)(params)).count("remat")
    loss, grads = jax.jit(grad_fn)(params)
    return float(loss), [np.asarray(g) for g in jax.tree.leaves(grads)], rematerialised


@pytest.mark.parametrize("preset", sorted(CONFIGS))
def test_remat_gives_the_same_loss_and_gradients(preset):
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 25)), jnp.int32)
    loss, grads, plain = loss_and_grads(preset, False, batch)
    loss_r, grads_r, with_remat = loss_and_grads(preset, True, batch)
    # (the test would pass without remat doing anything: the program must hold it once more per
    # block; the chunked WKV forms rematerialise their chunks either way)
    assert with_remat >= plain + 2, (plain, with_remat)
    assert abs(loss_r - loss) <= 1e-6 * abs(loss)
    assert len(grads_r) == len(grads) > 10
    assert rel_err(np.concatenate([g.ravel() for g in grads_r]), np.concatenate([g.ravel() for g in grads])) <= 1e-5
