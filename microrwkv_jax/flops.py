"""Model FLOPs per token, for MFU (model FLOPs utilisation), and known device peaks.

Counted per token of a training step (forward + backward = 3 x forward), the usual
"model FLOPs" convention (PaLM, nanoGPT): 2 FLOPs per multiply-add of every matrix product
the model needs, recomputation and padding not counted.

  linear layers   2 x (weights used by one token)                   incl. the tied output head
  attention       2 x 2 x H x N x context                          (QK^T and AV), context = the
                  average number of keys a query sees: (T+1)/2 causal, ~min(W, (T+1)/2) windowed
  WKV (chunked)   2 x 2 x H x N x (Q+1)/2  intra-chunk r.k and A.v (attention over a chunk of Q)
                + 3 x 2 x C x N           per token: state read r.S, its k^T v share of the
                                          state update, and the decayed state carry
  TinyMoE         only the top-k experts a token is routed to (the dense implementation runs all
                  E experts, which is counted as waste, not as model FLOPs)
"""

from __future__ import annotations

from microrwkv_jax.config import ModelConfig

# Dense bf16 tensor-core peaks (FLOP/s) without sparsity; CPU peaks are not known here.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12}


def _mean_context(t: int, window) -> float:
    causal = (t + 1) / 2
    if window is None or window >= t:
        return causal
    w = window
    return (w * (w + 1) / 2 + (t - w) * w) / t     # exact mean of min(i + 1, W) over positions


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    c, h, n, v = config.n_embd, config.n_head, config.head_size, config.padded_vocab_size
    per_layer = 0.0
    if config.arch == "published":
        x = int(config.expert_dim * 1.2)
        tm = 2 * 5 * c * c + 2 * 2 * h * n * (config.chunk_size + 1) / 2 + 2 * 3 * c * n
        per_layer = (2 * tm + 2 * (3 * c * c + c * 3 * c + c * c) + 2 * (3 * c * c + c * c)
                     + 2 * 2 * min(seq_len, 256) * c + 2 * (4 * c * c + c * c) + 2 * 2 * h * c
                     + 2 * (c * config.num_experts + config.num_active_experts * c * x + x * c))
        return config.n_layer * per_layer + 2 * c * v
    for name in config.layers:
        if name == "time_mix":
            q = min(config.chunk_size, seq_len)
            per_layer += 2 * 5 * c * c + 2 * 2 * h * n * (q + 1) / 2 + 2 * 3 * c * n
        elif name == "channel_mix":
            per_layer += 2 * (c * 3 * c + 3 * c * c + c * c)
        elif name in ("swa", "gqa"):
            kv_heads = h if name == "swa" else config.n_kv_head
            window = config.swa_window if name == "swa" else config.gqa_window
            per_layer += 2 * c * (h + 2 * kv_heads) * n + 2 * c * c
            per_layer += 2 * 2 * h * n * _mean_context(seq_len, window)
        elif name == "moe":
            per_layer += 2 * c * config.num_experts + config.num_active_experts * 2 * 2 * c * config.expert_dim
        elif name == "mlp":
            per_layer += 2 * 2 * c * config.mlp_ratio * c
    return config.n_layer * per_layer + 2 * c * v


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    return 3.0 * forward_flops_per_token(config, seq_len)


def device_peak_flops(device=None):
    """Peak bf16 FLOP/s of a known accelerator, else None (MFU is then not reported)."""
    import jax
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if name in kind:
            return peak
    return None
