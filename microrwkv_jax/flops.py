"""Model FLOPs: the count of each sub-layer's work per token, and known device peaks for MFU.

Counted per token of a forward pass, the usual "model FLOPs" convention (PaLM, nanoGPT): 2
FLOPs per multiply-add of every matrix product the model needs, recomputation and padding not
counted; a training step is 3 x forward. Each family adds up its own layers from the pieces
here (`Family.forward_flops_per_token`), and the registry's `train_flops_per_token` is 3 x that.

  linear layers   2 x (weights used by one token)                   incl. the tied output head
  attention       2 x 2 x H x N x context                          (QK^T and AV), context = the
                  average number of keys a query sees: (T+1)/2 causal, ~min(W, (T+1)/2) windowed
  WKV (chunked)   2 x 2 x H x N x (Q+1)/2  intra-chunk r.k and A.v (attention over a chunk of Q)
                + 3 x 2 x C x N           per token: state read r.S, its k^T v share of the
                                          state update, and the decayed state carry
"""

from __future__ import annotations

# Dense bf16 tensor-core peaks (FLOP/s) without sparsity; CPU peaks are not known here.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12}


def mean_context(t: int, window) -> float:
    """Mean number of keys a causal query sees over T positions, with an optional window."""
    causal = (t + 1) / 2
    if window is None or window >= t:
        return causal
    w = window
    return (w * (w + 1) / 2 + (t - w) * w) / t     # exact mean of min(i + 1, W) over positions


def time_mix_flops(c: int, h: int, n: int, chunk: int) -> float:
    """RWKV TimeMix: five C x C projections (r, k, v, g, output) and the chunked WKV of chunk Q."""
    return 2 * 5 * c * c + 2 * 2 * h * n * (chunk + 1) / 2 + 2 * 3 * c * n


def channel_mix_flops(c: int) -> float:
    """RWKV ChannelMix: key C -> 3C, value 3C -> C, receptance C -> C."""
    return 2 * (c * 3 * c + 3 * c * c + c * c)


def head_flops(c: int, padded_vocab: int) -> float:
    return 2 * c * padded_vocab


def device_peak_flops(device=None):
    """Peak bf16 FLOP/s of a known accelerator, else None (MFU is then not reported)."""
    import jax
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if name in kind:
            return peak
    return None
