"""Small published models in PyTorch and JAX, for the published family's tests (needs torch)."""

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from torch_reference.published import PublishedTorchModel, perturb_to_trained_scale

ARGS = dict(block_size=320, vocab_size=128, n_layer=2, n_head=2, n_embd=32, num_experts=4,
            num_active_experts=3, expert_dim=20, dim=32, dropout=0.0, bias=True)


def torch_model(seed=0, **overrides):
    torch.manual_seed(seed)
    args = {**ARGS, **overrides}
    return perturb_to_trained_scale(PublishedTorchModel(args), seed), args


def torch_logits(model, idx):
    with torch.no_grad():
        return model(torch.tensor(np.array(idx), dtype=torch.long)).numpy()


@nnx.jit
def jax_logits(model, idx):
    return model(idx)


def random_tokens(seed, b, t):
    return jnp.asarray(np.random.default_rng(seed).integers(0, ARGS["vocab_size"], (b, t)), jnp.int32)
