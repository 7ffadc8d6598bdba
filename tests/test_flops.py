"""Model FLOPs against a count made from the built model's own weight matrices."""

import numpy as np
import pytest

from microrwkv_jax import build_model, model_config
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.families import train_flops_per_token


def linear_map_flops(config) -> float:
    """2 FLOPs per weight of every linear map one token goes through, the tied head included."""
    codec = ParamCodec(build_model(config))
    weights = sum(int(np.prod(codec.shapes[name])) for name in codec.linear_maps)
    return 2.0 * weights + 2.0 * config.n_embd * config.padded_vocab_size


@pytest.mark.parametrize("seq_len", [16, 64])
def test_rwkv_is_its_matrices_plus_the_chunked_wkv(seq_len):
    c = model_config("rwkv", vocab_size=97, n_layer=2, n_embd=32, n_head=4, chunk_size=16)
    q = min(16, seq_len)
    wkv = 2 * 2 * c.n_head * c.head_size * (q + 1) / 2 + 2 * 3 * c.n_embd * c.head_size
    assert train_flops_per_token(c, seq_len) == 3 * (linear_map_flops(c) + c.n_layer * wkv)


def test_gpt_is_its_matrices_plus_attention_over_the_mean_causal_context():
    c = model_config("gpt", vocab_size=97, n_layer=2, n_embd=32, n_head=4, n_kv_head=4)
    t = 40
    attention = 2 * 2 * c.n_head * c.head_size * np.mean(np.arange(1, t + 1))
    assert train_flops_per_token(c, t) == pytest.approx(3 * (linear_map_flops(c) + c.n_layer * attention), rel=1e-12)
