"""Model FLOPs per token of the causal family (conventions in `microrwkv_jax.flops`).

TinyMoE counts only the top-k experts a token is routed to (the dense implementation runs all
E experts; that is waste, not model FLOPs).
"""

from __future__ import annotations

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.flops import channel_mix_flops, head_flops, mean_context, time_mix_flops
from microrwkv_jax.layers.rwkv7 import default_lora_ranks, time_mix7_flops


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    c, h, n = config.n_embd, config.n_head, config.head_size
    per_layer = 0.0
    for name in config.layers:
        if name == "time_mix":
            per_layer += time_mix_flops(c, h, n, min(config.chunk_size, seq_len))
        elif name == "time_mix7":
            per_layer += time_mix7_flops(c, n, config.lora_dims or default_lora_ranks(c), config.n_layer)
        elif name == "channel_mix":
            per_layer += channel_mix_flops(c)
        elif name in ("swa", "gqa"):
            kv_heads = h if name == "swa" else config.n_kv_head
            window = config.swa_window if name == "swa" else config.gqa_window
            per_layer += 2 * c * (h + 2 * kv_heads) * n + 2 * c * c
            per_layer += 2 * 2 * h * n * mean_context(seq_len, window)
        elif name == "moe":
            per_layer += 2 * c * config.num_experts + config.num_active_experts * 2 * 2 * c * config.expert_dim
        elif name == "mlp":
            per_layer += 2 * 2 * c * config.mlp_ratio * c
    return config.n_layer * per_layer + head_flops(c, config.padded_vocab_size)
