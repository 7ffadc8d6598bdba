import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GPT2_BPE = SHARED / "tokenizers" / "gpt2.tiktoken"


def rel_err(a, b) -> float:
    """Relative L2 error of a against the reference b, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tiny_config(family="hybrid", **overrides):
    from microrwkv_jax import ModelConfig
    base = dict(vocab_size=97, block_size=32, n_layer=2, n_embd=32, n_head=4, swa_window=8,
                num_experts=4, num_active_experts=2, expert_dim=16, chunk_size=8)
    base.update(overrides)
    return ModelConfig.family(family, **base)


@pytest.fixture
def gpt2_bpe():
    if not GPT2_BPE.exists():
        pytest.skip(f"GPT-2 BPE file absent: {GPT2_BPE}")
    return GPT2_BPE
