"""Model FLOPs per token of RWKV-4 (conventions in `microrwkv_jax.flops`): its matrices, and the
WKV-4 recurrence's few element-wise operations per channel (not counted, as element-wise work)."""

from __future__ import annotations

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.flops import head_flops


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    c, hidden = config.n_embd, config.mlp_ratio * config.n_embd
    matrices = 4 * c * c + 2 * c * hidden + c * c          # key/value/receptance/output; ffn key, value, receptance
    return config.n_layer * 2 * matrices + head_flops(c, config.padded_vocab_size)
