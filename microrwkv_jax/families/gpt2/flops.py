"""Model FLOPs per token of GPT-2 (conventions in `microrwkv_jax.flops`)."""

from __future__ import annotations

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.flops import head_flops, mean_context


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    c = config.n_embd
    matrices = 3 * c * c + c * c + 2 * config.mlp_ratio * c * c          # c_attn, c_proj, c_fc, mlp.c_proj
    attention = 2 * 2 * c * mean_context(seq_len, None)                  # QK^T and AV over H heads of N = C / H
    return config.n_layer * (2 * matrices + attention) + head_flops(c, config.padded_vocab_size)
