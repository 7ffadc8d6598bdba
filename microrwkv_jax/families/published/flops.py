"""Model FLOPs per token of the published architecture (conventions in `microrwkv_jax.flops`).

Per block: TimeMix twice (it runs twice with the same weights), ChannelMix, the "SWA" (q/k/v
and output projections, attention over rows of at most SWA_WINDOW), the "GQA" (a 4C
projection, the output, attention over the H head slots of each position) and the MoE (gate,
the first A experts of width int(1.2 expert_dim), the output projection).
"""

from __future__ import annotations

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families.published.model import GQA_GROUPS, SWA_WINDOW, expert_width
from microrwkv_jax.flops import channel_mix_flops, head_flops, time_mix_flops


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    c, h, n = config.n_embd, config.n_head, config.head_size
    x = expert_width(config.expert_dim)
    per_layer = (2 * time_mix_flops(c, h, n, config.chunk_size) + channel_mix_flops(c)
                 + 2 * (3 * c * c + c * c) + 2 * 2 * min(seq_len, SWA_WINDOW) * c
                 + 2 * (GQA_GROUPS * c * c + c * c) + 2 * 2 * h * c
                 + 2 * (c * config.num_experts + config.num_active_experts * c * x + x * c))
    return config.n_layer * per_layer + head_flops(c, config.padded_vocab_size)
